"""Benchmark reaching a time range deep in a long video: a seek to the keyframe before it vs decoding from frame 0.

    python scripts/bench_ranges.py [--minutes 5] [--width 320] [--height 180] [--gop 2] [--at 0.9] [--repeats 5]
                                   [--videos DIR] [--tile 4]

Writes a long H.264 video with PyAV (a moving pattern, --fps 30, a keyframe every --gop seconds) to a temp dir, then
times, for a range starting at --at of its length (median of --repeats runs, one decoder thread):
- first frame: `iter_clips(span=...)` up to its first frame (1-frame clips), seeking (what encode does);
- the same range decoded from frame 0, frames before it dropped (the fallback for streams that cannot seek);
- a whole 2 s range of 17-frame clips at 128 px, seeking and from frame 0.
With --videos, the same first-frame times for a range at --at of each video there (real codecs, short videos), and
frames/s of CPU time (one thread, best of 2, 128 px) for ranges of --tile s tiling each video, one seek each, vs the
whole file (decord where it reads right; PyAV).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lfqtok.pipeline import video
from lfqtok.pipeline.video import ClipSpec, iter_clips

FPS = 30
FRAME = ClipSpec(size=128, clip_frames=1)  # one frame per clip: the first clip is the range's first frame
CLIPS = ClipSpec(size=128, clip_frames=17)


def write_long_video(path: Path, seconds: float, width: int, height: int, gop_seconds: float) -> Path:
    """`seconds` of a drifting gradient with a moving square, H.264 at FPS, a keyframe every `gop_seconds`."""
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = round(gop_seconds * FPS)
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(round(seconds * FPS)):
            image = np.empty((height, width, 3), np.uint8)
            image[..., 0] = (x + 4 * i) % 256
            image[..., 1] = (y + 2 * i) % 256
            image[..., 2] = (x + y) % 256
            top, left = (3 * i) % max(1, height - 32), (5 * i) % max(1, width - 32)
            image[top : top + 32, left : left + 32] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: the file in the page cache, the codec libraries loaded
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def first_frame(path: str, span: tuple[float, float], seek: bool = True) -> None:
    tries = video.SEEK_TRIES
    video.SEEK_TRIES = tries if seek else 0  # 0: the decode-from-frame-0 path every stream falls back to
    try:
        _, clips = iter_clips(path, FRAME, span=span, threads=1)
        next(clips)
        clips.close()
    finally:
        video.SEEK_TRIES = tries


def whole_range(path: str, span: tuple[float, float], seek: bool = True) -> int:
    tries = video.SEEK_TRIES
    video.SEEK_TRIES = tries if seek else 0
    try:
        _, clips = iter_clips(path, CLIPS, span=span, threads=1)
        return sum(1 for _ in clips)
    finally:
        video.SEEK_TRIES = tries


def cpu_rate(path: str, spans: list, decoder: str) -> float:
    """Frames/s of CPU time (best of 2) for clips of 17 at 128 px over `spans` (None: the whole video)."""
    best = 0.0
    for _ in range(2):
        started, frames = time.process_time(), 0
        for span in spans:
            try:
                _, clips = iter_clips(path, CLIPS, threads=1, decoder=decoder, span=span)
                frames += sum(len(clip.frames) for clip in clips)
            except video.RangeTooShort:
                continue  # the video's tail, shorter than one clip
        best = max(best, frames / max(time.process_time() - started, 1e-9))
    return best


def duration(path: str) -> float:
    with av.open(path) as container:
        stream = container.streams.video[0]
        if container.duration:
            return container.duration / av.time_base
        return sum(1 for _ in container.decode(stream)) / float(stream.average_rate or FPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--at", type=float, default=0.9, help="where the range starts, as a fraction of the length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--videos", type=Path, help="also time a range in each video of this folder")
    parser.add_argument("--tile", type=float, default=4.0, help="seconds per range when ranges tile each --videos video")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        seconds = args.minutes * 60
        started = time.perf_counter()
        path = str(write_long_video(Path(tmp) / "long.mp4", seconds, args.width, args.height, args.gop))
        print(f"video: {seconds:.0f} s, {args.width}x{args.height} at {FPS} fps, H.264, keyframe every {args.gop:g} s "
              f"({Path(path).stat().st_size / 2**20:.1f} MiB, written in {time.perf_counter() - started:.1f} s)")
        start = round(args.at * seconds, 3)
        span = (start, start + 2.0)
        seek = median_seconds(lambda: first_frame(path, span), args.repeats)
        zero = median_seconds(lambda: first_frame(path, span, seek=False), max(1, args.repeats // 2))
        print(f"range [{span[0]:g}, {span[1]:g}) s, first frame (median of {args.repeats}, 1 decoder thread):")
        print(f"  seek to the keyframe before it   {seek * 1000:9.1f} ms")
        print(f"  decode from frame 0 (fallback)   {zero * 1000:9.1f} ms   ({zero / seek:,.0f}x)")
        clips = whole_range(path, span)
        seek_all = median_seconds(lambda: whole_range(path, span), args.repeats)
        zero_all = median_seconds(lambda: whole_range(path, span, seek=False), max(1, args.repeats // 2))
        print(f"  the whole range ({clips} clips of 17 at 128 px): seek {seek_all * 1000:.1f} ms, from frame 0 {zero_all * 1000:.1f} ms")
    if args.videos:
        print(f"a 1 s range at {args.at:g} of each video in {args.videos}: first frame, seek / from frame 0 (median of {args.repeats}):")
        for path in sorted(p for p in args.videos.iterdir() if p.is_file() and p.suffix.lower() in {".mp4", ".webm", ".mkv", ".avi"}):
            start = round(args.at * duration(str(path)) - 1.0, 3)
            span = (max(0.0, start), max(0.0, start) + 1.0)
            seek = median_seconds(lambda: first_frame(str(path), span), args.repeats)
            zero = median_seconds(lambda: first_frame(str(path), span, seek=False), args.repeats)
            print(f"  {path.name:32s} at {span[0]:6.2f} s   {seek * 1000:7.1f} / {zero * 1000:7.1f} ms   ({zero / seek:4.1f}x)")
        print(f"frames/s of CPU time: {args.tile:g} s ranges tiling each video, one seek each / whole file, auto / whole file, pyav:")
        for path in sorted(p for p in args.videos.iterdir() if p.is_file() and p.suffix.lower() in {".mp4", ".webm", ".mkv", ".avi"}):
            seconds = duration(str(path))
            tiles = [(t, t + args.tile) for t in np.arange(0.0, seconds, args.tile)]
            rates = [cpu_rate(str(path), spans, decoder) for spans, decoder in ((tiles, "auto"), ([None], "auto"), ([None], "pyav"))]
            print(f"  {path.name:32s} {rates[0]:6.0f} / {rates[1]:6.0f} / {rates[2]:6.0f}   ({rates[0] / rates[1]:.2f}x auto)")


if __name__ == "__main__":
    main()
