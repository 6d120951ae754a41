"""Decode stage for one video: sampled, resized, cropped or padded uint8 RGB clips, streamed window by window.

decord (resize at decode, read sequentially in small chunks) where it is known to read right, PyAV otherwise
and whenever decord fails, even mid-video (PyAV then goes on from the same frame). Memory does not depend on
the video's length or resolution: frames are scaled as they are decoded (swscale, whose filters widen with the
scale factor, so down-scaling is antialiased: decord's bilinear, PyAV's AREA) to the size `shapes.layout` gives,
then cropped or padded by `shapes.place`; only the frames a clip needs are kept, and each window is dropped once
yielded. `frame_to_rgb` is the one PyAV frame -> RGB path (videos, and decoded images as one-frame videos).
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections import deque
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Callable, Iterator, NamedTuple

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..errors import UsageError, VideoError
from .scenes import SceneSpec, make_detector, thumbnail
from .shapes import Layout, Plan, Shapes, Size, check_scale, place, short_side

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
TIE_SECONDS = 1e-4  # timestamps this close to a target (or a range bound) count as equally near (on it)
SEEK_TRIES = 4  # seeks to a range, each further back (by 1, 2, 4 s), before it is decoded from frame 0
ALPHA_FORMATS = ("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya")  # composited over black
MAX_FPS = 1000  # --fps above this only repeats frames (no camera films faster); inf and nan are refused too
DECODERS = ("auto", "pyav", "decord")  # auto: decord where it reads right (DECORD_CODECS, short, unrotated), else PyAV

# config and results


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a video; part of the token manifest, so a resumed run must use the same."""

    size: Size = 128  # S: short side scaled to S, then center crop S x S; (H, W): see `resize` (multiples of 8)
    clip_frames: int = 17  # frames per clip, 1 + 4k (the tokenizer is causal with 4x temporal compression)
    clip_stride: int | None = None  # sampled frames between clip starts; None = clip_frames (no overlap)
    fps: float | None = None  # resample to this rate first (nearest frame to k / fps); None = native rate
    max_clips: int | None = None  # at most this many clips per video
    pad_short: bool = True  # video shorter than one clip: pad by repeating its last frame, else fail
    resize: str = "crop"  # crop | pad | fit onto the size (lfqtok/pipeline/shapes.py)
    buckets: tuple[tuple[int, int], ...] | None = None  # (H, W) shapes; each video goes to the nearest in aspect
    multiple: int = 8  # the tokenizer's spatial factor: every frame side is a multiple of it
    scenes: SceneSpec | None = None  # shot detection (--scenes): clips never cross a cut; None: one scene

    @property
    def stride(self) -> int:
        return self.clip_stride if self.clip_stride is not None else self.clip_frames

    @property
    def shapes(self) -> Shapes:
        return Shapes(self.size, self.resize, self.buckets, self.multiple)

    def settings(self) -> dict[str, Any]:
        """What the manifest records under "clip": the fields of `--size S` runs as always; the shape options only
        when used (so `--size S` manifests stay as they were)."""
        base = {"size": self.size, "clip_frames": self.clip_frames, "clip_stride": self.clip_stride, "fps": self.fps,
                "max_clips": self.max_clips, "pad_short": self.pad_short}
        if self.scenes is not None:
            base["scenes"] = self.scenes.settings()
        if self.shapes.legacy:
            return base
        shaped = {"size": self.size if isinstance(self.size, int) else list(self.size), "resize": self.resize,
                  "multiple": self.multiple}
        return {**base, **shaped, **({"buckets": [list(b) for b in self.buckets]} if self.buckets else {})}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "ClipSpec":
        """The spec a manifest's "clip" settings describe (unknown keys ignored)."""
        known = {k: v for k, v in settings.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("size"), list):
            known["size"] = tuple(known["size"])
        if known.get("buckets") is not None:
            known["buckets"] = tuple(tuple(b) for b in known["buckets"])
        known["scenes"] = SceneSpec.from_settings(known.get("scenes"))
        return cls(**known)


@dataclass
class Clip:
    """One clip: frames (T, H, W, 3) uint8 RGB and the source frame index of each (padding repeats the last)."""

    frames: np.ndarray
    frame_indices: list[int]
    padded: int  # number of padding frames at the end (0 unless the video is shorter than one clip)
    times: tuple[float, float] = (0.0, 0.0)  # presentation times (s) of its first and last source frame
    scene: int = 0  # index of the scene all its frames lie in (0 without scene detection)


@dataclass
class VideoMeta:
    """What the source video is: native rate, frame count when the container knows it, display size."""

    fps: float | None
    num_frames: int | None
    orig_size: tuple[int, int]  # (width, height) as displayed, after rotation
    decoder: str  # "decord" or "pyav" (the one that decoded the last frames)
    plan: Plan | None = None  # the video's frame shape, crop/pad box and bucket
    scenes: list[tuple[float, float]] | None = None  # with --scenes: [start, end) s of each scene of the decoded span


class RangeTooShort(VideoError):
    """A time range with fewer sampled frames than one clip: ranges are never padded, so it gives no sample (the
    run records it as skipped, not failed)."""


def validate_spec(spec: ClipSpec) -> None:
    """Raise UsageError for a spec no video could satisfy; called once, before any work."""
    spec.shapes.validate()
    checks = [
        (spec.clip_frames >= 1 and (spec.clip_frames - 1) % 4 == 0, f"--clip-frames must be 1 + 4k (1, 5, 9, 17, ...), got {spec.clip_frames}"),
        (spec.clip_stride is None or spec.clip_stride >= 1, f"--clip-stride must be >= 1, got {spec.clip_stride}"),
        (spec.fps is None or 0 < spec.fps <= MAX_FPS, f"--fps must be a number in (0, {MAX_FPS}], got {spec.fps}"),
        (spec.max_clips is None or spec.max_clips >= 1, f"--max-clips must be >= 1, got {spec.max_clips}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


# helpers


class Frame(NamedTuple):
    """One decoded frame as the decode stage passes it on: from the decoder, through scene and rate stages, to the
    clip planner."""

    index: int  # position in the decoded stream
    time: float  # seconds since the first frame
    data: Any  # decoder-specific: a resized ndarray (decord) or an av.VideoFrame (PyAV)
    scene: int = 0  # the scene it lies in, set by a scene stage between decoding and sampling (0 without one)


@dataclass(frozen=True)
class _Probe:
    codec: str
    width: int  # coded size, before rotation
    height: int
    rotation: int  # counter-clockwise degrees, a multiple of 90
    fps: float | None
    num_frames: int | None
    approx_frames: int | None  # num_frames, or duration x fps where the container has no frame count
    start: float | None = None  # the first frame's presentation time (s): where frame times count from
    time_base: Fraction | None = None  # the stream's tick (s): decord's float32 times are snapped to it


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
            start=first.time,
            time_base=stream.time_base,
        )


# decoders: each is a sequential stream of Frame plus a function turning one into an (H, W, 3) array


def _decord_frames(video: str | bytes, width: int, height: int, start: int, threads: int,
                   time_base: Fraction | None = None) -> Iterator[Frame]:
    """Frames from `start` on, read in short contiguous chunks (decord never seeks: its seeks can mis-map)."""
    reader = decord.VideoReader(io.BytesIO(video) if isinstance(video, bytes) else video, width=width, height=height, num_threads=threads)
    total = len(reader)
    if total == 0:
        raise VideoError("decord reports no frames")
    times = _decord_times(reader, total, time_base)
    for lo in range(start, total, DECORD_CHUNK):
        hi = min(lo + DECORD_CHUNK, total)
        batch = reader.get_batch(list(range(lo, hi))).asnumpy()  # (n, h, w, 3)
        if batch.shape[1:] != (height, width, 3):
            raise VideoError(f"decord returned frames of shape {batch.shape[1:]}, expected {(height, width, 3)}")
        for i in range(lo, hi):
            yield Frame(i, float(times[i]), batch[i - lo])


def _decord_times(reader: Any, total: int, time_base: Fraction | None = None) -> np.ndarray:
    """Seconds since the first frame from decord's index (8 bytes a frame), or index / fps where those are
    missing or go backwards (decord reports no timestamps for AVI). decord keeps them as float32 (a microsecond off
    after a minute): each is snapped to the stream's `time_base` tick while float32 is finer than half a tick there,
    computed as PyAV computes its frame times, so both decoders record the same times."""
    stamps = reader.get_frame_timestamp(list(range(total)))[:, 0]
    times = stamps.astype(np.float64)
    if not (np.all(np.isfinite(times)) and times[0] > -1.0 and np.all(np.diff(times) >= 0)):
        stamps = times = np.arange(total) / (reader.get_avg_fps() or 25.0)
    if time_base:
        ticks = np.round(times / float(time_base))
        exact = np.spacing(np.abs(stamps)) < float(time_base)  # off by at most half the spacing: the nearest tick is right
        times = np.where(exact, ticks * time_base.numerator / time_base.denominator, times)
    return times - times[0]


def _threaded(container: av.container.InputContainer, threads: int) -> av.video.stream.VideoStream:
    """The video stream (`_stream`), set to decode with `threads` threads (0: the decoder chooses)."""
    stream = _stream(container)
    stream.thread_type = "AUTO"
    stream.thread_count = threads
    return stream


def _decoded(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """The stream's frames from the container's position on. A corrupt packet is skipped, as the ffmpeg CLI does
    (the decoder conceals what it referenced), up to MAX_BAD_PACKETS per video."""
    index, bad = -1, 0
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
                yield frame
    except av.FFmpegError as exc:
        raise VideoError(f"decode failed after frame {index}: {_reason(exc)}") from None


def _pyav_frames(video: str | bytes, start: int, threads: int) -> Iterator[Frame]:
    """Every decoded frame from `start` on (earlier ones are decoded and dropped); needs no duration or count."""
    with _open(video) as container:
        stream = _threaded(container, threads)
        t0, last = None, 0.0
        step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.04
        for index, frame in enumerate(_decoded(container, stream)):
            t = frame.time if frame.time is not None else last + step
            t0 = t if t0 is None else t0
            last = max(t, last)  # guard against timestamps that go backwards
            if index >= start:
                yield Frame(index, last - t0, frame)


def _seek_frames(video: str | bytes, origin: float, start: float, threads: int) -> Iterator[Frame]:
    """The frames from the last keyframe at or before `start` s on, reached by seeking (PyAV; decord's seeks can
    mis-map). Times count from `origin`, the first frame's time (`_Probe.start`); indices are -1 (`_in_span`
    numbers a range's frames).

    The first frame is decoded before the seek: some streams carry parameter sets in band at their start, which
    a decoder that began at the seek point would lack. Frames the decoder puts out before that keyframe (leading
    pictures of an open GOP, which reference frames before the seek point) are dropped. A keyframe or leading
    picture after `start`, or no frame at all, means a seek further back: demuxers seek by decode time, which runs
    ahead of presentation with B-frames, and MPEG-TS seeks to the next keyframe. A container that cannot seek,
    frames without timestamps, a keyframe the decoder marks corrupt, or no keyframe at or before `start` in
    SEEK_TRIES seeks: decoded from frame 0 instead, which gives the same frames, only later."""
    with _open(video) as container:
        stream = _threaded(container, threads)
        limit = origin + start + TIE_SECONDS
        target = origin + start
        primed = next(_decoded(container, stream), None) is not None
        for attempt in range(SEEK_TRIES if stream.time_base and primed else 0):
            try:
                container.seek(math.floor(target / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                break
            frames = _decoded(container, stream)
            key = next((f for f in frames if f.time is None or f.key_frame or f.time > limit), None)
            if key is not None and (key.time is None or key.is_corrupt):
                break
            if key is None or key.time > limit:
                if target <= origin:
                    break  # this seek was to the first frame already
                target = max(origin, min(target, key.time if key is not None else target) - 2.0**attempt)
                continue
            last, step = key.time, 1.0 / float(stream.average_rate) if stream.average_rate else 0.04
            for frame in itertools.chain([key], frames):  # times as `_pyav_frames` gives them
                last = max(frame.time if frame.time is not None else last + step, last)
                yield Frame(-1, last - origin, frame)
            return
    yield from _pyav_frames(video, 0, threads)


def _in_span(frames: Iterator[Frame], span: tuple[float, float]) -> Iterator[Frame]:
    """The frames whose time falls in [start, end) (a time within TIE_SECONDS of a bound is on it), numbered from
    0 at the first of them; stops reading at the first frame at or past `end`."""
    start, end = span
    index = 0
    for frame in frames:
        if frame.time >= end - TIE_SECONDS:
            return
        if frame.time >= start - TIE_SECONDS:
            yield frame._replace(index=index)
            index += 1


LayoutFn = Callable[[int, int], Layout]  # displayed (width, height) -> where the frame goes


class _Scaled(NamedTuple):
    """A frame scaled for display but not yet cropped or padded: what decord hands over, and what the scene stage
    turns a PyAV frame into (its thumbnail is made from this, and the clip frame placed from it)."""

    rgb: np.ndarray  # (h, w, 3) uint8 at the layout's scaled size (or native size without a layout)
    layout: Layout | None


def frame_to_rgb(
    frame: av.VideoFrame, place_frame: Plan | LayoutFn | None, rotation: int = 0, reformatter: VideoReformatter | None = None
) -> np.ndarray:
    """One PyAV frame -> (H, W, 3) uint8: scaled by swscale at conversion (`reformat(width, height,
    interpolation="AREA")` to the layout's scaled size), rotated for display (`rotation` counter-clockwise
    degrees), alpha composited over black, then cropped / padded (`shapes.place`). `place_frame`: a video's Plan,
    a function of the displayed (width, height), or None for the frame at its native size. `reformatter`: one
    kept over a video's frames keeps its swscale context (a frame's own builds one per call: 2x the cost of a
    small frame's conversion); the same pixels either way."""
    return _placed(_scale(frame, place_frame, rotation, reformatter))


def _scale(frame: av.VideoFrame, place_frame: Plan | LayoutFn | None, rotation: int, reformatter: VideoReformatter | None) -> _Scaled:
    """`frame_to_rgb` up to its crop or pad."""
    display = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
    lay = place_frame.for_frame(*display) if isinstance(place_frame, Plan) else place_frame(*display) if place_frame else None
    h, w = lay.scaled if lay else (display[1], display[0])
    if rotation in (90, 270):
        w, h = h, w
    alpha = frame.format.has_palette or frame.format.name.startswith(ALPHA_FORMATS)
    scaled = (reformatter or VideoReformatter()).reformat(frame, width=w, height=h, format="rgba" if alpha else "rgb24", interpolation="AREA")
    rgb = scaled.to_ndarray()
    if alpha:
        rgb = ((rgb[..., :3].astype(np.uint16) * rgb[..., 3:] + 127) // 255).astype(np.uint8)  # uint8, as every frame
    return _Scaled(np.rot90(rgb, k=rotation // 90) if rotation else rgb, lay)


def _placed(scaled: _Scaled) -> np.ndarray:
    return place(scaled.rgb, scaled.layout) if scaled.layout else np.ascontiguousarray(scaled.rgb, dtype=np.uint8)


class _Decoder:
    """A frame stream that starts on decord when it can and continues on PyAV if decord fails; a time range
    (`span`) is PyAV's alone, reached by seeking (`_seek_frames`) and cut to its frames (`_in_span`).

    Frames come out placed by `layout_of` (displayed (width, height) -> Layout), or at native size when None."""

    def __init__(
        self, video: str | bytes, probe: _Probe, layout_of: LayoutFn | None, threads: int, prefer: str,
        span: tuple[float, float] | None = None,
    ):
        self.video, self.probe, self.layout_of, self.threads, self.span = video, probe, layout_of, threads, span
        short = probe.approx_frames is not None and probe.approx_frames <= DECORD_MAX_FRAMES  # memory: see constant
        readable = decord is not None and probe.codec in DECORD_CODECS and probe.rotation == 0 and short
        self.use_decord = span is None and ((prefer == "decord" and decord is not None) or (prefer == "auto" and readable))
        self.name = "decord" if self.use_decord else "pyav"
        self.reformatter = VideoReformatter()  # PyAV frames' scaler, kept over the video (`frame_to_rgb`)

    def frames(self) -> Iterator[Frame]:
        if self.span is not None:
            start = self.span[0]
            seekable = start > 0 and self.probe.start is not None
            frames = _seek_frames(self.video, self.probe.start, start, self.threads) if seekable else _pyav_frames(self.video, 0, self.threads)
            yield from _in_span(frames, self.span)
            return
        next_index = 0
        if self.use_decord:
            lay = self.layout_of(self.probe.width, self.probe.height) if self.layout_of else None  # unrotated only
            h, w = lay.scaled if lay else (self.probe.height, self.probe.width)
            try:
                for frame in _decord_frames(self.video, w, h, 0, max(self.threads, 0), self.probe.time_base):
                    next_index = frame.index + 1
                    yield frame._replace(data=_Scaled(frame.data, lay))
                return
            except (decord.DECORDError, VideoError, RuntimeError, ValueError):
                self.name = "pyav"  # decord failed (open, a bad size, the end of a short stream): PyAV goes on
        yield from _pyav_frames(self.video, next_index, self.threads)

    def scaled(self, frame: Frame) -> _Scaled:
        """The frame scaled for display, before its crop or pad."""
        if isinstance(frame.data, _Scaled):
            return frame.data
        return _scale(frame.data, self.layout_of, self.probe.rotation, self.reformatter)

    def to_rgb(self, frame: Frame) -> np.ndarray:
        if isinstance(frame.data, _Scaled):
            return _placed(frame.data)
        return frame_to_rgb(frame.data, self.layout_of, self.probe.rotation, self.reformatter)


class _SceneStage:
    """The decode stage between the decoder and `_sample`: every decoded frame's thumbnail (`scenes.thumbnail` of
    the scaled frame, whichever decoder made it) goes to a streaming detector, and frames come out with their
    scene index once the detector can no longer put a cut before them (at most `lookahead` frames late; `on`
    only while a change awaits its verdict).

    Holds only the frames of the look-ahead (scaled, so PyAV frames are converted once: clips reuse the
    conversion) and the scene boundaries it has passed on (`scenes`, [start, end) s)."""

    def __init__(self, spec: SceneSpec, decoder: _Decoder):
        self.detector = make_detector(spec)
        self.decoder = decoder
        self.scenes: list[tuple[float, float]] = []
        self._cuts: deque[int] = deque()  # cuts reported, not yet reached by the frames passed on
        self._scene, self._start, self._last = 0, None, None  # current scene, its start time, last frame passed on
        self._step = 0.0  # the last interval between decoded frames (the last scene ends one frame after its last)
        self._reformatter = VideoReformatter()  # the thumbnails' scaler, kept over the video

    def run(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        held: deque[Frame] = deque()
        previous = None
        for frame in frames:
            scaled = self.decoder.scaled(frame)
            if previous is not None:
                self._step = max(frame.time - previous, 0.0)
            previous = frame.time
            held.append(frame._replace(data=scaled))
            self._cuts.extend(self.detector.push(thumbnail(scaled.rgb, self._reformatter)))
            while len(held) > self.detector.unsettled:
                yield self._pass(held.popleft())
        self._cuts.extend(self.detector.finish())
        while held:
            yield self._pass(held.popleft())

    def finish(self) -> list[tuple[float, float]]:
        """The scenes of the frames passed on, the last one closed one frame interval after its last frame."""
        if self._last is not None:
            self.scenes.append((self._start, self._last.time + self._step))
            self._last = None
        return self.scenes

    def _pass(self, frame: Frame) -> Frame:
        if self._start is None:
            self._start = frame.time
        while self._cuts and self._cuts[0] <= frame.index:
            self._cuts.popleft()
            self.scenes.append((self._start, frame.time))
            self._scene, self._start = self._scene + 1, frame.time
        self._last = frame
        return frame._replace(scene=self._scene)


# sampling and windows


def _sample(frames: Iterator[Frame], fps: float | None, origin: float = 0.0) -> Iterator[Frame]:
    """The frames nearest to times origin + k / fps (k = 0, 1, ...; a frame repeats when fps is above the native
    rate; origin: a range's start).

    Online, holding one frame: a frame is dropped as soon as the next one is nearer to every later target.
    Ties (within TIE_SECONDS, which absorbs float32 timestamps) go to the earlier frame.
    """
    if fps is None:
        yield from frames
        return
    k, prev = 0, None
    for frame in frames:
        while origin + k / fps <= frame.time:
            target = origin + k / fps
            yield prev if prev is not None and target - prev.time <= frame.time - target + TIE_SECONDS else frame
            k += 1
        prev = frame


class _Window(NamedTuple):
    index: int  # source frame index
    time: float  # its presentation time, s
    rgb: np.ndarray  # (H, W, 3)


def plan_clips(sampled: Iterator[Frame], spec: ClipSpec, to_rgb: Callable[[Frame], np.ndarray]) -> Iterator[Clip]:
    """The clip planner: clips of clip_frames sampled frames, one every stride, never over two scenes.

    Each scene (`Frame.scene`; one scene without detection) starts its clips at its first sampled frame; what is
    left of a scene after its last whole clip is dropped, and `--max-clips` counts clips over the whole video.
    Only a video of one scene shorter than one clip is padded (repeating its last frame). Converts only frames
    that some clip uses."""
    t, stride = spec.clip_frames, spec.stride
    buffer: deque[_Window] = deque()  # from the next clip's start on, within the current scene
    clips = 0
    scene, scenes, position = None, 0, 0  # the current scene, scenes seen, its sampled frames so far
    scene_clips = 0  # clips of the current scene
    last: _Window | None = None  # the last converted frame, reused when fps repeats it
    for frame in sampled:
        if frame.scene != scene:
            scene, scenes, position, scene_clips = frame.scene, scenes + 1, 0, 0
            buffer.clear()
        position += 1
        if position - 1 < scene_clips * stride:
            continue  # between clips (stride > clip_frames): never converted
        if last is None or frame.index != last.index:
            last = _Window(frame.index, frame.time, to_rgb(frame))
        buffer.append(last)
        if len(buffer) == t:
            yield Clip(np.stack([w.rgb for w in buffer]), [w.index for w in buffer], 0, (buffer[0].time, buffer[-1].time), scene)  # (T, H, W, 3)
            clips += 1
            scene_clips += 1
            if spec.max_clips is not None and clips >= spec.max_clips:
                return
            for _ in range(min(stride, t)):  # keep only the overlap with the next clip
                buffer.popleft()
    if clips == 0 and scenes == 1 and buffer:
        if not spec.pad_short:
            raise VideoError(f"video has {len(buffer)} sampled frames, shorter than one clip of {t} (padding is off)")
        pad = t - len(buffer)
        window = list(buffer) + [buffer[-1]] * pad
        yield Clip(np.stack([w.rgb for w in window]), [w.index for w in window], pad, (window[0].time, window[-1].time), scene)


# still images (decoded elsewhere): the scaling, crop and pad every video frame gets, so an image is tokenized
# exactly as a 1-frame video of it would be


def image_scaled_size(width: int, height: int, spec: ClipSpec) -> tuple[int, int]:
    """(w, h) an image of width x height is scaled to before its crop or pad: the least it may be decoded down to."""
    h, w = spec.shapes.plan(width, height).layout.scaled
    return w, h


def resize_image(rgb: np.ndarray, spec: ClipSpec, plan: Plan | None = None) -> np.ndarray:
    """One still image (H, W, 3) uint8 RGB, upright -> the model input (H', W', 3) uint8 by the video frames' path
    (`frame_to_rgb` with the image's plan, which also gives its frame size, valid box and bucket). `plan`: made
    from the image's full size when it was decoded smaller (JPEG draft); by default, from `rgb`'s size."""
    height, width = rgb.shape[:2]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
    return frame_to_rgb(frame, plan or spec.shapes.plan(width, height))


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
    frames = _Decoder(video, probe, (lambda w, h: short_side(w, h, size)) if size else None, threads, resolve_decoder(decoder))
    for frame in frames.frames():
        yield frames.to_rgb(frame)


def check_span(span: tuple[float, float]) -> tuple[float, float]:
    """A time range as (start, end) floats, or VideoError (that item's failure) for one no video could have:
    finite, 0 <= start < end (an end past the video's end is cut there)."""
    try:
        start, end = (float(t) for t in span)
    except (TypeError, ValueError):
        raise VideoError(f"time range {span!r} is not a pair of numbers") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise VideoError(f"time range [{start:g}, {end:g}) s is empty or out of bounds (needs finite 0 <= start < end)")
    return start, end


def _span_text(span: tuple[float, float]) -> str:
    return f"[{span[0]:.3f}, {span[1]:.3f}) s"


def iter_clips(
    video: str | bytes, spec: ClipSpec, *, threads: int = 0, decoder: str | None = None, span: tuple[float, float] | None = None
) -> tuple[VideoMeta, Iterator[Clip]]:
    """A video (a path or its bytes) -> its meta and a lazy iterator of clips (T, H, W, 3) uint8 RGB.

    The frame shape is `spec.shapes.plan` of the first frame's displayed size (`meta.plan`: size, box, bucket).

    Raises VideoError with a one-line reason for an unreadable, empty or unsupported video; the iterator may
    raise it too (a stream that breaks mid-way). `threads`: decoder threads, 0 lets the decoder choose.
    `decoder`: "auto" (decord where it reads right), "pyav", or "decord" (still falling back to PyAV on
    failure); None reads $LFQTOK_DECODER (default "auto"), the switch to force PyAV everywhere.

    `span` (start, end): clips only over the frames whose times fall in [start, end), in seconds from the first
    frame's presentation time (an end past the video's end: up to its end). Decoded by PyAV from the keyframe
    before start (a seek, not a decode from frame 0); `--fps` targets are start + k / fps; `frame_indices` count
    from the range's first frame (0). A range is never padded: fewer sampled frames than one clip raise
    RangeTooShort, before any clip.
    """
    span = check_span(span) if span is not None else None
    probe = _probe(video)
    display = (probe.height, probe.width) if probe.rotation in (90, 270) else (probe.width, probe.height)
    plan = spec.shapes.plan(*display)
    check_scale(plan, "video", VideoError)
    decoder = _Decoder(video, probe, plan.for_frame, threads, resolve_decoder(decoder), span)
    meta = VideoMeta(fps=probe.fps, num_frames=probe.num_frames, orig_size=display, decoder=decoder.name, plan=plan)
    stage = _SceneStage(spec.scenes, decoder) if spec.scenes is not None else None

    def clips() -> Iterator[Clip]:
        produced, sampled = 0, 0

        def counted(frames: Iterator[Frame]) -> Iterator[Frame]:
            nonlocal sampled
            for frame in frames:
                sampled += 1
                yield frame

        decoded = stage.run(decoder.frames()) if stage else decoder.frames()  # scenes: inside the range, if any
        frames = counted(_sample(decoded, spec.fps, span[0] if span else 0.0))
        for clip in plan_clips(frames, replace(spec, pad_short=True) if span else spec, decoder.to_rgb):
            if span is not None and clip.padded:
                raise RangeTooShort(f"range {_span_text(span)} has {sampled} sampled frames, fewer than one clip of {spec.clip_frames}")
            produced += 1
            meta.decoder = decoder.name
            yield clip
        meta.decoder = decoder.name
        if stage:
            meta.scenes = stage.finish()
        if produced == 0 and span is not None:
            raise RangeTooShort(
                f"no frame of the video falls in the range {_span_text(span)}" if sampled == 0 else
                f"range {_span_text(span)} has {sampled} sampled frames, no scene of them as long as one clip of {spec.clip_frames}"
            )
        if produced == 0 and stage and len(meta.scenes) > 1:
            raise VideoError(f"each of its {len(meta.scenes)} scenes is shorter than one clip of {spec.clip_frames} frames")
        if produced == 0:
            raise VideoError("no frames could be decoded")

    return meta, clips()
