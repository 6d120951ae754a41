"""Synthetic test videos written with PyAV: deterministic moving patterns, any size, rate and codec.

Importable from any test (`from videos import make_video`): conftest.py puts this directory on sys.path.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` (H, W, 3) uint8: a gradient drifting right, a bright square moving down, a frame counter
    in the blue channel of the top-left 8x8 block (so tests can tell frames apart after a lossy codec)."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x * 255 // max(1, width - 1) + 8 * index) % 256
    frame[..., 1] = y * 255 // max(1, height - 1)
    frame[..., 2] = 64
    side = max(4, min(width, height) // 4)
    top = (3 * index) % max(1, height - side)
    left = (width - side) // 2
    frame[top : top + side, left : left + side] = 255
    frame[:8, :8] = (0, 0, (16 * index) % 256)
    return frame


def make_video(
    path: str | Path, frames: int, width: int, height: int, fps: float, codec: str = "libx264", pix_fmt: str = "yuv420p"
) -> Path:
    """Write `frames` frames of `pattern` to path (container from the extension); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18", "threads": "1"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
