"""`decode_samples`: token samples back to previews (mp4 / gif / png contact sheet) with PSNR and SSIM (DESIGN §6).

Inputs are token shards (encode outputs, tars) or `.npy` arrays of generated ids (with an explicit model). Clips of
all picked samples are decoded in batches (on the GPU when there is one) and each clip's frames are written to its
sample's file as they come, so memory does not grow with the video's length. The source frames, re-read with the
encode settings from the manifest (input tars indexed once per run), give PSNR/SSIM and (`compare`) the source
beside the reconstruction: left of it in videos, above it in the PNG contact sheet's grid. The sheet says what it
shows in Pillow's default font: rows named (source, lfqtok), each clip's index, time and PSNR, and on top the
sample's key, source and caption (its `{key}.txt`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..io import storage
from ..io.codec import from_storage, reverse_bits
from ..errors import ImageError, InputError, ModelError, OutputError, UsageError, VideoError
from .metrics import QualityMeter, psnr
from ..io.shards import BIT_ORDERS, expand_paths, read_manifest, read_tokens
from ..pipeline.sources import Member, read_member, tar_members

# constants

FORMATS = ("mp4", "gif", "png")
DEFAULT_FPS = 8.0  # playback rate when neither the manifest nor the sample knows the source rate
SHEET_COLUMNS = 9  # frames per row of a contact sheet at most: a 17-frame clip is 2 rows (9 + 8)
SHEET_GAP = 2  # px between frames, and between the rows of a clip
SHEET_CLIP_GAP = 8  # px of a light band between clips
SHEET_LINE = 14  # px per line of text (Pillow's default font is 10 px)
SHEET_HEADER = SHEET_LINE + SHEET_GAP  # px above each clip's frames: its index, time and PSNR
SHEET_MARGIN = 64  # px left of the frames, naming each row: "source" / "lfqtok"
SHEET_MIN_WIDTH = 320  # px: room for the header and caption however small the frames
GAP_GREY, CLIP_GAP_GREY, MISSING_GREY, TEXT_GREY = 0, 200, 64, 235  # gaps, clip boundaries, unreadable source, words
KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")  # what a sample key may not hold (dots: webdataset splits there)

# helpers


def exists(v: Any) -> bool:
    return v is not None




# writers: one file per sample, frames appended clip by clip


class VideoWriter:
    """mp4 (libx264, yuv420p) or gif (PyAV's gif encoder) of uint8 RGB frames appended clip by clip; with a
    source (`sides` 2) its frames are left of the reconstruction. yuv420p needs even sides: an odd-sized picture
    (the valid region of a padded frame) gets one black row or column at the bottom or right."""

    def __init__(self, path: Path, fmt: str, fps: float, width: int, height: int, sides: int):
        import av

        self.av, self.sides = av, sides
        self.container = av.open(str(path), "w")
        rate = Fraction(fps).limit_denominator(1001)
        if fmt == "mp4":
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.pix_fmt = "yuv420p"
        else:
            self.stream = self.container.add_stream("gif", rate=rate)
            self.stream.pix_fmt = "rgb8"
        even = fmt == "mp4"
        self.stream.width, self.stream.height = width * sides + (even and width * sides % 2), height + (even and height % 2)
        self.pts = 0

    def write(self, rec: np.ndarray, src: np.ndarray | None) -> None:
        """One clip (T, H, W, 3) and its source frames (or None: grey in their place when `sides` is 2)."""
        if self.sides == 2:
            rec = np.concatenate([src if exists(src) else np.full_like(rec, MISSING_GREY), rec], axis=2)
        extra = (self.stream.height - rec.shape[1], self.stream.width - rec.shape[2])
        if any(extra):
            rec = np.pad(rec, ((0, 0), (0, extra[0]), (0, extra[1]), (0, 0)))
        for frame in rec:
            video_frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = self.pts
            self.container.mux(self.stream.encode(video_frame))
            self.pts += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


@dataclass(frozen=True)
class SheetLayout:
    """Where a contact sheet puts frames and words: a title (key, caption) on top; each clip a block with a header
    line (index, time, PSNR) over rows of at most SHEET_COLUMNS frames, each row named in the left margin; with a
    source (`sides` 2) each row of source frames sits directly above the same frames reconstructed."""

    frames: int  # T per clip
    height: int
    width: int
    clips: int
    sides: int  # 1: reconstruction only, 2: source row above reconstruction row
    title_lines: int = 0  # lines of text above the first clip

    @property
    def columns(self) -> int:
        return math.ceil(self.frames / math.ceil(self.frames / SHEET_COLUMNS))  # balanced rows: 17 -> 9 + 8

    @property
    def rows(self) -> int:
        return math.ceil(self.frames / self.columns)

    @property
    def row_height(self) -> int:
        """One row of frames: its source strip (sides 2), a gap, its reconstruction strip."""
        return self.sides * self.height + (self.sides - 1) * SHEET_GAP

    @property
    def block_height(self) -> int:
        """One clip: its header line and its rows of frames."""
        return SHEET_HEADER + self.rows * self.row_height + (self.rows - 1) * SHEET_GAP

    @property
    def title_height(self) -> int:
        return self.title_lines * SHEET_LINE + SHEET_GAP if self.title_lines else 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole sheet in pixels."""
        frames_width = self.columns * self.width + (self.columns - 1) * SHEET_GAP
        width = max(SHEET_MARGIN + frames_width, SHEET_MIN_WIDTH)
        return width, self.title_height + self.clips * self.block_height + (self.clips - 1) * SHEET_CLIP_GAP

    def origin(self, clip: int, frame: int, side: int) -> tuple[int, int]:
        """(y, x) of frame `frame` of clip `clip`; side 0 is the source when sides is 2, else the reconstruction."""
        row, column = divmod(frame, self.columns)
        y = (self.title_height + clip * (self.block_height + SHEET_CLIP_GAP) + SHEET_HEADER
             + row * (self.row_height + SHEET_GAP) + side * (self.height + SHEET_GAP))
        return y, SHEET_MARGIN + column * (self.width + SHEET_GAP)


@functools.lru_cache(maxsize=1)
def sheet_font() -> Any:
    """Pillow's own default font (no font file from outside)."""
    from PIL import ImageFont

    return ImageFont.load_default()


def wrap_text(text: str, width: int, font: Any, max_lines: int = 6) -> list[str]:
    """`text` in lines of at most `width` px, broken between words (inside one only when it alone is wider: a
    path); at most `max_lines`, the last ending in '...' when text was left out."""
    lines: list[str] = []
    text = text[: max_lines * 400]  # more than the lines can show: a caption may be a whole page
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width:
                lo, hi = 1, len(word) - 1  # the longest head of the word that fits (at least one character)
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if font.getlength(word[:mid]) <= width else (lo, mid - 1)
                cut = lo
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-3] + "..."
    return lines


def clip_label(meta: dict[str, Any], clip: int, psnr_db: float | None) -> str:
    """A contact sheet's clip header: `clip 0 | 0.00-0.67 s | scene 1 | PSNR 31.2 dB` (time, scene and PSNR when
    known; an image's one clip is `image`)."""
    from ..pipeline.images import DECODER as IMAGE_DECODER

    parts = ["image" if meta.get("decoder") == IMAGE_DECODER else f"clip {clip}"]
    times = meta.get("clip_times")
    indices, fps = meta.get("frame_indices"), meta.get("fps")
    if isinstance(times, list) and clip < len(times):
        parts.append(f"{times[clip][0]:.2f}-{times[clip][1]:.2f} s")
    elif isinstance(indices, list) and clip < len(indices) and indices[clip] and fps:
        parts.append(f"{indices[clip][0] / fps:.2f}-{indices[clip][-1] / fps:.2f} s")
    scenes = meta.get("clip_scenes")  # --scenes runs: the scene each clip lies in
    if isinstance(scenes, list) and clip < len(scenes):
        parts.append(f"scene {scenes[clip]}")
    if psnr_db is not None:
        parts.append(f"PSNR {psnr_db:.1f} dB")
    return " | ".join(parts)


class ContactSheetWriter:
    """PNG contact sheet laid out by SheetLayout, streamed: each clip's block is compressed into IDAT at once.
    `title`: the lines above the first clip (`layout.title_lines` of them)."""

    def __init__(self, path: Path, layout: SheetLayout, title: Sequence[str] = ()):
        self.layout, self.clips = layout, 0
        self.font = sheet_font()
        self.file = open(path, "wb")
        self.zip = zlib.compressobj(6)
        self.file.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", *layout.size, 8, 2, 0, 0, 0))  # 8-bit RGB
        if layout.title_height:
            strip = np.full((layout.title_height, layout.size[0], 3), GAP_GREY, np.uint8)
            self._rows(self._text(strip, [(SHEET_GAP, i * SHEET_LINE, line) for i, line in enumerate(title)]))

    def write(self, rec: np.ndarray, src: np.ndarray | None, label: str = "") -> None:
        """One clip (T, H, W, 3), its source frames (or None: grey in their place when the sheet has them) and its
        header line."""
        lay = self.layout
        width = lay.size[0]
        gap = SHEET_CLIP_GAP if self.clips else 0
        block = np.full((lay.block_height + gap, width, 3), GAP_GREY, np.uint8)
        block[:gap] = CLIP_GAP_GREY
        top = gap - lay.title_height  # origin(0, ...) counts from the sheet's top, above the title
        sides = [src if exists(src) else np.full_like(rec, MISSING_GREY), rec] if lay.sides == 2 else [rec]
        names = ["source" if exists(src) else "no source", "lfqtok"] if lay.sides == 2 else ["lfqtok"]
        words = [(SHEET_GAP, gap, label)]
        for side, frames in enumerate(sides):
            for i, frame in enumerate(frames):
                y, x = lay.origin(0, i, side)
                block[top + y : top + y + lay.height, x : x + lay.width] = frame
                if i % lay.columns == 0:  # each row of frames named in the margin
                    words.append((SHEET_GAP, top + y + max(0, (lay.height - SHEET_LINE) // 2), names[side]))
        self._rows(self._text(block, words))
        self.clips += 1

    def close(self) -> None:
        self._chunk(b"IDAT", self.zip.flush())
        self._chunk(b"IEND", b"")
        self.file.close()

    def _text(self, pixels: np.ndarray, words: list[tuple[int, int, str]]) -> np.ndarray:
        """`pixels` (H, W, 3) with each (x, y, text) drawn in TEXT_GREY."""
        from PIL import Image, ImageDraw

        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for x, y, text in words:
            draw.text((x, y), text, fill=(TEXT_GREY,) * 3, font=self.font)
        return np.asarray(image)

    def _rows(self, pixels: np.ndarray) -> None:
        rows = np.concatenate([np.zeros((len(pixels), 1), np.uint8), pixels.reshape(len(pixels), -1)], axis=1)  # filter 0
        self._chunk(b"IDAT", self.zip.compress(rows.tobytes()))

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
    generated: str | None = None  # the .npy of generated ids it came from (no source video, no manifest)


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
        """One decoded clip (T, H, W, 3) uint8: shown and scored on its valid region (the picture without pad)."""
        src = self._source_clip(rec)
        rec, src = valid_region(rec, self.sample.meta), valid_region(src, self.sample.meta)
        if exists(src):
            self.quality.add(rec, src)
        if not exists(self.writer):
            self.writer = self._open(rec.shape, sides=2 if self.compare and exists(src) else 1)
        try:
            if isinstance(self.writer, ContactSheetWriter):  # each clip's header: index, time, PSNR
                self.writer.write(rec, src, clip_label(self.sample.meta, self.clips, psnr(rec, src) if exists(src) else None))
            else:
                self.writer.write(rec, src)
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

    def _title(self, width: int) -> list[str]:
        """The contact sheet's top lines: the key and where it came from, then its caption, wrapped to `width` px."""
        sample, font = self.sample, sheet_font()
        origin = sample.meta.get("source") or sample.generated
        lines = wrap_text(f"{sample.key}{f'  from {origin}' if origin else ''}", width, font, max_lines=2)
        caption = str(sample.meta.get("caption") or "").strip()  # its {key}.txt (read_tokens puts it in meta)
        return lines + (wrap_text(f"caption: {caption}", width, font) if caption else [])

    def _drop_source(self, note: str) -> None:
        self.notes.append(note + ": no psnr")
        self.source = None

    def _open(self, shape: tuple[int, ...], sides: int):
        t, h, w, _ = shape
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.fmt == "png":
                layout = SheetLayout(t, h, w, len(self.sample.tokens), sides)
                title = self._title(layout.size[0] - 2 * SHEET_GAP)
                return ContactSheetWriter(self.path, replace(layout, title_lines=len(title)), title)
            return VideoWriter(self.path, self.fmt, playback_fps(self.sample), w, h, sides)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def valid_region(frames: np.ndarray | None, meta: dict[str, Any]) -> np.ndarray | None:
    """Frames (T, H, W, 3) cut to the sample's `valid` box [top, left, height, width] (`--resize pad`), if any."""
    valid = meta.get("valid")
    if frames is None or not (isinstance(valid, list) and len(valid) == 4):
        return frames
    top, left, h, w = (int(v) for v in valid)
    return frames[:, top : top + h, left : left + w]


def preview_format(sample: Sample, fmt: str) -> str:
    """`fmt`, except PNG for samples of single-frame clips (images): a one-frame video is no preview."""
    return "png" if sample.tokens.ndim >= 4 and sample.tokens.shape[1] == 1 else fmt


def playback_fps(sample: Sample) -> float:
    clip = (sample.manifest or {}).get("clip") or {}
    return float(clip.get("fps") or sample.meta.get("fps") or DEFAULT_FPS)


# picking samples, loading the tokenizer, re-reading sources


def pick_samples(paths: Sequence[str | Path] | str | Path, keys: Sequence[str] | None, limit: int | None,
                 tokenizer: Any = None, storage_options: dict | None = None) -> list[Sample]:
    """The samples named by `keys` (all must exist), else the first `limit` (None: all), in input order: those of
    token shards, and those of `.npy` arrays of generated ids (which need the `tokenizer` they are decoded with)."""
    wanted = set(keys) if keys else None
    picked: list[Sample] = []
    manifests: dict[Path, dict | None] = {}
    for item in [paths] if isinstance(paths, (str, Path)) else paths:
        found = generated_samples(Path(item), tokenizer) if is_npy(item) else _shard_samples(item, manifests, storage_options)
        for sample in found:
            if wanted is None or sample.key in wanted:
                picked.append(sample)
            if (wanted is None and exists(limit) and len(picked) >= limit) or (wanted and wanted <= {s.key for s in picked}):
                return picked
    missing = sorted(wanted - {s.key for s in picked}) if wanted else []
    if missing:
        raise InputError(f"sample keys not found in the inputs: {', '.join(missing[:10])}")
    return picked


def _shard_samples(item: str | Path, manifests: dict[Any, dict | None], storage_options: dict | None = None) -> Iterator[Sample]:
    for tar in expand_paths(item, storage_options):
        parent = storage.parent(tar)
        if parent not in manifests:
            manifests[parent] = read_manifest(tar, storage_options)
        for key, tokens, meta in read_tokens(tar, storage_options):
            yield Sample(key, tokens, meta, manifests[parent])


def unique_name(key: str, taken: set[str]) -> str:
    """`key`, or `key_2`, `key_3`, ... when an earlier sample of this run took it (two generated `x.npy` from two
    dirs, one key in two token dirs): no preview overwrites another. Adds the name to `taken`."""
    name, n = key, 1
    while name in taken:
        n += 1
        name = f"{key}_{n}"
    taken.add(name)
    return name


def is_npy(item: str | Path) -> bool:
    return str(item).lower().endswith(".npy")


def generated_samples(path: Path, tokenizer: Any) -> list[Sample]:
    """A .npy of generated ids (any integer dtype) -> samples, keyed by the file name: (t, h, w) is one clip,
    (clips, t, h, w) one sample of clips (a batch of clips shows as one preview), (batch, clips, t, h, w) one
    sample per batch entry; a trailing (c) axis with several codebooks. Every id is checked against the codebook."""
    if tokenizer is None:
        raise ModelError(f"{path}: generated token ids need --model, the tokenizer that made them (e.g. --model default)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    axes = 3 + (tokenizer.num_codebooks > 1)  # (t, h, w) [+ (c)]
    if arr.dtype.kind not in "iu" or not axes <= arr.ndim <= axes + 2 or arr.size == 0:
        dims = "t, h, w" + (f", c={tokenizer.num_codebooks}" if axes == 4 else "")
        raise InputError(f"{path}: need integer ids of shape ({dims}), (clips, {dims}) or (batch, clips, {dims}); "
                         f"got {arr.dtype} {arr.shape}")
    if axes == 4 and arr.shape[-1] != tokenizer.num_codebooks:
        raise InputError(f"{path}: last axis has {arr.shape[-1]} codebooks, the tokenizer has {tokenizer.num_codebooks}")
    check_ids(arr, tokenizer.codebook_size, str(path))
    arr = arr.reshape((1,) * (axes + 2 - arr.ndim) + arr.shape)  # (batch, clips, t, h, w) [+ (c)]
    stem = KEY_CHARS.sub("_", path.name[: -len(".npy")]) or "tokens"
    width = len(str(len(arr) - 1))
    keys = [stem] if len(arr) == 1 else [f"{stem}_{i:0{width}d}" for i in range(len(arr))]
    return [Sample(key, tokens, {"source": None}, None, generated=str(path)) for key, tokens in zip(keys, arr)]


def check_ids(arr: np.ndarray, codebook_size: int, where: str) -> None:
    """Every id in [0, codebook_size), else InputError naming the first one outside (index and value)."""
    if int(arr.min()) >= 0 and int(arr.max()) < codebook_size:
        return
    first = np.unravel_index(int(np.argmax((arr < 0) | (arr >= codebook_size))), arr.shape)
    raise InputError(f"{where}: token id {int(arr[first])} at index {tuple(map(int, first))} is outside the codebook "
                     f"[0, {codebook_size}) of the tokenizer")


def load_for(samples: Sequence[Sample], model: str | None, device: str, loaded: Any = None,
             storage_options: dict | None = None) -> tuple[Any, str | None]:
    """The tokenizer the manifest names, checked by sha256; an explicit `model` (`loaded` already) may differ (noted)."""
    from ..tokenizers.model import load_tokenizer

    manifest = next((s.manifest for s in samples if s.manifest), None)
    recorded = (manifest or {}).get("tokenizer") or {}
    if exists(model):
        tok = loaded if exists(loaded) else load_tokenizer(model, device=device, storage_options=storage_options)
        if any(s.manifest is None and s.generated is None for s in samples):
            return tok, "no lfqtok.json next to the shards: tokenizer not checked"
        if manifest and tok.sha256 != recorded.get("sha256"):
            return tok, f"--model {model} differs from the tokenizer the tokens were made with (sha256 {str(recorded.get('sha256'))[:12]})"
        return tok, None
    if not manifest:
        raise ModelError("no lfqtok.json next to the token shards, so the tokenizer is unknown: pass --model")
    name = recorded.get("name")
    if name != "default" and not (isinstance(name, str) and (storage.is_url(name) or Path(name).is_file())):
        raise ModelError(f"the tokens were made with tokenizer {name!r}, which is not 'default' nor a checkpoint file here: pass --model")
    tok = load_tokenizer(name, device=device, storage_options=storage_options)
    if not recorded.get("sha256"):
        raise ModelError(f"the manifest records no tokenizer sha256 to check {name!r} against: pass --model to decode anyway")
    if tok.sha256 != recorded["sha256"]:
        raise ModelError(
            f"tokenizer {name!r} has sha256 {tok.sha256[:12]}..., the tokens were made with {recorded['sha256'][:12]}...: "
            "pass --model with the right checkpoint (or to decode with this one anyway)"
        )
    return tok, None


class TarSources:
    """Input tars indexed once per decode run (one pass over their headers), so a source "shard.tar:member" costs
    a seek and a read however many samples come from the same tar."""

    def __init__(self, storage_options: dict | None = None) -> None:
        self.index: dict[str, dict[str, Member] | None] = {}  # None: not a readable tar
        self.options = storage_options  # for sources that are URLs

    def read(self, tar: str, member: str) -> bytes | None:
        if tar not in self.index:
            try:
                self.index[tar] = tar_members(tar, self.options) if storage.is_url(tar) else tar_members(tar)
            except (InputError, UsageError):
                self.index[tar] = None
        found = (self.index[tar] or {}).get(member)
        try:
            return read_member(tar, found, self.options) if exists(found) else None
        except InputError:
            return None


def source_video(source: Any, cwd: str | None = None, tars: TarSources | None = None) -> str | bytes | None:
    """A sample's source: a video file path, or the bytes of "shard.tar:member" (a tar input's video); None if gone.

    A relative source not found from here is looked up under `cwd`, the directory the encode ran in; `tars` keeps
    the tar indexes of a run (a fresh one when not given).
    """
    if not isinstance(source, str) or not source:
        return None
    tars = tars or TarSources()
    if storage.is_url(source):
        tar, sep, member = source.rpartition(":")
        if sep and tar.endswith(".tar") and storage.is_url(tar):
            return tars.read(tar, member)
        try:
            return storage.read_bytes(source, tars.options)
        except (UsageError, *storage.errors()):
            return None
    found = _existing_file(source, cwd)
    if found:
        return found
    tar, _, member = source.rpartition(":")
    tar = _existing_file(tar, cwd) if tar else None
    if not tar:
        return None
    return tars.read(tar, member)


def local_source(sample: Sample) -> str | None:
    """The local video file a sample was encoded from, when it is still there (not a URL, not a tar member)."""
    source = sample.meta.get("source")
    if exists(sample.generated) or not isinstance(source, str) or not source or storage.is_url(source):
        return None
    return _existing_file(source, (sample.manifest or {}).get("cwd"))


def _existing_file(path: str, cwd: str | None) -> str | None:
    if Path(path).is_file():
        return path
    if cwd and not Path(path).is_absolute() and (Path(cwd) / path).is_file():
        return str(Path(cwd) / path)
    return None


def open_source(sample: Sample, size: int | tuple[int, int], clip_frames: int, tars: TarSources | None = None) -> tuple[Iterator[Any] | None, str | None]:
    """The source's clips cut like at encode time (manifest clip settings; a sample of a time range: that range,
    its json `time_range`; an image: its one clip, decoded as encode decodes it), or None and why not."""
    if exists(sample.generated):
        return None, None
    source = source_video(sample.meta.get("source"), (sample.manifest or {}).get("cwd"), tars)
    if source is None:
        return None, f"source {sample.meta.get('source')!r} is not readable: no psnr"
    from ..pipeline.images import DECODER as IMAGE_DECODER, image_clip
    from ..pipeline.video import ClipSpec, iter_clips

    settings = (sample.manifest or {}).get("clip") or {"size": size, "clip_frames": clip_frames}
    spec = ClipSpec.from_settings(settings)
    try:
        if sample.meta.get("decoder") == IMAGE_DECODER:
            clips = iter([image_clip(source, spec)[1]])
        else:
            span = sample.meta.get("time_range")
            _, clips = iter_clips(source, spec, span=tuple(span) if span is not None else None)
    except (VideoError, ImageError) as exc:
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
    storage_options: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Decode token samples to `{out}/{key}.{fmt}` previews; one row per sample (DESIGN §6 keys + ssim, frames, note).

    `paths`: token dirs, tars, brace patterns (paths or URLs, read with `storage_options`), and `.npy` arrays of generated ids (they need `model`; see
    `generated_samples`). PSNR/SSIM are against the source frames re-cut with the manifest's clip settings, when
    the source is readable; `compare` shows those frames beside the reconstruction. Scores are `lfqtok.inspect.metrics`
    (PSNR of identical frames: 100 dB). `on_progress(clips decoded, clips in all)` follows the work.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if (exists(limit) and limit < 1) or batch_size < 1:
        raise UsageError(f"--limit and batch size must be >= 1, got {limit} and {batch_size}")
    import torch

    from ..tokenizers.model import load_tokenizer

    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if any(map(is_npy, items)) and not exists(model):
        raise ModelError("generated token ids (.npy) need --model, the tokenizer that made them (e.g. --model default)")
    explicit = load_tokenizer(model, device=device, storage_options=storage_options) if exists(model) else None
    samples = pick_samples(items, keys, limit, explicit, storage_options)
    if not samples:
        raise InputError(f"no token samples in {paths}")
    tok, model_note = load_for(samples, model, device, explicit, storage_options)
    out = Path(out)
    tars = TarSources(storage_options)
    previews = []
    names: set[str] = set()
    sources = {os.path.realpath(found): found for found in map(local_source, samples) if found}
    for sample in samples:
        t, h, w = sample.tokens.shape[1:4]
        c = tok.config
        size = h * c.spatial_compression if h == w else (h * c.spatial_compression, w * c.spatial_compression)
        source, note = open_source(sample, size, 1 + (t - 1) * c.temporal_compression, tars)
        name = unique_name(sample.key, names)
        kind = preview_format(sample, fmt)
        renamed = f"written as {name}.{kind}: an earlier input has the key {sample.key}" if name != sample.key else None
        notes = [n for n in (model_note, to_bit_order(sample, tok), note, renamed) if n]
        replaced = sources.get(os.path.realpath(out / f"{name}.{kind}"))
        if replaced:
            raise UsageError(f"the preview {out / f'{name}.{kind}'} would replace the source video {replaced}: write the "
                             "previews to another directory")
        previews.append(Preview(sample, out / f"{name}.{kind}", kind, compare, source, notes))
    rows: dict[int, dict] = {}
    left = [len(s.tokens) for s in samples]
    total, done = sum(left), 0
    if on_progress is not None:
        on_progress(done, total)
    for refs, ids in iter_batches(samples, batch_size):
        frames = tok.decode(torch.from_numpy(from_storage(ids))).numpy()  # (B, T, H, W, 3) uint8
        for i, rec in zip(refs, frames):
            previews[i].add(rec)
            left[i] -= 1
            if left[i] == 0:
                rows[i] = previews[i].close()
        done += len(refs)
        if on_progress is not None:
            on_progress(done, total)
    return [rows[i] if i in rows else preview.close() for i, preview in enumerate(previews)]  # else: no clips
