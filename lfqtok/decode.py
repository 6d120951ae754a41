"""`decode_samples`: token samples back to previews (mp4 / gif / png contact sheet) with PSNR and SSIM (DESIGN §6).

Clips of all picked samples are decoded in batches (on the GPU when there is one) and each clip's frames are
written to its sample's file as they come, so memory does not grow with the video's length. The source frames,
re-read with the encode settings from the manifest, give PSNR/SSIM and (`compare`) a side-by-side preview.
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .codec import from_storage, reverse_bits
from .errors import InputError, ModelError, OutputError, UsageError, VideoError
from .metrics import QualityMeter
from .shards import BIT_ORDERS, expand_paths, read_manifest, read_tokens

# constants

FORMATS = ("mp4", "gif", "png")
DEFAULT_FPS = 8.0  # playback rate when neither the manifest nor the sample knows the source rate

# helpers


def exists(v: Any) -> bool:
    return v is not None


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'; anything else is checked by `load_tokenizer`."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# writers: one file per sample, frames appended clip by clip


class VideoWriter:
    """mp4 (libx264, yuv420p) or gif (PyAV's gif encoder) of uint8 RGB frames (T, H, W, 3) appended as they come."""

    def __init__(self, path: Path, fmt: str, fps: float, width: int, height: int):
        import av

        self.av = av
        self.container = av.open(str(path), "w")
        rate = Fraction(fps).limit_denominator(1001)
        if fmt == "mp4":
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.pix_fmt = "yuv420p"
        else:
            self.stream = self.container.add_stream("gif", rate=rate)
            self.stream.pix_fmt = "rgb8"
        self.stream.width, self.stream.height = width, height
        self.pts = 0

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            video_frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self.pts
            self.container.mux(self.stream.encode(video_frame))
            self.pts += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


class ContactSheetWriter:
    """PNG contact sheet, one row of frames per clip, streamed: each clip's band is compressed into IDAT at once."""

    def __init__(self, path: Path, width: int, height: int, rows: int):
        self.file = open(path, "wb")
        self.zip = zlib.compressobj(6)
        self.file.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height * rows, 8, 2, 0, 0, 0))  # 8-bit RGB

    def write(self, frames: np.ndarray) -> None:
        """One clip (T, H, W, 3) -> one band of H scanlines, T frames wide."""
        t, h, w, _ = frames.shape
        band = frames.transpose(1, 0, 2, 3).reshape(h, t * w * 3)  # (H, T*W*3)
        rows = np.concatenate([np.zeros((h, 1), np.uint8), band], axis=1)  # filter byte 0 per scanline
        self._chunk(b"IDAT", self.zip.compress(rows.tobytes()))

    def close(self) -> None:
        self._chunk(b"IDAT", self.zip.flush())
        self._chunk(b"IEND", b"")
        self.file.close()

    def _chunk(self, kind: bytes, data: bytes) -> None:
        if kind == b"IDAT" and not data:
            return
        self.file.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))


# one sample's preview


@dataclass
class Sample:
    key: str
    tokens: np.ndarray  # (clips, t, h, w) [+ (c)] storage dtype
    meta: dict[str, Any]
    manifest: dict[str, Any] | None


@dataclass
class Preview:
    """Receives a sample's decoded clips in order: scores them against the source and appends them to its file."""

    sample: Sample
    path: Path
    fmt: str
    compare: bool
    source: Iterator[Any] | None  # the source's clips, re-cut with the encode settings, or None
    notes: list[str] = field(default_factory=list)
    quality: QualityMeter = field(default_factory=QualityMeter)
    frames: int = 0
    clips: int = 0
    writer: Any = None

    def add(self, rec: np.ndarray) -> None:
        """One decoded clip (T, H, W, 3) uint8."""
        src = self._source_clip(rec)
        if exists(src):
            self.quality.add(rec, src)
        shown = np.concatenate([src, rec], axis=2) if self.compare and exists(src) else rec
        if not exists(self.writer):
            self.writer = self._open(shown.shape)
        try:
            self.writer.write(shown)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.frames += rec.shape[0]
        self.clips += 1

    def close(self) -> dict[str, Any]:
        if exists(self.writer):
            self.writer.close()
        else:
            self.notes.append("the sample has no clips: nothing written")
        scored = exists(self.source) and self.quality.frames > 0
        quality = self.quality.result() if scored else {}
        return {
            "key": self.sample.key,
            "source": self.sample.meta.get("source"),
            "output": str(self.path),
            "psnr": quality.get("psnr"),
            "ssim": quality.get("ssim"),
            "psnr_luma": quality.get("psnr_luma"),
            "psnr_chroma": quality.get("psnr_chroma"),
            "colour_shift": quality.get("colour_shift"),
            "clips": self.clips,
            "frames": self.frames,
            "note": "; ".join(self.notes) or None,
        }

    # helpers

    def _source_clip(self, rec: np.ndarray) -> np.ndarray | None:
        if not exists(self.source):
            return None
        try:
            clip = next(self.source)
        except (StopIteration, VideoError) as exc:
            return self._drop_source(f"source stopped before clip {self.clips} ({exc or 'fewer clips'})")
        want = self.sample.meta.get("frame_indices")
        if want is not None and self.clips < len(want) and list(clip.frame_indices) != list(want[self.clips]):
            return self._drop_source(f"source clip {self.clips} has other frames than the encoded one (settings changed?)")
        if clip.frames.shape != rec.shape:
            return self._drop_source(f"source clip shape {clip.frames.shape} != decoded {rec.shape}")
        return clip.frames

    def _drop_source(self, note: str) -> None:
        self.notes.append(note + ": no psnr")
        self.source = None

    def _open(self, shape: tuple[int, ...]):
        t, h, w, _ = shape
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.fmt == "png":
                return ContactSheetWriter(self.path, t * w, h, rows=len(self.sample.tokens))
            return VideoWriter(self.path, self.fmt, playback_fps(self.sample), w, h)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def playback_fps(sample: Sample) -> float:
    clip = (sample.manifest or {}).get("clip") or {}
    return float(clip.get("fps") or sample.meta.get("fps") or DEFAULT_FPS)


# picking samples, loading the tokenizer, re-reading sources


def pick_samples(paths: Sequence[str | Path] | str | Path, keys: Sequence[str] | None, limit: int | None) -> list[Sample]:
    """The samples named by `keys` (all must exist), else the first `limit` (None: all), in shard order."""
    wanted = set(keys) if keys else None
    picked: list[Sample] = []
    manifests: dict[Path, dict | None] = {}
    for tar in expand_paths(paths):
        if tar.parent not in manifests:
            manifests[tar.parent] = read_manifest(tar)
        for key, tokens, meta in read_tokens(tar):
            if wanted is None or key in wanted:
                picked.append(Sample(key, tokens, meta, manifests[tar.parent]))
            if (wanted is None and exists(limit) and len(picked) >= limit) or (wanted and wanted <= {s.key for s in picked}):
                return picked
    missing = sorted(wanted - {s.key for s in picked}) if wanted else []
    if missing:
        raise InputError(f"sample keys not found in the token shards: {', '.join(missing[:10])}")
    return picked


def load_for(samples: Sequence[Sample], model: str | None, device: str) -> tuple[Any, str | None]:
    """The tokenizer the manifest names, checked by sha256; an explicit `model` may differ (noted)."""
    from .model import load_tokenizer

    manifest = next((s.manifest for s in samples if s.manifest), None)
    recorded = (manifest or {}).get("tokenizer") or {}
    if exists(model):
        tok = load_tokenizer(model, device=resolve_device(device))
        if not manifest:
            return tok, "no lfqtok.json next to the shards: tokenizer not checked"
        if tok.sha256 != recorded.get("sha256"):
            return tok, f"--model {model} differs from the tokenizer the tokens were made with (sha256 {str(recorded.get('sha256'))[:12]})"
        return tok, None
    if not manifest:
        raise ModelError("no lfqtok.json next to the token shards, so the tokenizer is unknown: pass --model")
    name = recorded.get("name")
    if name != "default" and not (isinstance(name, str) and Path(name).is_file()):
        raise ModelError(f"the tokens were made with tokenizer {name!r}, which is not 'default' nor a checkpoint file here: pass --model")
    tok = load_tokenizer(name, device=resolve_device(device))
    if not recorded.get("sha256"):
        raise ModelError(f"the manifest records no tokenizer sha256 to check {name!r} against: pass --model to decode anyway")
    if tok.sha256 != recorded["sha256"]:
        raise ModelError(
            f"tokenizer {name!r} has sha256 {tok.sha256[:12]}..., the tokens were made with {recorded['sha256'][:12]}...: "
            "pass --model with the right checkpoint (or to decode with this one anyway)"
        )
    return tok, None


def source_video(source: Any, cwd: str | None = None) -> str | bytes | None:
    """A sample's source: a video file path, or the bytes of "shard.tar:member" (a tar input's video); None if gone.

    A relative source not found from here is looked up under `cwd`, the directory the encode ran in.
    """
    if not isinstance(source, str) or not source:
        return None
    found = _existing_file(source, cwd)
    if found:
        return found
    tar, _, member = source.rpartition(":")
    tar = _existing_file(tar, cwd) if tar else None
    if not tar:
        return None
    try:
        with tarfile.open(tar) as archive:
            return archive.extractfile(member).read()
    except (tarfile.TarError, OSError, KeyError, AttributeError):  # AttributeError: the member is not a file
        return None


def _existing_file(path: str, cwd: str | None) -> str | None:
    if Path(path).is_file():
        return path
    if cwd and not Path(path).is_absolute() and (Path(cwd) / path).is_file():
        return str(Path(cwd) / path)
    return None


def open_source(sample: Sample, size: int, clip_frames: int) -> tuple[Iterator[Any] | None, str | None]:
    """The source video's clips cut like at encode time (manifest clip settings), or None and why not."""
    source = source_video(sample.meta.get("source"), (sample.manifest or {}).get("cwd"))
    if source is None:
        return None, f"source {sample.meta.get('source')!r} is not readable: no psnr"
    from .video import ClipSpec, iter_clips

    settings = (sample.manifest or {}).get("clip") or {"size": size, "clip_frames": clip_frames}
    known = {f.name for f in fields(ClipSpec)}
    spec = ClipSpec(**{k: v for k, v in settings.items() if k in known})
    try:
        _, clips = iter_clips(source, spec)
    except VideoError as exc:
        return None, f"source unreadable ({exc}): no psnr"
    return clips, None


def to_bit_order(sample: Sample, tok: Any) -> str | None:
    """Put a sample's ids in the tokenizer's bit order when its manifest names the other one (a note says so).

    The bit order says which index bit latent channel 0 is; reversing the bits keeps every channel's sign."""
    order = (sample.manifest or {}).get("bit_order", tok.bit_order)
    if order not in BIT_ORDERS:
        raise InputError(f"sample {sample.key}: the manifest's bit_order {order!r} is not one of {', '.join(BIT_ORDERS)}")
    if order == tok.bit_order:
        return None
    sample.tokens = reverse_bits(sample.tokens, tok.codebook_size.bit_length() - 1)
    return f"ids converted from the tokens' {order} to the tokenizer's {tok.bit_order}"


def iter_batches(samples: Sequence[Sample], batch_size: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """(sample index per clip, ids (B, t, h, w) [+ (c)]) over every clip of every sample, in order."""
    refs: list[int] = []
    clips: list[np.ndarray] = []
    for i, sample in enumerate(samples):
        for clip in sample.tokens:
            if clips and (len(clips) == batch_size or clip.shape != clips[0].shape):
                yield refs, np.stack(clips)
                refs, clips = [], []
            refs.append(i)
            clips.append(clip)
    if clips:
        yield refs, np.stack(clips)


# the entry point


def decode_samples(
    paths: Sequence[str | Path] | str | Path,
    out: Path,
    *,
    keys: Sequence[str] | None = None,
    limit: int | None = 4,
    fmt: str = "mp4",
    compare: bool = False,
    model: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
) -> list[dict]:
    """Decode token samples to `{out}/{key}.{fmt}` previews; one row per sample (DESIGN §6 keys + ssim, frames, note).

    PSNR/SSIM are against the source frames re-cut with the manifest's clip settings, when the source is readable;
    `compare` puts those frames left of the reconstruction. Scores are `lfqtok.metrics` (PSNR of identical frames: 100 dB).
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if (exists(limit) and limit < 1) or batch_size < 1:
        raise UsageError(f"--limit and batch size must be >= 1, got {limit} and {batch_size}")
    import torch

    samples = pick_samples(paths, keys, limit)
    if not samples:
        raise InputError(f"no token samples in {paths}")
    tok, model_note = load_for(samples, model, device)
    out = Path(out)
    previews = []
    for sample in samples:
        t, h, w = sample.tokens.shape[1:4]
        c = tok.config
        source, note = open_source(sample, h * c.spatial_compression, 1 + (t - 1) * c.temporal_compression)
        notes = [n for n in (model_note, to_bit_order(sample, tok), note) if n]
        previews.append(Preview(sample, out / f"{sample.key}.{fmt}", fmt, compare, source, notes))
    rows: dict[int, dict] = {}
    left = [len(s.tokens) for s in samples]
    for refs, ids in iter_batches(samples, batch_size):
        frames = tok.decode(torch.from_numpy(from_storage(ids))).numpy()  # (B, T, H, W, 3) uint8
        for i, rec in zip(refs, frames):
            previews[i].add(rec)
            left[i] -= 1
            if left[i] == 0:
                rows[i] = previews[i].close()
    return [rows[i] if i in rows else preview.close() for i, preview in enumerate(previews)]  # else: no clips
