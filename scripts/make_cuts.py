"""Build the shot-boundary test set from the shared videos: real hard cuts at known frames, and cut-free stretches.

    python scripts/make_cuts.py OUT [--shared ../shared]

Writes OUT/*.{mp4,webm,avi} and OUT/labels.json: for each test video its path, its frame count and the true
cuts (the index of every scene's first decoded frame but the first). Deterministic: the same files every run.

- cut videos: pieces of different sources (each piece checked free of cuts of its own) concatenated at known
  frames, re-encoded in three codecs and frame rates (H.264 25 fps, VP9 24 fps, MPEG-4 Part 2 30 fps), with
  scenes from 12 to 60 frames long;
- cut-free stretches that fool naive detectors, used as they are (fire, snow, test patterns, fast motion) or made
  from one shot (camera flashes, a dip to black and back).

The pieces avoid the shared videos' own cuts and glitches, found by looking at the frames around every place a
detector fired: big_buck_bunny_0_30 cuts at 283, 376 and 551 (35 is a tilt); arm_wrestling breaks into decode
garbage at 229-267. Eval videos are only measured here, never trained on. The videos are never committed.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# (source under SHARED/data/videos, first frame, frame count)
CUT_VIDEOS = {
    "cuts_h264_25.mp4": ("libx264", 25, (640, 360), [
        ("train/airplane.mp4", 0, 60), ("train/chaplin.mp4", 0, 50), ("train/pool.mp4", 0, 40),
        ("train/basketball.mp4", 0, 60), ("train/cockatoo.mp4", 140, 40), ("train/arm_wrestling.mp4", 0, 60),
        ("train/big_buck_bunny_0_30.webm", 300, 40), ("edge/smpte_1080p.mp4", 0, 20), ("train/ntu_room_1080p.avi", 0, 50),
        ("edge/test_pattern_1024x768.mp4", 0, 30), ("train/chaplin.mp4", 120, 40), ("train/airplane.mp4", 150, 12),
        ("train/pool.mp4", 200, 50),
    ]),
    "cuts_vp9_24.webm": ("libvpx-vp9", 24, (480, 270), [
        ("train/big_buck_bunny_0_30.webm", 60, 60), ("edge/low_fps_6.mp4", 0, 30), ("eval/nasa_13013.mp4", 0, 50),
        ("train/basketball.mp4", 150, 40), ("train/big_buck_bunny_0_30.webm", 400, 45), ("eval/room_1080p.mp4", 0, 40),
        ("train/cockatoo.mp4", 0, 30), ("eval/makeup_mpeg4.avi", 0, 40), ("train/big_buck_bunny_0_30.webm", 600, 30),
        ("train/arm_wrestling.mp4", 100, 16), ("eval/sintel_snow.mp4", 0, 40),
    ]),
    "cuts_mpeg4_30.avi": ("mpeg4", 30, (320, 240), [
        ("train/pool.mp4", 50, 45), ("train/airplane.mp4", 60, 40), ("eval/plant_realshort.mp4", 0, 30),
        ("train/chaplin.mp4", 180, 40), ("eval/fire.mp4", 0, 20), ("train/basketball.mp4", 220, 50),
        ("train/big_buck_bunny_0_30.webm", 200, 40), ("edge/av1.mkv", 0, 40), ("train/cockatoo.mp4", 200, 30),
        ("eval/nasa_13013.mp4", 100, 40), ("train/pool_part.mp4", 0, 30), ("train/arm_wrestling.mp4", 150, 40),
    ]),
}

# cut-free videos, as they are or a cut-free part re-encoded: fire, snow, test patterns, fast motion (camera whips,
# a bird's head, arm wrestling at 6 fps), a light switched on (nasa 13013 at 137)
AS_IS = ["eval/fire.mp4", "eval/sintel_snow.mp4", "edge/smpte_1080p.mp4", "edge/test_pattern_1024x768.mp4",
         "train/basketball.mp4", "train/cockatoo.mp4", "train/arm_wrestling.mp4:0:220", "train/pool.mp4",
         "train/big_buck_bunny_0_30.webm:380:170",
         "eval/nasa_13013.mp4:100:100", "edge/low_fps_6.mp4"]


def frames_of(path: Path, start: int, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Decoded frames start .. start+count-1 of `path`, RGB at `size` (one swscale conversion each)."""
    out = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start + count:
                break
            if i >= start:
                out.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA"))
    if len(out) != count:
        raise SystemExit(f"{path} has fewer than {start + count} frames")
    return out


def write(path: Path, frames: list[np.ndarray], codec: str, fps: int) -> None:
    """Encode `frames` in `codec` at `fps` (quality high enough that compression makes no cuts of its own)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20"} if codec == "libx264" else {"crf": "30", "b:v": "0"} if codec == "libvpx-vp9" else {}
        if codec == "mpeg4":
            stream.bit_rate = 2_000_000
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def flashed(frames: list[np.ndarray], at: list[int]) -> list[np.ndarray]:
    """Camera flashes: the frames at `at` blown out towards white (70%), the next one half as much."""
    out = [f.astype(np.float32) for f in frames]
    for i in at:
        for j, amount in ((i, 0.7), (i + 1, 0.35)):
            out[j] = out[j] * (1 - amount) + 255 * amount
    return [np.clip(f, 0, 255).astype(np.uint8) for f in out]


def dipped(frames: list[np.ndarray], start: int, length: int) -> list[np.ndarray]:
    """A dip to black and back inside one shot: fade out over `length` frames, fade in over the next `length`."""
    gains = np.ones(len(frames))
    ramp = np.linspace(1, 0, length + 1)[1:]
    gains[start:start + length] = ramp
    gains[start + length:start + 2 * length] = ramp[::-1]
    return [(f.astype(np.float32) * g).astype(np.uint8) for f, g in zip(frames, gains)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    args = ap.parse_args()
    videos = args.shared / "data" / "videos"
    args.out.mkdir(parents=True, exist_ok=True)
    labels = {}
    for name, (codec, fps, size, pieces) in CUT_VIDEOS.items():
        frames, cuts = [], []
        for source, start, count in pieces:
            if frames:
                cuts.append(len(frames))
            frames += frames_of(videos / source, start, count, size)
        write(args.out / name, frames, codec, fps)
        labels[name] = {"path": str(args.out / name), "frames": len(frames), "cuts": cuts, "kind": "cuts"}
    for entry in AS_IS:
        source, *span = entry.split(":")
        if span:  # a cut-free part of a video with cuts or glitches elsewhere: re-encoded alone
            frames = frames_of(videos / source, int(span[0]), int(span[1]), (640, 360))
            name = f"free_{Path(source).stem}_{span[0]}.mp4"
            write(args.out / name, frames, "libx264", 25)
            labels[name] = {"path": str(args.out / name), "frames": len(frames), "cuts": [], "kind": "cut-free"}
        else:
            with av.open(str(videos / source)) as container:
                count = sum(1 for _ in container.decode(video=0))
            labels[Path(source).name] = {"path": str(videos / source), "frames": count, "cuts": [], "kind": "cut-free"}
    shot = frames_of(videos / "train/airplane.mp4", 0, 200, (640, 360))
    write(args.out / "free_flashes.mp4", flashed(shot, [40, 90, 91, 150]), "libx264", 25)
    labels["free_flashes.mp4"] = {"path": str(args.out / "free_flashes.mp4"), "frames": 200, "cuts": [], "kind": "cut-free"}
    shot = frames_of(videos / "train/chaplin.mp4", 0, 160, (640, 360))
    write(args.out / "free_dip.mp4", dipped(shot, 50, 15), "libx264", 25)
    labels["free_dip.mp4"] = {"path": str(args.out / "free_dip.mp4"), "frames": 160, "cuts": [], "kind": "cut-free"}
    (args.out / "labels.json").write_text(json.dumps(labels, indent=1))
    print(f"{len(labels)} videos, {sum(len(v['cuts']) for v in labels.values())} cuts -> {args.out}")


if __name__ == "__main__":
    main()
