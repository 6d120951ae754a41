"""Frame shapes: what `--size`, `--resize` and `--buckets` mean, and the one geometry every decoder path uses.

`layout` is the whole geometry of one frame: from the source's displayed (width, height) to the size swscale
scales it to, the crop box in the scaled picture, the offset of the picture in the output frame and the valid
(unpadded) region. `place` applies the crop and the pad to a picture already scaled to `Layout.scaled`.

- `--size S`: short side S, centre crop S x S (the `crop` mode at S x S; lfqtok's meaning since the start).
- `--size HxW`, `--resize crop` (default): scale to cover H x W (aspect kept), centre crop.
- `--resize pad`: scale to fit inside H x W (aspect kept), centre it, fill the rest with PAD_FILL (black).
- `--resize fit`: each video keeps its own aspect: the largest frame inside H x W with the source's aspect,
  each side rounded to the model's spatial multiple (nearest, Python's round; at least one multiple), then
  `crop` onto that frame (a few pixels at most are cut to reach the multiples).
- `--buckets HxW,...`: each video goes to the bucket nearest its aspect ratio, |log(w/h) - log(W/H)| (ties:
  the bucket listed first), then `crop` or `pad` onto the bucket. `--buckets auto`: the PRESET_ASPECTS at the
  pixel budget of `--size` (S x S, or H x W), each side a multiple of the model's spatial factor.

Scaled sizes: the side that decides (cover: the one that fills, contain: the one that touches) is the target
exactly; the other is Python's round of the source side times the same factor, at least the target (cover) or at
most the target and at least 1 pixel (contain). Crop boxes and pad offsets are centred, odd pixels going to the
bottom and right: top = (scaled - frame) // 2.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import LfqtokError, UsageError

# constants

RESIZE_MODES = ("crop", "pad", "fit")
PAD_FILL = 0  # `pad`: the value of every channel outside the picture (black)
PRESET = "auto"  # `--buckets auto`
PRESET_ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (2, 1), (1, 2))  # width:height, in order
MIN_MULTIPLE = 8  # every tokenizer's spatial factor is a multiple of this: checked before the model is loaded
TIE = 1e-9  # log-aspect distances this close are a tie
SCALE_LIMIT = 2**31 - 1  # swscale takes a picture of w x h only when 8 (w + 128) (h + 128) is below this (av_image_check_size)
_SHAPE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")

Size = int | tuple[int, int]
Shape = tuple[int, int]  # (height, width)

# parsing


def parse_size(value: int | str | Sequence[int]) -> Size:
    """`128` or "128" -> 128 (short side, square crop); "128x224" or (128, 224) -> (height, width)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        return _shape(text, "--size")
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise UsageError(f"--size must be S or HxW (e.g. 128 or 128x224), got {value!r}")


def parse_buckets(value: str | Sequence[Sequence[int]] | None) -> tuple[Shape, ...] | str | None:
    """"128x224,224x128" or [(128, 224), ...] -> ((128, 224), ...); "auto" stays "auto" (resolved with the model)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip() == PRESET:
            return PRESET
        parts = [p for p in value.split(",") if p.strip()]
        if not parts:
            raise UsageError(f"--buckets must be '{PRESET}' or HxW,HxW,... (e.g. 128x224,224x128), got {value!r}")
        return tuple(_shape(p, "--buckets") for p in parts)
    shapes = tuple((int(h), int(w)) for h, w in value)
    if not shapes:
        raise UsageError("--buckets needs at least one HxW shape")
    return shapes


def _shape(text: str, option: str) -> Shape:
    match = _SHAPE.match(text)
    if not match:
        raise UsageError(f"{option} takes HxW shapes (height x width, e.g. 128x224), got {text.strip()!r}")
    return int(match[1]), int(match[2])


def frame_dims(size: Size) -> Shape:
    """(height, width) of `--size`: S -> (S, S)."""
    return (size, size) if isinstance(size, int) else size


def preset_buckets(pixels: int, multiple: int) -> tuple[Shape, ...]:
    """`--buckets auto`: one shape per PRESET_ASPECTS entry with about `pixels` pixels, sides rounded to `multiple`."""
    shapes: list[Shape] = []
    for aw, ah in PRESET_ASPECTS:
        w = max(multiple, round(math.sqrt(pixels * aw / ah) / multiple) * multiple)
        h = max(multiple, round(math.sqrt(pixels * ah / aw) / multiple) * multiple)
        if (h, w) not in shapes:
            shapes.append((h, w))
    return tuple(shapes)


def nearest_bucket(width: int, height: int, buckets: Sequence[Shape]) -> Shape:
    """The bucket whose aspect is nearest the source's in log aspect; ties go to the one listed first."""
    aspect = math.log(width / height)
    best, best_d = buckets[0], math.inf
    for h, w in buckets:
        d = abs(aspect - math.log(w / h))
        if d < best_d - TIE:
            best, best_d = (h, w), d
    return best


# geometry


@dataclass(frozen=True)
class Layout:
    """Where one source frame goes: scaled to `scaled`, cropped at `crop`, placed at `offset` in `frame`."""

    frame: Shape  # (H, W) of the output frame
    scaled: Shape  # (h, w) swscale scales the displayed picture to
    crop: tuple[int, int]  # (top, left) of the kept box in the scaled picture
    offset: tuple[int, int]  # (top, left) of the kept box in the frame (pad), else (0, 0)

    @property
    def valid(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the real picture in the frame."""
        h, w = min(self.scaled[0], self.frame[0]), min(self.scaled[1], self.frame[1])
        return self.offset[0], self.offset[1], h, w


def layout(width: int, height: int, frame: Shape, mode: str = "crop") -> Layout:
    """The geometry of a `width` x `height` (displayed) source placed in `frame` (H, W): `crop` (cover, centre
    crop) or `pad` (contain, centred); the one function every decoder path and the image path use."""
    fh, fw = frame
    frame_wider = fw * height >= fh * width  # frame aspect >= source aspect: cover fills the width, contain the height
    if mode == "crop":
        if frame_wider:
            scaled = (max(fh, round(height * fw / width)), fw)
        else:
            scaled = (fh, max(fw, round(width * fh / height)))
        return Layout(frame, scaled, ((scaled[0] - fh) // 2, (scaled[1] - fw) // 2), (0, 0))
    if mode == "pad":
        if frame_wider:
            scaled = (fh, min(fw, max(1, round(width * fh / height))))
        else:
            scaled = (min(fh, max(1, round(height * fw / width))), fw)
        return Layout(frame, scaled, (0, 0), ((fh - scaled[0]) // 2, (fw - scaled[1]) // 2))
    raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")


def place(scaled: np.ndarray, lay: Layout, fill: int = PAD_FILL) -> np.ndarray:
    """A picture scaled to `lay.scaled` (h, w, 3) -> the frame (H, W, 3) uint8: cropped, and padded with `fill`."""
    (top, left), (fh, fw) = lay.crop, lay.frame
    picture = scaled[top : top + fh, left : left + fw]
    if picture.shape[:2] == lay.frame:
        return np.ascontiguousarray(picture, dtype=np.uint8)
    out = np.full((fh, fw, scaled.shape[2]), fill, np.uint8)
    oy, ox = lay.offset
    out[oy : oy + picture.shape[0], ox : ox + picture.shape[1]] = picture
    return out


def short_side(width: int, height: int, size: int) -> Layout:
    """Short side scaled to `size`, aspect kept, nothing cropped (`iter_frames(size=...)`)."""
    scaled = layout(width, height, (size, size)).scaled
    return Layout(scaled, scaled, (0, 0), (0, 0))


@dataclass(frozen=True)
class Plan:
    """One video's shape: its layout (from the first frame's displayed size) and bucket; later frames of another
    size are placed in the same frame with `mode`."""

    layout: Layout
    mode: str  # "crop" or "pad": how every frame is placed (fit is crop onto the fitted frame)
    bucket: Shape | None = None
    source: tuple[int, int] = (0, 0)  # (width, height) the layout was made for

    def for_frame(self, width: int, height: int) -> Layout:
        return self.layout if (width, height) == self.source else layout(width, height, self.layout.frame, self.mode)


@dataclass(frozen=True)
class Shapes:
    """The shape options of a run: `size` S or (H, W), `resize` mode, `buckets`, the model's spatial `multiple`."""

    size: Size = 128
    resize: str = "crop"
    buckets: tuple[Shape, ...] | None = None
    multiple: int = MIN_MULTIPLE

    @property
    def legacy(self) -> bool:
        """`--size S` alone: what lfqtok always did; outputs carry none of the new fields then."""
        return isinstance(self.size, int) and self.resize == "crop" and self.buckets is None

    @property
    def uniform(self) -> Shape | None:
        """The one frame shape every video gets, or None (buckets, fit)."""
        return frame_dims(self.size) if self.buckets is None and self.resize != "fit" else None

    @property
    def largest(self) -> Shape:
        """The largest frame any video can get (buffer sizes)."""
        shapes = self.buckets or (frame_dims(self.size),)
        return max(shapes, key=lambda s: s[0] * s[1])

    def validate(self) -> None:
        """UsageError naming the first shape that no tokenizer of spatial factor `multiple` takes."""
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.resize == "fit" and self.buckets is not None:
            raise UsageError("--resize fit gives each video its own shape: it does not combine with --buckets")
        m = self.multiple
        for option, (h, w) in [("--size", frame_dims(self.size))] + [("--buckets", b) for b in self.buckets or ()]:
            if h < m or w < m or h % m or w % m:
                shown = str(h) if option == "--size" and isinstance(self.size, int) else f"{h}x{w}"
                raise UsageError(f"{option} must be a positive multiple of {m} (the tokenizer's spatial factor), got {shown}")

    def plan(self, width: int, height: int) -> Plan:
        """The shape of a video whose frames display as `width` x `height`."""
        if self.buckets is not None:
            bucket = nearest_bucket(width, height, self.buckets)
            return Plan(layout(width, height, bucket, self.resize), self.resize, bucket, (width, height))
        if self.resize == "fit":
            frame = self.fitted(width, height)
            return Plan(layout(width, height, frame, "crop"), "crop", None, (width, height))
        return Plan(layout(width, height, frame_dims(self.size), self.resize), self.resize, None, (width, height))

    def fitted(self, width: int, height: int) -> Shape:
        """`fit`: the largest (H, W) inside the size with the source's aspect, sides rounded to the multiple."""
        fh, fw = frame_dims(self.size)
        scale = min(fh / height, fw / width)
        m = self.multiple
        return (min(fh, max(m, round(height * scale / m) * m)), min(fw, max(m, round(width * scale / m) * m)))


def check_scale(plan: Plan, what: str, error: type[LfqtokError]) -> None:
    """`error` with a reason a user can act on when `plan` would scale its source (a very thin `what`, "image" or
    "video") past what swscale takes: a crop of a 3 x 100000 image to 128 x 128 first scales it 4 million pixels tall."""
    h, w = plan.layout.scaled
    if 8 * (w + 128) * (h + 128) < SCALE_LIMIT:
        return
    width, height = plan.source
    fh, fw = plan.layout.frame
    other = "pad or fit" if plan.bucket is None else "pad"
    raise error(f"{width} x {height} {what}: the crop to {fw} x {fh} would first scale it to {w:,} x {h:,} pixels, "
                f"more than the scaler takes; use --resize {other}")
