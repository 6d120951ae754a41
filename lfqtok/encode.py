"""`encode_dataset`: videos -> token shards, chaining read -> decode -> batch -> encode -> quantize -> pack -> write.

Three stages overlap so the encoder never waits: decode worker processes (`pool.py`), the encoder in its own
thread (GPU work releases the GIL), and a writer thread that assembles each video's clips into one sample and
writes the shards in input order (so reruns and resumes give the same bytes).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .batch import Batch, BatcherAborted, ClipBatcher
from .codec import token_dtype
from .errors import LfqtokError, UsageError
from .pool import ClipEvent, DecodePool, DoneEvent, FailEvent
from .shards import ShardWriter, build_manifest, prepare_output
from .sources import ShardJob, VideoItem, list_items, plan_shards
from .video import ClipSpec, validate_spec

ProgressFn = Callable[["Counters"], None]
PoolFactory = Callable[..., Any]  # (spec, workers, timeout=) -> context manager with .run(items) -> events

# config


@dataclass(frozen=True)
class EncodeConfig:
    """Everything `lfqtok encode` takes; saved into the manifest so a rerun can check it resumes the same run."""

    model: str = "default"  # "default" (embedded), a .safetensors path or an Open-MAGVIT2 .ckpt (lfqtok/convert.py)
    size: int = 128  # short side scaled to this, then center crop size x size
    clip_frames: int = 17  # frames per clip, 1 + 4k; a non-causal tokenizer's window length exactly
    clip_stride: int | None = None  # sampled frames between clip starts; None: clip_frames (no overlap)
    fps: float | None = None  # resample to this frame rate first; None keeps the source rate
    max_clips: int | None = None  # at most this many clips per video
    pad_short: bool = True  # a video shorter than one clip is padded with its last frame (else: a failure)
    batch_size: int = 16  # clips per encoder batch
    workers: int | None = None  # decode processes; None: all cores but one (at most 16)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    samples_per_shard: int = 1000  # videos per output tar
    overwrite: bool = False  # replace an existing OUT made with other settings
    strict: bool = False  # any failed video makes the run fail (after everything else is written)
    num_shards: int = 1  # split the shard list into N parts (SLURM arrays, several machines) ...
    shard_index: int = 0  # ... and run part I of them
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # Ray cluster address for --engine ray (None: start or join a local one)
    video_timeout: float = 60.0  # seconds one video may decode without progress before its worker is killed

    def clip_spec(self) -> ClipSpec:
        return ClipSpec(
            size=self.size,
            clip_frames=self.clip_frames,
            clip_stride=self.clip_stride,
            fps=self.fps,
            max_clips=self.max_clips,
            pad_short=self.pad_short,
        )

    def num_workers(self) -> int:
        return self.workers if self.workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))

    def validate(self) -> None:
        """Fail in the first second, not after an hour: every option is checked before any work."""
        validate_spec(self.clip_spec())
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.workers is None or self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.samples_per_shard >= 1, f"--samples-per-shard must be >= 1, got {self.samples_per_shard}"),
            (self.num_shards >= 1, f"--num-shards must be >= 1, got {self.num_shards}"),
            (0 <= self.shard_index < self.num_shards, f"--shard-index must be in [0, {self.num_shards}), got {self.shard_index}"),
            (self.engine in ("local", "ray"), f"--engine must be 'local' or 'ray', got {self.engine!r}"),
            (self.video_timeout > 0, f"--video-timeout must be > 0, got {self.video_timeout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.engine == "ray":  # the cluster's devices are checked when its actors are planned
            from .ray_engine import import_ray

            import_ray()
        else:
            resolve_device(self.device)


def resolve_device(device: str) -> torch.device:
    """'auto' -> the first GPU when there is one, else the CPU; a GPU that is not there is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


# results


@dataclass
class Counters:
    """Live progress of a run; the encoder and writer threads update it, the progress display reads it."""

    videos_total: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    clips: int = 0
    frames: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, other: "Counters") -> None:
        for name in ("videos_done", "videos_failed", "clips", "frames", "tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ShardResult:
    """What one finished shard holds; the same numbers are in its `_stats.json`."""

    shard: int
    samples: int
    clips: int
    tokens: int
    frames: int
    seconds: float
    failures: list[dict[str, str]]


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
    failures: list[dict[str, str]]

    @property
    def failures_by_reason(self) -> Counter[str]:
        return Counter(f["error"] for f in self.failures)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# the shard job function


class ShardEncoder:
    """Encodes the videos of shard jobs and writes their shards.

    A picklable callable holding only the config: the model is loaded on first use, so the local engine's
    per-GPU processes and Ray actors run this same code.
    """

    def __init__(self, config: EncodeConfig, out: str | Path, device: str | None = None, pool_factory: PoolFactory | None = None):
        self.config = config
        self.out = Path(out)
        self.device = device or config.device
        self.pool_factory = pool_factory or DecodePool  # the Ray engine passes one that runs Ray decode tasks
        self._tokenizer = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .model import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.model, device=str(resolve_device(self.device)))
        return self._tokenizer

    def __call__(self, jobs: Sequence[ShardJob], on_progress: ProgressFn | None = None) -> list[ShardResult]:
        """Encode every video of `jobs` with one decode pool, so the encoder does not drain between shards."""
        counters = Counters(videos_total=sum(len(j.items) for j in jobs))
        if not jobs:
            return []
        tok = self.tokenizer
        spec = self.config.clip_spec()
        storage = token_dtype(tok.codebook_size)
        assembler = _ShardAssembler(self.out, jobs, storage, counters)
        items = [item for job in jobs for item in job.items]
        abort = threading.Event()
        on_cuda = next(tok.parameters()).device.type == "cuda"
        batcher = ClipBatcher(
            self.config.batch_size, (spec.clip_frames, spec.size, spec.size, 3), pin_memory=on_cuda, abort=abort
        )
        gpu_q: queue.Queue[Batch | None] = queue.Queue()
        write_q: queue.Queue[Any] = queue.Queue()
        errors: list[BaseException] = []
        stages = [
            _Stage("encoder", _encoder_loop, gpu_q, write_q, tok, storage, batcher, counters, abort, errors),
            _Stage("writer", _writer_loop, write_q, assembler, abort, errors),
        ]
        try:
            with self.pool_factory(spec, self.config.num_workers(), timeout=self.config.video_timeout) as pool:
                for event in pool.run(items):
                    if abort.is_set():
                        break
                    if isinstance(event, ClipEvent):
                        clip = event.clip  # the frames go into the batch; only where they came from travels on
                        ref = (event.item, event.clip_index, _ClipOrigin(clip.frame_indices, clip.padded))
                        batch = batcher.add(clip.frames, ref)
                        if batch is not None:
                            gpu_q.put(batch)
                    else:
                        write_q.put(event)
                    if on_progress is not None:
                        on_progress(counters)
                if not abort.is_set():
                    last = batcher.flush()
                    if last is not None:
                        gpu_q.put(last)
        except BatcherAborted:
            pass
        except BaseException:
            abort.set()
            raise
        finally:
            gpu_q.put(None)
            stages[0].join()
            write_q.put(None)
            stages[1].join()
            if errors or abort.is_set():
                assembler.abandon()
        if errors:
            raise errors[0]
        if on_progress is not None:
            on_progress(counters)
        return assembler.results


class _Stage(threading.Thread):
    """A daemon thread running `fn(*args)`; an exception is kept for the main thread and aborts the run."""

    def __init__(self, name: str, fn: Callable[..., None], *args: Any):
        super().__init__(name=f"lfqtok-{name}", daemon=True)
        self.fn, self.args = fn, args
        self.start()

    def run(self) -> None:
        abort, errors = self.args[-2], self.args[-1]
        try:
            self.fn(*self.args[:-2])
        except BaseException as exc:  # handed to the main thread, which re-raises it
            errors.append(exc)
            abort.set()


CPU_CHUNK = 4  # clips per encoder call on the CPU: ~3x the speed of one clip at a time, and a fixed shape


def encode_batch(tok, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (n, T, H, W, 3) -> int64 ids on the model's device, as the encode pipeline computes them.

    On the CPU, in zero-padded chunks of CPU_CHUNK clips: its kernels pick algorithms by batch shape, so a
    fixed shape keeps tokens independent of --batch-size (and of which clips share a chunk)."""
    device = next(tok.parameters()).device
    video = frames.to(device, non_blocking=True)
    if device.type != "cpu":
        return tok.encode_to_device(video)
    chunks = []
    for chunk in video.split(CPU_CHUNK):
        padded = torch.cat([chunk, chunk.new_zeros((CPU_CHUNK - len(chunk), *chunk.shape[1:]))])
        chunks.append(tok.encode_to_device(padded)[: len(chunk)])
    return torch.cat(chunks)


def _encoder_loop(gpu_q: queue.Queue, write_q: queue.Queue, tok, storage: np.dtype, batcher: ClipBatcher, counters: Counters) -> None:
    """Encoder stage: uint8 batches -> token arrays in the storage dtype, computed and narrowed on the device."""
    narrow = torch.int16 if storage == np.uint16 else torch.int32  # same bits as uint16/uint32 after .view
    while (batch := gpu_q.get()) is not None:
        try:
            ids = encode_batch(tok, batch.frames).to(narrow)  # (n, t, h, w) [+ (c)]
            tokens = ids.cpu().numpy().view(storage)
        except torch.cuda.OutOfMemoryError:
            raise LfqtokError(
                f"CUDA out of memory encoding a batch of {len(batch.refs)} clips of {tuple(batch.frames.shape[1:4])}: "
                "lower --batch-size (shards already finished are kept; rerun to resume)"
            ) from None
        finally:
            batcher.release(batch)
        counters.clips += len(batch.refs)
        counters.frames += len(batch.refs) * batch.frames.shape[1]
        counters.tokens += tokens.size
        write_q.put((batch.refs, tokens))


def _writer_loop(write_q: queue.Queue, assembler: "_ShardAssembler") -> None:
    """Writer stage: token arrays and per-video verdicts -> samples, written in input order."""
    while (msg := write_q.get()) is not None:
        if isinstance(msg, DoneEvent):
            assembler.done(msg)
        elif isinstance(msg, FailEvent):
            assembler.fail(msg.item, msg.error)
        else:
            refs, tokens = msg
            for (item, clip_index, clip), clip_tokens in zip(refs, tokens):
                assembler.clip(item, clip_index, clip, clip_tokens)


# assembling samples and shards


@dataclass
class _ClipOrigin:
    """Where a clip's frames came from: all the writer keeps of a clip besides its tokens."""

    frame_indices: list[int]
    padded: int


@dataclass
class _Pending:
    """One video between its first clip and its write."""

    clips: dict[int, tuple[Any, np.ndarray]] = field(default_factory=dict)
    done: DoneEvent | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is not None or (self.done is not None and len(self.clips) >= self.done.num_clips)


class _ShardAssembler:
    """Collects each video's clip tokens and writes samples shard by shard, in the jobs' item order."""

    def __init__(self, out: Path, jobs: Sequence[ShardJob], storage: np.dtype, counters: Counters):
        self.out, self.jobs, self.storage, self.counters = out, list(jobs), storage, counters
        self.owner: list[tuple[int, int]] = [(j, i) for j, job in enumerate(self.jobs) for i in range(len(job.items))]
        self.pending: dict[int, _Pending] = {}
        self.next_item = [0] * len(self.jobs)  # per job: local index of the next sample to write
        self.first_item = np.cumsum([0] + [len(job.items) for job in self.jobs]).tolist()
        self.writers: dict[int, ShardWriter] = {}
        self.stats: dict[int, dict[str, Any]] = {}
        self.results: list[ShardResult] = []
        self.finished: set[int] = set()

    def clip(self, item: int, clip_index: int, clip: Any, tokens: np.ndarray) -> None:
        j, local = self.owner[item]
        if local < self.next_item[j]:
            return  # a late clip of a video that already failed and was recorded
        self._get(item).clips[clip_index] = (clip, tokens)
        self._advance(item)

    def done(self, event: DoneEvent) -> None:
        pending = self._get(event.item)
        pending.done = event
        if event.num_clips == 0:
            pending.error = "no clips could be cut from the video"
        self._advance(event.item)

    def fail(self, item: int, error: str) -> None:
        self._get(item).error = error
        self._advance(item)

    def abandon(self) -> None:
        """On an aborted run: drop every unfinished shard's temp file; finished shards stay as they are."""
        for writer in self.writers.values():
            writer.__exit__(RuntimeError, RuntimeError("aborted"), None)
        self.writers.clear()

    # helpers

    def _get(self, item: int) -> _Pending:
        return self.pending.setdefault(item, _Pending())

    def _advance(self, item: int) -> None:
        j = self.owner[item][0]
        job = self.jobs[j]
        while self.next_item[j] < len(job.items):
            position = self.first_item[j] + self.next_item[j]
            pending = self.pending.get(position)
            if pending is None or not pending.complete:
                return
            self._emit(j, job.items[self.next_item[j]], pending)
            del self.pending[position]
            self.next_item[j] += 1
        self._finish(j)

    def _emit(self, j: int, item: VideoItem, pending: _Pending) -> None:
        stats = self._stats(j)
        if pending.error is not None:
            stats["failures"].append({"source": item.source, "error": pending.error})
            self.counters.videos_failed += 1
            return
        done = pending.done
        clips = [pending.clips[i] for i in range(done.num_clips)]
        tokens = np.stack([t for _, t in clips]).astype(self.storage, copy=False)  # (clips, t, h, w) [+ (c)]
        indices = [list(map(int, c.frame_indices)) for c, _ in clips]
        meta = {
            "source": item.source,
            "frame_indices": indices,
            "clips": [[ix[0], ix[-1] + 1] for ix in indices],
            "padded_frames": int(sum(c.padded for c, _ in clips)),
            "fps": done.meta.fps,
            "num_frames": done.meta.num_frames,
            "orig_size": list(done.meta.orig_size),
            "decoder": done.meta.decoder,
            "tokens_shape": list(tokens.shape),
        }
        self._writer(j).write(item.key, tokens, meta, done.extras)
        stats["samples"] += 1
        stats["clips"] += tokens.shape[0]
        stats["tokens"] += int(tokens.size)
        stats["frames"] += sum(len(ix) for ix in indices)
        self.counters.videos_done += 1

    def _stats(self, j: int) -> dict[str, Any]:
        if j not in self.stats:
            self.stats[j] = {"shard": self.jobs[j].index, "samples": 0, "clips": 0, "tokens": 0, "frames": 0,
                             "started": time.perf_counter(), "failures": []}
        return self.stats[j]

    def _writer(self, j: int) -> ShardWriter:
        if j not in self.writers:
            writer = ShardWriter(self.out, self.jobs[j].index, self.storage)
            writer.__enter__()
            self.writers[j] = writer
        return self.writers[j]

    def _finish(self, j: int) -> None:
        if j in self.finished:
            return
        self.finished.add(j)
        stats = self._stats(j)
        started = stats.pop("started")
        stats["seconds"] = round(time.perf_counter() - started, 3)
        writer = self._writer(j)  # an all-failed shard still gets its (empty) tar and stats
        writer.finish(stats)
        writer.__exit__(None, None, None)
        del self.writers[j]
        self.results.append(ShardResult(**stats))


# the entry point


def check_window(tok, config: EncodeConfig) -> None:
    """A non-causal tokenizer encodes clips as independent windows of the length it was trained on: only that one."""
    if not tok.causal and config.clip_frames != tok.window_frames:
        raise UsageError(
            f"{tok.name} is not causal: it encodes videos as independent windows of {tok.window_frames} frames "
            f"(its training length), so --clip-frames must be {tok.window_frames}, got {config.clip_frames}"
        )


def encode_dataset(
    inputs: Sequence[str | Path],
    out: str | Path,
    config: EncodeConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    **options: Any,
) -> EncodeSummary:
    """Encode videos (dirs, files, @lists, tar shards) into token shards under `out` (DESIGN.md §4).

    `options` override fields of `config` (e.g. `size=256`). Resumes: shards whose `_stats.json` exists are
    skipped and left untouched. Raises `LfqtokError` subclasses for anything a user can fix; failed videos
    are recorded in the shard stats and the summary, not raised (unless `strict`, after the run).
    """
    config = replace(config or EncodeConfig(), **options)
    config.validate()
    out = Path(out)
    items = list_items([str(i) for i in inputs])
    if not items:
        raise UsageError(f"no videos found in {', '.join(map(str, inputs))}")
    from .model import load_tokenizer

    started = time.perf_counter()
    tok = load_tokenizer(config.model, device="cpu")
    check_window(tok, config)
    manifest = build_manifest(
        codebook_size=tok.codebook_size,
        num_codebooks=tok.num_codebooks,
        tokenizer_name=config.model if config.model == "default" else str(Path(config.model).resolve()),
        tokenizer_sha256=tok.sha256,
        tokenizer_config=tok.config.to_dict(),
        clip_frames=config.clip_frames,
        size=config.size,
        token_shape=list(tok.token_shape(config.clip_frames, config.size, config.size)),
        bit_order=tok.bit_order,
        window_frames=None if tok.causal else tok.window_frames,
        extra={
            "lfqtok_version": __version__,
            "clip": {k: v for k, v in asdict(config.clip_spec()).items()},
            "samples_per_shard": config.samples_per_shard,
            "inputs": [str(i) for i in inputs],
            "cwd": os.getcwd(),  # sources are stored as given: decode resolves relative ones against this
        },
    )
    del tok  # the encode processes load their own copy: a large model is not held twice while they run
    finished = prepare_output(out, manifest, config.overwrite)
    jobs = plan_shards(items, config.samples_per_shard, config.num_shards, config.shard_index)
    todo = [job for job in jobs if job.index not in finished]
    from .engines import run_jobs

    results = run_jobs(config, out, todo, on_progress=on_progress)
    failures = [f for r in results for f in r.failures]
    summary = EncodeSummary(
        out=str(out),
        shards_written=len(results),
        shards_skipped=len(jobs) - len(todo),
        videos_ok=sum(r.samples for r in results),
        videos_failed=len(failures),
        clips=sum(r.clips for r in results),
        frames=sum(r.frames for r in results),
        tokens=sum(r.tokens for r in results),
        seconds=time.perf_counter() - started,
        failures=failures,
    )
    if config.strict and failures:
        raise LfqtokError(f"{len(failures)} video(s) failed (--strict); first: {failures[0]['source']}: {failures[0]['error']}")
    return summary
