"""Decode stage for one video: sampled, resized, center-cropped uint8 RGB clips, streamed window by window.

decord (resize at decode, read sequentially in small chunks) where it is known to read right, PyAV otherwise
and whenever decord fails, even mid-video (PyAV then goes on from the same frame). Memory does not depend on
the video's length or resolution: frames are scaled to short side `size` as they are decoded (swscale, whose
filters widen with the scale factor, so down-scaling is antialiased: decord's bilinear, PyAV's AREA), only the
frames a clip needs are kept, and each window is dropped once yielded.
"""

from __future__ import annotations

import io
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import av
import numpy as np

from .errors import UsageError, VideoError

try:  # decord has no wheels for some platforms; PyAV alone decodes everything, only slower
    import decord
except ImportError:  # pragma: no cover - depends on the platform
    decord = None

# codecs decord reads right when read sequentially (checked frame by frame against PyAV on the bundled test
# videos). Its own seeking mis-maps frames in HEVC with open GOPs, and it cannot open AV1, GIF or a WebM
# without duration, so it never seeks here and everything else goes to PyAV.
DECORD_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg"})
DECORD_MAX_FRAMES = 4096  # decord indexes the whole file at open (~3 KB a frame): longer videos go to PyAV
DECORD_CHUNK = 16  # frames per decord read: small, so a huge fps-subsampling step never holds many frames
MAX_BAD_PACKETS = 16  # corrupt packets skipped per video before it counts as undecodable
TIE_SECONDS = 1e-4  # timestamps this close to a target count as equally near
ALPHA_FORMATS = ("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya")  # composited over black
DECODERS = ("auto", "pyav", "decord")  # auto: decord where it reads right (DECORD_CODECS, short, unrotated), else PyAV

# config and results


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a video; part of the token manifest, so a resumed run must use the same."""

    size: int = 128  # short side scaled to size, then center crop size x size (multiple of 8)
    clip_frames: int = 17  # frames per clip, 1 + 4k (the tokenizer is causal with 4x temporal compression)
    clip_stride: int | None = None  # sampled frames between clip starts; None = clip_frames (no overlap)
    fps: float | None = None  # resample to this rate first (nearest frame to k / fps); None = native rate
    max_clips: int | None = None  # at most this many clips per video
    pad_short: bool = True  # video shorter than one clip: pad by repeating its last frame, else fail

    @property
    def stride(self) -> int:
        return self.clip_stride if self.clip_stride is not None else self.clip_frames


@dataclass
class Clip:
    """One clip: frames (T, S, S, 3) uint8 RGB and the source frame index of each (padding repeats the last)."""

    frames: np.ndarray
    frame_indices: list[int]
    padded: int  # number of padding frames at the end (0 unless the video is shorter than one clip)


@dataclass
class VideoMeta:
    """What the source video is: native rate, frame count when the container knows it, display size."""

    fps: float | None
    num_frames: int | None
    orig_size: tuple[int, int]  # (width, height) as displayed, after rotation
    decoder: str  # "decord" or "pyav" (the one that decoded the last frames)


def validate_spec(spec: ClipSpec) -> None:
    """Raise UsageError for a spec no video could satisfy; called once, before any work."""
    checks = [
        (spec.size >= 8 and spec.size % 8 == 0, f"--size must be a positive multiple of 8, got {spec.size}"),
        (spec.clip_frames >= 1 and (spec.clip_frames - 1) % 4 == 0, f"--clip-frames must be 1 + 4k (1, 5, 9, 17, ...), got {spec.clip_frames}"),
        (spec.clip_stride is None or spec.clip_stride >= 1, f"--clip-stride must be >= 1, got {spec.clip_stride}"),
        (spec.fps is None or spec.fps > 0, f"--fps must be > 0, got {spec.fps}"),
        (spec.max_clips is None or spec.max_clips >= 1, f"--max-clips must be >= 1, got {spec.max_clips}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


# helpers


class _Frame(NamedTuple):
    index: int  # position in the decoded stream
    time: float  # seconds since the first frame
    data: Any  # decoder-specific: a resized ndarray (decord) or an av.VideoFrame (PyAV)


@dataclass(frozen=True)
class _Probe:
    codec: str
    width: int  # coded size, before rotation
    height: int
    rotation: int  # counter-clockwise degrees, a multiple of 90
    fps: float | None
    num_frames: int | None
    approx_frames: int | None  # num_frames, or duration x fps where the container has no frame count


def _open(video: str | bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(video) if isinstance(video, bytes) else video, mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"cannot open video: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """One short line: FFmpeg's message without its errno prefix or the path (the failure row names the source)."""
    text = getattr(exc, "strerror", None) if isinstance(exc, av.FFmpegError) else None
    text = " ".join((text or str(exc)).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The stream ffmpeg calls best (also decord's choice), so both decoders read the same frames."""
    if not container.streams.video:
        raise VideoError("no video stream")
    return container.streams.best("video")


def _probe(video: str | bytes) -> _Probe:
    """Container facts and the first frame's rotation; decodes one frame, so an undecodable video fails here."""
    with _open(video) as container:
        stream = _stream(container)
        ctx = stream.codec_context
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode {ctx.name} video: {_reason(exc)}") from None
        if first is None:
            raise VideoError(f"no frames could be decoded from the {ctx.name} stream")
        rate = stream.average_rate or stream.guessed_rate
        duration = container.duration / av.time_base if container.duration else None
        approx = stream.frames or (round(duration * float(rate)) if duration and rate else None)
        return _Probe(
            codec=ctx.name,
            width=first.width,
            height=first.height,
            rotation=round(first.rotation / 90) % 4 * 90,
            fps=float(rate) if rate else None,
            num_frames=stream.frames or None,
            approx_frames=approx or None,
        )


def _scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the short side = size and the aspect ratio kept."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def _center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return frame[top : top + size, left : left + size]


# decoders: each is a sequential stream of _Frame plus a function turning one into a (S, S, 3) array


def _decord_frames(video: str | bytes, width: int, height: int, start: int, threads: int) -> Iterator[_Frame]:
    """Frames from `start` on, read in short contiguous chunks (decord never seeks: its seeks can mis-map)."""
    reader = decord.VideoReader(io.BytesIO(video) if isinstance(video, bytes) else video, width=width, height=height, num_threads=threads)
    total = len(reader)
    if total == 0:
        raise VideoError("decord reports no frames")
    times = _decord_times(reader, total)
    for lo in range(start, total, DECORD_CHUNK):
        hi = min(lo + DECORD_CHUNK, total)
        batch = reader.get_batch(list(range(lo, hi))).asnumpy()  # (n, h, w, 3)
        if batch.shape[1:] != (height, width, 3):
            raise VideoError(f"decord returned frames of shape {batch.shape[1:]}, expected {(height, width, 3)}")
        for i in range(lo, hi):
            yield _Frame(i, float(times[i]), batch[i - lo])


def _decord_times(reader: Any, total: int) -> np.ndarray:
    """Seconds since the first frame from decord's index (8 bytes a frame), or index / fps where those are
    missing or go backwards (decord reports no timestamps for AVI)."""
    times = reader.get_frame_timestamp(list(range(total)))[:, 0].astype(np.float64)
    if np.all(np.isfinite(times)) and times[0] > -1.0 and np.all(np.diff(times) >= 0):
        return times - times[0]
    return np.arange(total) / (reader.get_avg_fps() or 25.0)


def _pyav_frames(video: str | bytes, start: int, threads: int) -> Iterator[_Frame]:
    """Every decoded frame from `start` on (earlier ones are decoded and dropped); needs no duration or count.

    A corrupt packet is skipped, as the ffmpeg CLI does (the decoder conceals what it referenced), up to
    MAX_BAD_PACKETS per video.
    """
    with _open(video) as container:
        stream = _stream(container)
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        t0, last, index, bad = None, 0.0, -1, 0
        step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.04
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise VideoError(f"more than {MAX_BAD_PACKETS} corrupt packets (after frame {index})") from None
                    continue
                for frame in frames:
                    index += 1
                    t = frame.time if frame.time is not None else last + step
                    t0 = t if t0 is None else t0
                    last = max(t, last)  # guard against timestamps that go backwards
                    if index >= start:
                        yield _Frame(index, last - t0, frame)
        except av.FFmpegError as exc:
            raise VideoError(f"decode failed after frame {index}: {_reason(exc)}") from None


def _pyav_to_rgb(frame: av.VideoFrame, size: int | None, rotation: int, crop: bool = True) -> np.ndarray:
    """One PyAV frame -> (S, S, 3) uint8: scaled at conversion (AREA), rotated for display, alpha over black.

    `size` None: the frame at its native size, rotated, uncropped; `crop` False: short side S, uncropped."""
    display = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
    w, h = _scaled_size(*display, size) if size else display
    if rotation in (90, 270):
        w, h = h, w
    alpha = frame.format.has_palette or frame.format.name.startswith(ALPHA_FORMATS)
    rgb = frame.to_ndarray(width=w, height=h, format="rgba" if alpha else "rgb24", interpolation="AREA")
    if alpha:
        rgb = (rgb[..., :3].astype(np.uint16) * rgb[..., 3:] + 127) // 255
    rgb = np.rot90(rgb, k=rotation // 90) if rotation else rgb
    return np.ascontiguousarray(_center_crop(rgb, size) if size and crop else rgb, dtype=np.uint8)


class _Decoder:
    """A frame stream that starts on decord when it can and continues on PyAV if decord fails.

    Frames come out scaled to short side `size` and center-cropped (uncropped when `crop` is False), or at
    native size when `size` is None."""

    def __init__(self, video: str | bytes, probe: _Probe, size: int | None, threads: int, prefer: str, crop: bool = True):
        self.video, self.probe, self.size, self.threads, self.crop = video, probe, size, threads, crop
        short = probe.approx_frames is not None and probe.approx_frames <= DECORD_MAX_FRAMES  # memory: see constant
        readable = decord is not None and probe.codec in DECORD_CODECS and probe.rotation == 0 and short
        self.use_decord = (prefer == "decord" and decord is not None) or (prefer == "auto" and readable)
        self.name = "decord" if self.use_decord else "pyav"

    def frames(self) -> Iterator[_Frame]:
        next_index = 0
        if self.use_decord:
            native = (self.probe.width, self.probe.height)
            w, h = _scaled_size(*native, self.size) if self.size else native
            try:
                for frame in _decord_frames(self.video, w, h, 0, max(self.threads, 0)):
                    next_index = frame.index + 1
                    yield frame._replace(data=_center_crop(frame.data, self.size) if self.size and self.crop else frame.data)
                return
            except (decord.DECORDError, VideoError, RuntimeError, ValueError):
                self.name = "pyav"  # decord failed (open, a bad size, the end of a short stream): PyAV goes on
        yield from _pyav_frames(self.video, next_index, self.threads)

    def to_rgb(self, frame: _Frame) -> np.ndarray:
        if isinstance(frame.data, np.ndarray):
            return np.ascontiguousarray(frame.data)
        return _pyav_to_rgb(frame.data, self.size, self.probe.rotation, self.crop)


# sampling and windows


def _sample(frames: Iterator[_Frame], fps: float | None) -> Iterator[_Frame]:
    """The frames nearest to times k / fps (k = 0, 1, ...; a frame repeats when fps is above the native rate).

    Online, holding one frame: a frame is dropped as soon as the next one is nearer to every later target.
    Ties (within TIE_SECONDS, which absorbs float32 timestamps) go to the earlier frame.
    """
    if fps is None:
        yield from frames
        return
    k, prev = 0, None
    for frame in frames:
        while k / fps <= frame.time:
            target = k / fps
            yield prev if prev is not None and target - prev.time <= frame.time - target + TIE_SECONDS else frame
            k += 1
        prev = frame


def _windows(sampled: Iterator[_Frame], spec: ClipSpec, to_rgb: Callable[[_Frame], np.ndarray]) -> Iterator[Clip]:
    """Clips of clip_frames sampled frames, one every stride; converts only frames that some clip uses."""
    t, stride = spec.clip_frames, spec.stride
    buffer: deque[tuple[int, np.ndarray]] = deque()  # (source index, (S, S, 3)) from the next clip's start on
    clips = 0
    last: tuple[int, np.ndarray | None] = (-1, None)  # the last converted frame, reused when fps repeats it
    for position, frame in enumerate(sampled):
        if position < clips * stride:
            continue  # between clips (stride > clip_frames): never converted
        if frame.index != last[0]:
            last = (frame.index, to_rgb(frame))
        buffer.append(last)
        if len(buffer) == t:
            yield Clip(np.stack([f for _, f in buffer]), [i for i, _ in buffer], 0)  # (T, S, S, 3)
            clips += 1
            if spec.max_clips is not None and clips >= spec.max_clips:
                return
            for _ in range(min(stride, t)):  # keep only the overlap with the next clip
                buffer.popleft()
    if clips == 0 and buffer:
        if not spec.pad_short:
            raise VideoError(f"video has {len(buffer)} sampled frames, shorter than one clip of {t} (padding is off)")
        pad = t - len(buffer)
        window = list(buffer) + [buffer[-1]] * pad
        yield Clip(np.stack([f for _, f in window]), [i for i, _ in window], pad)


# still images (lfqtok/images.py): the scaling and crop every video frame gets, so an image is tokenized exactly
# as a 1-frame video of it would be


def image_scaled_size(width: int, height: int, spec: ClipSpec) -> tuple[int, int]:
    """(w, h) an image of width x height is scaled to before its crop: the least a JPEG may be decoded down to."""
    return _scaled_size(width, height, spec.size)


def resize_image(rgb: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """One still image (H, W, 3) uint8 RGB, upright -> the model input (S, S, 3) uint8, by the video frames' path:
    wrapped as a PyAV frame, scaled by swscale (AREA) to short side S, centre-cropped."""
    return _pyav_to_rgb(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24"), spec.size, 0)


def resolve_decoder(decoder: str | None = None) -> str:
    """The decoder to start with: `decoder`, else $LFQTOK_DECODER (the user's switch), else "auto"; UsageError if
    it is none of auto, pyav, decord. Encode resolves it once, in the driver, and hands it to every worker."""
    decoder = decoder or os.environ.get("LFQTOK_DECODER") or "auto"
    if decoder not in DECODERS:
        raise UsageError(f"decoder must be auto, pyav or decord (LFQTOK_DECODER), got {decoder!r}")
    return decoder


def iter_frames(
    video: str | bytes, *, size: int | None = None, threads: int = 0, decoder: str | None = None
) -> Iterator[np.ndarray]:
    """Every frame of a video (a path or its bytes), uint8 RGB (H, W, 3), rotated for display.

    `size`: short side scaled to it by the same decoder and scaler as `iter_clips` (so a center crop of these
    frames is exactly what `lfqtok encode --size` tokenizes), not cropped; None keeps the native size.
    Training reads whole videos (and still images, which FFmpeg opens as one-frame videos) with it.
    Raises VideoError with a one-line reason for a video that cannot be read.
    """
    probe = _probe(video)
    frames = _Decoder(video, probe, size, threads, resolve_decoder(decoder), crop=False)
    for frame in frames.frames():
        yield frames.to_rgb(frame)


def iter_clips(
    video: str | bytes, spec: ClipSpec, *, threads: int = 0, decoder: str | None = None
) -> tuple[VideoMeta, Iterator[Clip]]:
    """A video (a path or its bytes) -> its meta and a lazy iterator of clips (T, S, S, 3) uint8 RGB.

    Raises VideoError with a one-line reason for an unreadable, empty or unsupported video; the iterator may
    raise it too (a stream that breaks mid-way). `threads`: decoder threads, 0 lets the decoder choose.
    `decoder`: "auto" (decord where it reads right), "pyav", or "decord" (still falling back to PyAV on
    failure); None reads $LFQTOK_DECODER (default "auto"), the switch to force PyAV everywhere.
    """
    probe = _probe(video)
    decoder = _Decoder(video, probe, spec.size, threads, resolve_decoder(decoder))
    display = (probe.height, probe.width) if probe.rotation in (90, 270) else (probe.width, probe.height)
    meta = VideoMeta(fps=probe.fps, num_frames=probe.num_frames, orig_size=display, decoder=decoder.name)

    def clips() -> Iterator[Clip]:
        produced = 0
        for clip in _windows(_sample(decoder.frames(), spec.fps), spec, decoder.to_rgb):
            produced += 1
            meta.decoder = decoder.name
            yield clip
        meta.decoder = decoder.name
        if produced == 0:
            raise VideoError("no frames could be decoded")

    return meta, clips()
