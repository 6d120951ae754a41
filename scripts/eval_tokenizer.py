"""Reconstruction quality of a tokenizer: PSNR, SSIM and code utilization on held-out videos, vs a naive baseline.

`python scripts/eval_tokenizer.py [--model default|PATH] [--data ../shared/data/videos/eval] [--json]`

Clips: short side scaled to --size (antialiased), center crop, the first --max-clips non-overlapping runs of
--clip-frames consecutive frames. The loader is this script's own (decord), independent of `lfqtok.video`, so
the numbers do not move when the encode pipeline changes. Naive baseline on the same clips: keep every 4th
frame at 1/8 size (area), upsample bilinearly in space and linearly in time: the same 4x8x8 reduction, no model.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import torch.nn.functional as F
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lfqtok.errors import LfqtokError  # noqa: E402
from lfqtok.model import load_tokenizer  # noqa: E402

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".gif"}
SHARED = Path(os.environ.get("LFQTOK_SHARED") or Path(__file__).resolve().parents[2] / "shared")  # beside the checkout
app = typer.Typer(add_completion=False)

# clips


def load_clips(path: Path, size: int, clip_frames: int, max_clips: int) -> torch.Tensor:
    """uint8 (N, T, size, size, 3): the first `max_clips` non-overlapping clips, short side -> size, center crop."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    count = min(len(reader) // clip_frames, max_clips) * clip_frames
    if count == 0:
        return torch.empty(0, clip_frames, size, size, 3, dtype=torch.uint8)
    frames = torch.from_numpy(reader.get_batch(list(range(count))).asnumpy())  # (n, H, W, 3)
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).reshape(-1, clip_frames, size, size, 3)


# metrics


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """dB over a whole uint8 clip (T, H, W, 3)."""
    mse = (a.double() - b.double()).square().mean().item()
    return 10 * math.log10(255**2 / mse) if mse > 0 else float("inf")


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, per RGB channel, valid window) of uint8 (T, H, W, 3)."""
    g = torch.exp(-((torch.arange(11, dtype=torch.float32) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)
    x, y = (v.permute(0, 3, 1, 2).float() for v in (a, b))  # (T, 3, H, W)
    blur = lambda v: F.conv2d(v, win, groups=3)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean().item()


def naive_baseline(clip: torch.Tensor, time_factor: int = 4, space_factor: int = 8) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> every `time_factor`-th frame at 1/space_factor size, upsampled back to (T, H, W, 3)."""
    x = clip.permute(0, 3, 1, 2).float()
    t, _, h, w = x.shape
    kept = torch.arange(0, t, time_factor)
    small = F.avg_pool2d(x[kept], space_factor)
    big = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)  # (k, 3, H, W)
    pos = torch.arange(t, dtype=torch.float32) / time_factor
    lo = pos.floor().long().clamp(max=len(kept) - 1)
    hi = (lo + 1).clamp(max=len(kept) - 1)
    frac = (pos - lo).view(-1, 1, 1, 1)
    out = big[lo] * (1 - frac) + big[hi] * frac
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


# main


@app.command()
def main(
    model: Annotated[str, typer.Option(help="'default' or a tokenizer .safetensors")] = "default",
    data: Annotated[Path, typer.Option(help="directory of held-out videos")] = SHARED / "data" / "videos" / "eval",
    size: Annotated[int, typer.Option(help="short side and crop")] = 128,
    clip_frames: Annotated[int, typer.Option(help="frames per clip, 1 + 4k")] = 17,
    max_clips: Annotated[int, typer.Option(help="clips per video at most")] = 8,
    batch_size: Annotated[int, typer.Option(help="clips per encode/decode call")] = 4,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (1 is fastest on a busy shared CPU)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    limit: Annotated[Optional[int], typer.Option(help="first N videos only (smoke runs)")] = None,
) -> None:
    console = Console(stderr=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        tok = load_tokenizer(model, device=device)
        tok.check_video_shape(clip_frames, size, size)
    except LfqtokError as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    videos = sorted(p for p in data.rglob("*") if p.suffix.lower() in VIDEO_EXTS)[:limit]
    rows, all_ids, start = [], [], time.monotonic()
    for path in videos:
        clips = load_clips(path, size, clip_frames, max_clips)
        for i in range(0, len(clips), batch_size):
            batch = clips[i : i + batch_size]
            ids = tok.encode(batch)
            rec = tok.decode(ids)
            all_ids.append(ids.flatten())
            for j, (orig, r) in enumerate(zip(batch, rec)):
                base = naive_baseline(orig, tok.config.temporal_compression, tok.config.spatial_compression)
                rows.append({"video": path.name, "clip": i + j, "psnr": psnr(orig, r), "ssim": ssim(orig, r),
                             "baseline_psnr": psnr(orig, base), "baseline_ssim": ssim(orig, base)})
    seconds = time.monotonic() - start
    ids = torch.cat(all_ids) if all_ids else torch.empty(0, dtype=torch.int64)
    counts = torch.bincount(ids, minlength=tok.codebook_size).double()
    p = counts[counts > 0] / max(1, len(ids))
    entropy = float(-(p * p.log2()).sum())
    mean = lambda k: float(np.mean([r[k] for r in rows])) if rows else float("nan")  # noqa: E731
    summary = {
        "model": model, "name": tok.name, "sha256": tok.sha256, "data": str(data), "size": size, "clip_frames": clip_frames,
        "videos": len(videos), "clips": len(rows), "tokens": len(ids),
        "psnr": mean("psnr"), "ssim": mean("ssim"), "baseline_psnr": mean("baseline_psnr"), "baseline_ssim": mean("baseline_ssim"),
        "used_codes": int((counts > 0).sum()), "codebook_size": tok.codebook_size,
        "utilization": float((counts > 0).sum()) / tok.codebook_size, "unique_per_token": float((counts > 0).sum()) / max(1, len(ids)),
        "entropy_bits": entropy, "perplexity": 2**entropy, "seconds": seconds,
        "per_video": {v.name: {k: float(np.mean([r[k] for r in rows if r["video"] == v.name])) for k in ("psnr", "ssim", "baseline_psnr")}
                      for v in videos if any(r["video"] == v.name for r in rows)},
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{tok.name} on {data} ({len(rows)} clips of {clip_frames}x{size}x{size})")
    for col in ("video", "clips", "PSNR", "SSIM", "naive PSNR"):
        table.add_column(col)
    for name, v in summary["per_video"].items():
        table.add_row(name, str(sum(r["video"] == name for r in rows)), f"{v['psnr']:.2f}", f"{v['ssim']:.3f}", f"{v['baseline_psnr']:.2f}")
    table.add_row("[bold]mean", str(len(rows)), f"{summary['psnr']:.2f}", f"{summary['ssim']:.3f}", f"{summary['baseline_psnr']:.2f}")
    console.print(table)
    console.print(f"naive baseline SSIM {summary['baseline_ssim']:.3f}; codes used {summary['used_codes']:,} of "
                  f"{tok.codebook_size:,} ({summary['unique_per_token']:.1%} of {len(ids):,} tokens unique), "
                  f"entropy {entropy:.2f} bits, perplexity {2**entropy:,.0f}; {seconds:.1f} s")


if __name__ == "__main__":
    app()
