"""Write the sample videos for the README's first command: `python scripts/make_samples.py samples/`.

Six short rendered videos (moving gradients, bouncing shapes, a plasma, no text) in different sizes, rates,
codecs and containers, one of them shorter than a 17-frame clip. Deterministic: the same bytes on every run
(single-threaded encoders, no timestamps of the run in the files). Takes a couple of seconds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

# scenes: (frame index, width, height) -> (H, W, 3) uint8


def gradient(i: int, w: int, h: int) -> np.ndarray:
    """Diagonal colour bands drifting to the right."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (x + 0.5 * y) / w * 2 * np.pi - i * 0.15
    rgb = [np.sin(phase + k * 2.1) for k in range(3)]
    return ((np.stack(rgb, -1) * 0.5 + 0.5) * 255).astype(np.uint8)


def bouncing(i: int, w: int, h: int) -> np.ndarray:
    """Two discs bouncing off the walls of a dark room with a soft floor gradient."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frame = np.zeros((h, w, 3), np.float32)
    frame[..., 2] = 40 + 60 * y / h
    for speed, radius, colour in (((3.1, 2.3), h / 8, (250, 180, 40)), ((-2.2, 3.7), h / 10, (60, 200, 240))):
        cx, cy = (_bounce(w / 2 + speed[0] * i, radius, w), _bounce(h / 3 + speed[1] * i, radius, h))
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
        frame[inside] = colour
    return frame.astype(np.uint8)


def plasma(i: int, w: int, h: int) -> np.ndarray:
    """A smooth plasma of interfering waves: hard for a tokenizer, easy to render."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h) * 8
    t = i * 0.12
    v = np.sin(x + t) + np.sin(y * 1.3 - t) + np.sin((x + y) * 0.7 + t * 1.7) + np.sin(np.hypot(x - 4, y - 4) * 1.5 - t)
    rgb = [np.sin(v * np.pi / 2 + k * 2.0) for k in range(3)]
    return ((np.stack(rgb, -1) * 0.5 + 0.5) * 255).astype(np.uint8)


def checker(i: int, w: int, h: int) -> np.ndarray:
    """A rotating checkerboard: sharp edges and fast motion."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = i * 0.08
    u, v = (x - w / 2) * np.cos(a) - (y - h / 2) * np.sin(a), (x - w / 2) * np.sin(a) + (y - h / 2) * np.cos(a)
    on = (np.floor(u / 16) + np.floor(v / 16)) % 2 == 0
    frame = np.where(on[..., None], np.array([230, 230, 220], np.uint8), np.array([30, 60, 120], np.uint8))
    return frame.astype(np.uint8)


def _bounce(position: float, radius: float, extent: float) -> float:
    span = extent - 2 * radius
    p = position - radius
    p = p % (2 * span)
    return radius + (p if p <= span else 2 * span - p)


@dataclass(frozen=True)
class Sample:
    name: str
    scene: Callable[[int, int, int], np.ndarray]
    width: int
    height: int
    fps: float
    frames: int
    codec: str
    pix_fmt: str = "yuv420p"


SAMPLES = [
    Sample("gradient_640x360_24fps.mp4", gradient, 640, 360, 24, 72, "libx264"),
    Sample("bouncing_320x240_30fps.mp4", bouncing, 320, 240, 30, 90, "libx264"),
    Sample("plasma_portrait_240x320_25fps.webm", plasma, 240, 320, 25, 50, "libvpx-vp9"),
    Sample("checker_256x256_15fps.mkv", checker, 256, 256, 15, 45, "mpeg4"),
    Sample("bouncing_200x150_10fps.gif", bouncing, 200, 150, 10, 30, "gif", "rgb8"),
    Sample("gradient_short_128x96_12fps.mp4", gradient, 128, 96, 12, 10, "libx264"),  # shorter than one clip
]
ENCODER_OPTIONS = {
    "libx264": {"preset": "veryfast", "crf": "20", "threads": "1"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0", "threads": "1"},
    "mpeg4": {"qscale": "4", "threads": "1"},
    "gif": {},
}


def write_sample(sample: Sample, out: Path) -> Path:
    """Render and encode one sample into out/name."""
    path = out / sample.name
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(sample.codec, rate=Fraction(sample.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = sample.width, sample.height, sample.pix_fmt
        stream.options = ENCODER_OPTIONS[sample.codec]
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for i in range(sample.frames):
            frame = av.VideoFrame.from_ndarray(sample.scene(i, sample.width, sample.height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the samples into (created if missing)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for sample in SAMPLES:
        path = write_sample(sample, args.out)
        print(f"{path}  {sample.width}x{sample.height} {sample.fps:g} fps {sample.frames} frames {sample.codec}")


if __name__ == "__main__":
    main()
