"""How a tokenizer bends colour: per 8x8 block, reconstructed Cb and Cr regressed on the source's.

`python scripts/chroma_probe.py [--model default|PATH ...] [--data ../shared/data/videos/eval] [--size 128]`

A slope of 1 keeps colour; below 1 it is washed towards grey (the share of the source's block-to-block colour
variation that survives); the offset is a cast. Also the mean Cb, Cr of green blocks (both below -5: foliage)
in the source and the reconstruction, where a sign change is a hue error a viewer sees. Clips are the eval
script's (`load_clips`: cut as `lfqtok encode` cuts them, the first --max-clips 17-frame clips of each video).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from eval_tokenizer import VIDEO_EXTS, default_data, load_clips  # noqa: E402
from lfqtok.inspect.metrics import RGB_TO_YCBCR  # noqa: E402
from lfqtok.tokenizers.model import load_tokenizer  # noqa: E402

app = typer.Typer(add_completion=False)


def block_ycbcr(frames: np.ndarray, block: int = 8) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (N, 3) YCbCr means of its block x block squares (Cb, Cr centred on 0)."""
    t, h, w, _ = frames.shape
    means = frames.reshape(t, h // block, block, w // block, block, 3).mean(axis=(2, 4), dtype=np.float64)
    return means.reshape(-1, 3) @ RGB_TO_YCBCR.T


@app.command()
def main(
    model: Annotated[list[str], typer.Option(help="'default' or a tokenizer .safetensors; repeat to compare")] = ["default"],
    data: Annotated[Optional[Path], typer.Option(help="directory of held-out videos [default: ../shared/data/videos/eval]")] = None,
    size: Annotated[int, typer.Option(help="short side and crop")] = 128,
    max_clips: Annotated[int, typer.Option(help="clips per video at most")] = 4,
) -> None:
    torch.set_num_threads(2)
    videos = sorted(p for p in (data or default_data()).rglob("*") if p.suffix.lower() in VIDEO_EXTS)
    for name in model:
        tok = load_tokenizer(name, "cpu")
        src, rec = [], []
        for video in videos:
            clips = load_clips(video, size, 17, max_clips)  # the eval script's clips: what encode would cut
            src.append(block_ycbcr(clips.reshape(-1, *clips.shape[2:])))
            decoded = tok.decode(tok.encode(torch.from_numpy(clips))).numpy()
            rec.append(block_ycbcr(decoded.reshape(-1, *decoded.shape[2:])))
        s, r = np.concatenate(src), np.concatenate(rec)
        green = (s[:, 1] < -5) & (s[:, 2] < -5)
        print(f"{name}: {len(s):,} blocks of {len(videos)} videos")
        for i, channel in ((1, "Cb"), (2, "Cr")):
            slope, offset = np.polyfit(s[:, i], r[:, i], 1)
            rmse = float(np.sqrt(np.mean((s[:, i] - r[:, i]) ** 2)))
            print(f"  {channel}: slope {slope:.2f}, offset {offset:+.2f}, rmse {rmse:.2f} (source std {s[:, i].std():.2f})")
        print(f"  green blocks ({int(green.sum())}): Cb, Cr source {s[green, 1].mean():+.1f}, {s[green, 2].mean():+.1f} "
              f"-> reconstruction {r[green, 1].mean():+.1f}, {r[green, 2].mean():+.1f}")


if __name__ == "__main__":
    app()
