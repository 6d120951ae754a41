"""`encode_dataset`: videos -> token shards, chaining read -> decode -> batch -> encode -> quantize -> pack -> write.

The options (`EncodeConfig`) are checked before any work; the inputs are listed and dealt into shard jobs, the
manifest is written first, and an engine (`engines.py`) runs the shard worker (`worker.ShardEncoder`) on the jobs
not finished yet.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..device import resolve_device
from ..io import storage
from .batch import check_buffers
from .engines import ENGINES, run_jobs
from ..errors import LfqtokError, UsageError
from .pool import validate_pool
from ..io.shards import LISTING_KEY, Listing, build_manifest, prepare_output
from .sources import ItemList, list_items, plan_segments, plan_shards, validate_split
from .tables import Table, TableJobs, TableOptions, table_format
from .shapes import MIN_MULTIPLE, PRESET, frame_dims, parse_buckets, parse_size, preset_buckets
from .scenes import scene_spec
from .video import ClipSpec, resolve_decoder, validate_spec
from .worker import ProgressFn, ShardEncoder, decode_workers

# config


@dataclass(frozen=True)
class EncodeConfig:
    """Everything `lfqtok encode` takes; saved into the manifest so a rerun can check it resumes the same run."""

    model: str = "default"  # "default" (embedded), a .safetensors path or an Open-MAGVIT2 .ckpt (lfqtok/tokenizers/convert.py), or a URL
    size: int | str | tuple[int, int] = 128  # S: short side S, centre crop S x S; "HxW" / (H, W): see resize
    clip_frames: int = 17  # frames per clip, 1 + 4k; a non-causal tokenizer's window length exactly
    clip_stride: int | None = None  # sampled frames between clip starts; None: clip_frames (no overlap)
    fps: float | None = None  # resample to this frame rate first; None keeps the source rate
    max_clips: int | None = None  # at most this many clips per video
    pad_short: bool = True  # a video shorter than one clip is padded with its last frame (else: a failure)
    scenes: str = "off"  # shot detection: off | on | content | transnetv2 (lfqtok/pipeline/scenes.py)
    scene_threshold: float | None = None  # the detector's cut threshold; None: its default
    min_scene_frames: int | None = None  # cuts closer than this many decoded frames are dropped; None: the default
    resize: str = "crop"  # crop | pad | fit onto the size (lfqtok/pipeline/shapes.py)
    buckets: str | Sequence[Sequence[int]] | None = None  # "HxW,HxW,..." or "auto": each video to the nearest aspect
    batch_size: int = 16  # clips per encoder batch
    workers: int | None = None  # decode processes; None: all cores but one (at most 16)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    samples_per_shard: int = 1000  # videos per output tar
    overwrite: bool = False  # replace an existing OUT made with other settings or inputs (only lfqtok's own files go)
    append: bool = False  # an OUT made from fewer inputs: encode only the new ones, into new shards after its last
    strict: bool = False  # any failed video makes the run fail (after everything else is written)
    num_shards: int = 1  # split the shard list into N parts (SLURM arrays, several machines) ...
    shard_index: int = 0  # ... and run part I of them
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # Ray cluster address for --engine ray (None: start or join a local one)
    video_timeout: float = 60.0  # seconds one video may be fetched or decode without progress before it fails
    decoder: str | None = None  # each video's first decoder: auto | pyav | decord; None: $LFQTOK_DECODER, else auto
    verbose: bool = False  # let Ray's own log lines through to the terminal (--engine ray)
    class_folders: bool = False  # ImageNet-style ROOT/CLASS/...: each sample json gets "class" and "label"
    hflip: bool = False  # images also get the tokens of their mirrored model input ({key}.tokens_flip.npy)
    table: TableOptions = field(default_factory=TableOptions)  # how a table input's rows become samples (tables.py)
    storage_options: dict | None = field(default=None, repr=False)  # fsspec options for URLs; never saved anywhere

    def clip_spec(self, multiple: int = MIN_MULTIPLE) -> ClipSpec:
        """The clip settings, shapes parsed; `multiple` is the tokenizer's spatial factor (`--buckets auto` uses it)."""
        size = parse_size(self.size)
        buckets = parse_buckets(self.buckets)
        if buckets == PRESET:
            h, w = frame_dims(size)
            buckets = preset_buckets(h * w, multiple)
        return ClipSpec(
            size=size,
            clip_frames=self.clip_frames,
            clip_stride=self.clip_stride,
            fps=self.fps,
            max_clips=self.max_clips,
            pad_short=self.pad_short,
            resize=self.resize,
            buckets=buckets,
            multiple=multiple,
            scenes=scene_spec(self.scenes, self.scene_threshold, self.min_scene_frames),
        )

    def num_workers(self) -> int:
        return decode_workers(self.workers)

    def validate(self) -> None:
        """Fail in the first second, not after an hour: every option is checked before any work, each by the
        module that takes it."""
        spec = self.clip_spec()
        validate_spec(spec)
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.append and self.overwrite:
            raise UsageError("--append keeps OUT's shards and --overwrite replaces them: give one of them")
        check_buffers(self.batch_size, (spec.clip_frames, *spec.shapes.largest, 3), str(self.size))
        validate_pool(self.num_workers(), self.video_timeout)
        validate_split(self.samples_per_shard, self.num_shards, self.shard_index)
        self.table.validate()
        resolve_decoder(self.decoder)
        if self.engine not in ENGINES:
            raise UsageError(f"--engine must be 'local' or 'ray', got {self.engine!r}")
        if self.engine == "ray":  # the cluster's devices are checked when its actors are planned
            from .ray_engine import import_ray

            import_ray()
        else:
            resolve_device(self.device)

    def shard_encoder(self, out: str | Path, spec: ClipSpec | None = None) -> ShardEncoder:
        """The shard worker these options make, writing into `out` (engines adapt its device and workers); `spec`:
        the clip settings for the run's tokenizer (`clip_spec(multiple)`), else those of the default factor."""
        return ShardEncoder(
            out=str(out),
            spec=spec or self.clip_spec(),
            model=self.model,
            device=self.device,
            batch_size=self.batch_size,
            workers=self.workers,
            video_timeout=self.video_timeout,
            decoder=resolve_decoder(self.decoder),  # here, once: every worker, local or remote, starts with the same
            hflip=self.hflip,
            storage_options=self.storage_options,
        )


# results


@dataclass
class EncodeSummary:
    """The closing numbers of a run: what the CLI prints as a table."""

    out: str
    shards_written: int
    shards_skipped: int
    videos_ok: int
    videos_failed: int
    clips: int
    frames: int
    tokens: int
    seconds: float
    failures: list[dict[str, Any]]
    left_out: int = 0  # images a folder or tar of videos left out (videos' posters and thumbnails)
    left_out_first: list[str] = field(default_factory=list)  # the first few of them, sorted
    skipped: list[dict[str, Any]] = field(default_factory=list)  # time ranges shorter than one clip: no sample, no failure

    @property
    def failures_by_reason(self) -> Counter[str]:
        return Counter(f["error"] for f in self.failures)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# the entry point


def shape_manifest(spec: ClipSpec, tok) -> dict[str, Any]:
    """The manifest keys of the shape options, only when used: `resize`, `buckets` and their `token_shapes`."""
    if spec.shapes.legacy:
        return {}
    keys: dict[str, Any] = {"resize": spec.resize}
    if spec.buckets:
        keys["buckets"] = [list(b) for b in spec.buckets]
        keys["token_shapes"] = [list(tok.token_shape(spec.clip_frames, *b)) for b in spec.buckets]
    return keys


def check_window(tok, config: EncodeConfig, images: bool = False) -> None:
    """A non-causal tokenizer encodes clips as independent windows of the length it was trained on: only that one,
    so no image (a 1-frame clip) either."""
    if not tok.causal and images:
        raise UsageError(
            f"{tok.name} is not causal: it encodes only {tok.window_frames}-frame windows, so it cannot tokenize images "
            "(1-frame clips): use a causal video tokenizer (the default) or an image tokenizer"
        )
    if not tok.causal and config.clip_frames != tok.window_frames:
        raise UsageError(
            f"{tok.name} is not causal: it encodes videos as independent windows of {tok.window_frames} frames "
            f"(its training length), so --clip-frames must be {tok.window_frames}, got {config.clip_frames}"
        )


def open_table(inputs: Sequence[str], config: EncodeConfig) -> Table | None:
    """The table among the inputs (opened: columns checked, classes read), or None when there is none; a table is
    encoded alone, and the table options need one."""
    tables = [spec for spec in inputs if table_format(spec, config.storage_options)]
    if not tables:
        if config.table.used:
            named = ", ".join(f"--{k.replace('_', '-')}" for k in config.table.settings())
            raise UsageError(f"{named} read a table: give a .csv, .tsv, .jsonl or .parquet file (or a folder or glob of parquet parts)")
        return None
    if len(inputs) > 1:
        raise UsageError(f"a table is encoded alone: {', '.join(map(storage.redact, tables))} with other inputs; "
                         "give one table (or a folder or glob of its parquet parts)")
    if config.class_folders:
        raise UsageError("--class-folders does not apply to a table: its classes come from --label-col")
    if config.append:
        raise UsageError("--append adds inputs to a run of files; a table is one input: encode a new table into a new OUT")
    return Table.open(inputs[0], config.table, config.storage_options)


LEFT_OUT_SHOWN = 5  # images left out that the summary and the manifest name


def left_out(items: ItemList) -> dict[str, Any]:
    """The manifest's `images_left_out`: how many images the videos-only rule left out, and the first few."""
    return {"count": len(items.left_out), "first": items.left_out[:LEFT_OUT_SHOWN]}


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_apart(out: storage.Location, roots: Sequence[str]) -> None:
    """UsageError when OUT is an input, holds one, or is inside an input directory: the run would write among (and
    --overwrite could delete) the user's own files, and a rerun would list its own output."""
    if storage.is_url(out):
        target = storage.normalize(str(out)).rstrip("/")  # URLs compared as written would miss S3:// vs s3://
        paths = [(r, storage.normalize(r).rstrip("/")) for r in roots if storage.is_url(r)]
    else:
        target = os.path.realpath(out)
        paths = [(r, os.path.realpath(r)) for r in roots if not storage.is_url(r)]
    for root, path in paths:
        if _inside(path, target):
            where = "is" if path == target else "holds"
            raise UsageError(f"the output {storage.redact(str(out))} {where} the input {storage.redact(root)}: write the tokens "
                             "to a directory (or prefix) outside the inputs")
        if _inside(target, path):
            raise UsageError(f"the output {storage.redact(str(out))} is inside the input {storage.redact(root)}: write the "
                             "tokens to a directory (or prefix) outside the inputs")


def _model_name(model: str) -> str:
    """The manifest's `tokenizer.name`: 'default', a resolved path, or the URL as users may see it."""
    if model == "default":
        return model
    return storage.redact(model) if storage.is_url(model) else str(Path(model).resolve())


def encode_dataset(
    inputs: Sequence[str | Path],
    out: str | Path,
    config: EncodeConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    **options: Any,
) -> EncodeSummary:
    """Encode videos and images (dirs, files, @lists, tar shards, or one table of rows; paths or URLs) into token
    shards under `out` (docs/format.md), a directory or a URL prefix.

    `options` override fields of `config` (e.g. `size=256`). Resumes: shards whose `_stats.json` exists are
    skipped and left untouched. Raises `LfqtokError` subclasses for anything a user can fix; failed videos
    are recorded in the shard stats and the summary, not raised (unless `strict`, after the run).
    """
    config = replace(config or EncodeConfig(), **options)
    config.validate()
    out = storage.location(out)
    for url in (str(out), config.model):  # a missing protocol package or a read-only OUT: now, not after listing
        if storage.is_url(url):
            storage.filesystem(url, config.storage_options)
    storage.check_writable(out, config.storage_options, config.video_timeout)
    table = open_table([str(i) for i in inputs], config)
    if table is None:
        items = list_items([str(i) for i in inputs], config.storage_options, class_folders=config.class_folders,
                           timeout=config.video_timeout)
        if not items:
            raise UsageError(f"no videos or images found in {', '.join(storage.redact(str(i)) for i in inputs)}")
        check_apart(out, items.roots)
        listing = Listing([[item.key, item.source] for item in items])
        images, classes = sum(item.is_image for item in items), items.classes
    else:  # a table's rows are streamed, never listed (rows are videos); its listing is its files' identity
        check_apart(out, table.files)
        items, images, classes = ItemList(), 0, table.classes
        listing = Listing(table.identity())
    from ..tokenizers.model import load_tokenizer

    started = time.perf_counter()
    tok = load_tokenizer(config.model, device="cpu", storage_options=config.storage_options)
    check_window(tok, config, images=images > 0)
    spec = config.clip_spec(tok.config.spatial_compression)
    validate_spec(spec)  # the sizes again, against this tokenizer's spatial factor
    frames = 1 if items and images == len(items) else config.clip_frames  # an image-only run's clips have 1 frame
    manifest = build_manifest(
        codebook_size=tok.codebook_size,
        num_codebooks=tok.num_codebooks,
        tokenizer_name=_model_name(config.model),
        tokenizer_sha256=tok.sha256,
        tokenizer_config=tok.config.to_dict(),
        clip_frames=config.clip_frames,
        size=spec.size if isinstance(spec.size, int) else list(spec.size),
        token_shape=list(tok.token_shape(frames, *uniform)) if (uniform := spec.shapes.uniform) and images in (0, len(items)) else None,
        bit_order=tok.bit_order,
        window_frames=None if tok.causal else tok.window_frames,
        extra={
            **shape_manifest(spec, tok),
            "lfqtok_version": __version__,
            "clip": spec.settings(),
            "samples_per_shard": config.samples_per_shard,
            "inputs": [storage.redact(str(i)) for i in inputs],
            "cwd": os.getcwd(),  # sources are stored as given: decode resolves relative ones against this
            **({"classes": classes} if config.class_folders or config.table.label_col else {}),  # sample json "label" indexes this
            **({"hflip": True} if config.hflip else {}),
            **({"images_left_out": left_out(items)} if items.left_out else {}),
            **({"table": table.settings()} if table is not None else {}),  # its format and row options
            LISTING_KEY: listing.identity,  # its lines, built once: the sidecar stores the same
        },
    )
    del tok  # the encode processes load their own copy: a large model is not held twice while they run
    prepared = prepare_output(out, manifest, config.overwrite, config.storage_options, listing=listing, append=config.append)
    del listing  # its entries and lines (about 150 bytes an input) are not held through the run
    if table is not None:
        todo = TableJobs(table, config.samples_per_shard, config.num_shards, config.shard_index, frozenset(prepared.finished))
        skipped = sum(1 for i in prepared.finished if i % config.num_shards == config.shard_index)
    else:
        if prepared.segments is not None:  # grown by --append: the recorded order, keys and shard numbers
            jobs = plan_segments(items, prepared.entries, prepared.segments, config.samples_per_shard, config.num_shards, config.shard_index)
        else:
            jobs = plan_shards(items, config.samples_per_shard, config.num_shards, config.shard_index)
        todo = [job for job in jobs if job.index not in prepared.finished]
        skipped = len(jobs) - len(todo)
    encoder = config.shard_encoder(out, spec)
    results = run_jobs(encoder, todo, config.engine, ray_address=config.ray_address, verbose=config.verbose, on_progress=on_progress)
    failures = [f for r in results for f in r.failures]
    summary = EncodeSummary(
        out=storage.redact(str(out)),
        shards_written=len(results),
        shards_skipped=skipped,
        videos_ok=sum(r.samples for r in results),
        videos_failed=len(failures),
        clips=sum(r.clips for r in results),
        frames=sum(r.frames for r in results),
        tokens=sum(r.tokens for r in results),
        seconds=time.perf_counter() - started,
        failures=failures,
        left_out=len(items.left_out),
        left_out_first=items.left_out[:LEFT_OUT_SHOWN],
        skipped=[s for r in results for s in r.skipped],
    )
    if config.strict and failures:
        raise LfqtokError(f"{len(failures)} video(s) failed (--strict); first: {failures[0]['source']}: {failures[0]['error']}")
    return summary
