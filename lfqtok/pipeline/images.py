"""Decode stage for one still image: jpg/jpeg, png, webp or bmp -> an upright uint8 RGB array -> a 1-frame clip.

An image is a 1-frame clip: after decoding it takes the path every video frame takes (`video.resize_image`:
swscale AREA, then the crop or pad of `--size` / `--resize` / `--buckets`), so shape settings apply to images and
videos alike. How pixels become
RGB (the documented rules; Pillow decodes):
- EXIF orientation is applied (all eight, mirrored ones included), before scaling;
- grey (`L`, 1-bit) -> R = G = B; 16-bit grey -> 8 bits as round(v * 255 / 65535); 16-bit colour PNGs keep
  their high byte (Pillow's reading);
- palette -> its colours; CMYK (Adobe-inverted JPEGs included) -> R = (255 - C)(255 - K) / 255 and likewise G, B
  (Pillow's conversion; ICC profiles are not applied, to any image);
- alpha (RGBA, LA, transparent palette entries or colour keys) -> composited over black, as for video frames with
  alpha: round(c * a / 255);
- animated webp / png / gif: the first frame (a GIF is an image only among images: `sources.py`).
Safety: only the JPEG, PNG, WebP, BMP and GIF parsers ever see the bytes; the pixel count is read from the header and an
image over MAX_PIXELS is refused before decoding (a decompression bomb costs nothing); a truncated or corrupt file
is an ImageError with its reason. A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's
`draft`) when that still leaves it at least as large as its scaled size: docs/performance.md measures it.
"""

from __future__ import annotations

import io
import re
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .shapes import check_scale
from .video import Clip, ClipSpec, VideoMeta, image_scaled_size, resize_image

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # the only Pillow parsers tried (JPEG also opens cameras' multi-picture MPO
# files; GIF: a GIF among images, sources.py)
MAX_PIXELS = 89_478_485  # Pillow's own bomb-warning threshold (1 GiB at 12 bytes a pixel): larger images are refused
DECODER = "pillow"  # the sample json's "decoder" for images
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grey PNGs open as one of these
_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, zlib.error)  # what Pillow raises on bad data


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _open(image: str | bytes) -> Image.Image:
    """The image with only its header read; ImageError for anything that is not a readable jpg/png/webp/bmp."""
    Image.init()  # registers every parser, MPO and WebP among them (a no-op after the first call)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below with the real reason
            im = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image, formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not a readable image (jpg, jpeg, png, webp or bmp): its format is not recognized") from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageError(f"image has {pixels} (from its header), over the {MAX_PIXELS:,} pixel limit: refused as a possible decompression bomb") from None
    except _ERRORS as exc:
        if getattr(exc, "strerror", None):  # the file itself: missing, unreadable
            raise ImageError(f"cannot read image: {exc.strerror}") from None
        raise ImageError(f"truncated or corrupt image: {_reason(exc)}") from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageError(f"image has {width * height:,} pixels (from its header), over the {MAX_PIXELS:,} pixel "
                         f"limit: refused as a possible decompression bomb ({width}x{height})")
    return im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except _ERRORS:  # unreadable EXIF: the image as stored
        return 1


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded image of any mode -> (H, W, 3) uint8 RGB by the rules of this module's docstring."""
    if im.mode in _SIXTEEN_BIT:
        grey = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
        return np.repeat(grey[..., None], 3, axis=2)
    if "A" in im.mode or "a" in im.mode or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        return ((rgba[..., :3].astype(np.uint16) * rgba[..., 3:] + 127) // 255).astype(np.uint8)  # over black
    return np.asarray(im.convert("RGB"))


def _display_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 swap the stored sides."""
    width, height = im.size
    return (height, width) if _orientation(im) in _TRANSPOSED else (width, height)


def _decode(im: Image.Image, min_size: tuple[int, int] | None) -> np.ndarray:
    """An opened image -> (H, W, 3) uint8 RGB, upright; a JPEG drafted down to no less than `min_size` (w, h)."""
    if min_size is not None and im.format in ("JPEG", "MPO"):
        w, h = min_size
        im.draft(None, (h, w) if _orientation(im) in _TRANSPOSED else (w, h))  # draft takes the stored orientation
    try:
        im.load()
        return np.ascontiguousarray(_to_rgb(ImageOps.exif_transpose(im)))
    except _ERRORS as exc:
        raise ImageError(f"truncated or corrupt {im.format} image: {_reason(exc)}") from None


def read_image(image: str | bytes, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file (a path or its bytes) -> (H, W, 3) uint8 RGB, upright (EXIF applied), by the module's rules.

    `min_size` (w, h), upright: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as it stays at least this
    large (both sides). Raises ImageError with a one-line reason for anything that cannot be read."""
    with _open(image) as im:
        return _decode(im, min_size)


def image_clip(image: str | bytes, spec: ClipSpec, *, draft: bool = True) -> tuple[VideoMeta, Clip]:
    """An image (a path or its bytes) -> its meta and its one clip: frames (1, H, W, 3) uint8, scaled, cropped or
    padded as video frames are. `draft`: decode a JPEG at a reduced scale where that still covers its scaled size (what
    encode does). Raises ImageError with a one-line reason."""
    with _open(image) as im:
        display = _display_size(im)
        plan = spec.shapes.plan(*display)  # from the full size: a drafted decode keeps the image's bucket and valid box
        check_scale(plan, "image", ImageError)  # before decoding: a thin image's crop would scale it past swscale
        rgb = _decode(im, image_scaled_size(*display, spec) if draft else None)
    frame = resize_image(rgb, spec, plan)
    return VideoMeta(fps=None, num_frames=1, orig_size=display, decoder=DECODER, plan=plan), Clip(frame[None], [0], 0)
