"""Reconstruction quality of a tokenizer on held-out videos, vs a naive baseline, at one or more sizes.

`python scripts/eval_tokenizer.py [--model default|PATH] [--data ../shared/data/videos/eval] [--size 128 --size 256] [--json]`

Clips are cut exactly as `lfqtok encode` cuts them (`lfqtok.pipeline.video.iter_clips`: the same decoder and frame
scaler, short side scaled to --size, center crop, the first --max-clips non-overlapping clips of
--clip-frames frames), and every score is `lfqtok.inspect.metrics`, the functions `lfqtok decode --json` reports:
a video's row pools its clips as `decode` pools a sample's; `mean` averages the per-clip scores.
Naive baseline on the same clips: keep every 4th frame at 1/8 size (area), upsample bilinearly in space and
linearly in time: the same 4x8x8 reduction with no model (24 bits per block against the tokenizer's 18).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lfqtok.errors import LfqtokError, VideoError  # noqa: E402
from lfqtok.inspect.metrics import QualityMeter, clip_quality  # noqa: E402
from lfqtok.tokenizers.model import load_tokenizer  # noqa: E402
from lfqtok.pipeline.video import ClipSpec, iter_clips  # noqa: E402

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".gif"}
SCORES = ("psnr", "ssim", "psnr_luma", "psnr_chroma", "colour_shift")
app = typer.Typer(add_completion=False)


def default_data() -> Path:
    """The shared eval videos beside the repository (`../shared`), or $LFQTOK_SHARED/data/videos/eval."""
    import os

    shared = Path(os.environ.get("LFQTOK_SHARED", ROOT.parent / "shared"))
    return shared / "data" / "videos" / "eval"


def load_clips(path: Path, size: int, clip_frames: int, max_clips: int) -> np.ndarray:
    """uint8 (N, T, size, size, 3): the clips `lfqtok encode --size S --clip-frames T --max-clips N` would encode."""
    _, clips = iter_clips(str(path), ClipSpec(size=size, clip_frames=clip_frames, max_clips=max_clips, pad_short=False))
    frames = [c.frames for c in clips]
    return np.stack(frames) if frames else np.empty((0, clip_frames, size, size, 3), np.uint8)


def naive_baseline(clip: np.ndarray, time_factor: int = 4, space_factor: int = 8) -> np.ndarray:
    """uint8 (T, H, W, 3) -> every `time_factor`-th frame at 1/space_factor size, upsampled back to (T, H, W, 3)."""
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    t, _, h, w = x.shape
    kept = torch.arange(0, t, time_factor)
    small = F.avg_pool2d(x[kept], space_factor)
    big = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)  # (k, 3, H, W)
    pos = torch.arange(t, dtype=torch.float32) / time_factor
    lo = pos.floor().long().clamp(max=len(kept) - 1)
    hi = (lo + 1).clamp(max=len(kept) - 1)
    frac = (pos - lo).view(-1, 1, 1, 1)
    out = big[lo] * (1 - frac) + big[hi] * frac
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def evaluate(
    tok: Any, videos: list[Path], size: int, clip_frames: int, max_clips: int, batch_size: int, firsts: dict | None = None
) -> dict[str, Any]:
    """Scores of `tok` and of the naive baseline at one size: per clip, per video (pooled) and the clip mean.

    `firsts`, when given, receives video name -> (source, reconstruction) of its first clip (for a contact sheet)."""
    clips_rows: list[dict[str, Any]] = []
    per_video: dict[str, dict[str, Any]] = {}
    ids_all = []
    tc, sc = tok.config.temporal_compression, tok.config.spatial_compression
    for path in videos:
        try:
            clips = load_clips(path, size, clip_frames, max_clips)
        except VideoError as exc:
            per_video[path.name] = {"error": str(exc)}
            continue
        model_meter, base_meter = QualityMeter(), QualityMeter()
        for i in range(0, len(clips), batch_size):
            batch = clips[i : i + batch_size]
            ids = tok.encode(torch.from_numpy(batch))
            rec = tok.decode(ids).numpy()
            ids_all.append(ids.flatten())
            if i == 0 and firsts is not None:
                firsts[path.name] = (batch[0], rec[0])
            for j, (src, r) in enumerate(zip(batch, rec)):
                base = naive_baseline(src, tc, sc)
                model_meter.add(r, src)
                base_meter.add(base, src)
                row = {"video": path.name, "clip": i + j, **clip_quality(r, src)}
                row.update({f"naive_{k}": v for k, v in clip_quality(base, src).items() if k in SCORES})
                clips_rows.append(row)
        if len(clips):
            per_video[path.name] = {"clips": len(clips), **model_meter.result(), **{f"naive_{k}": v for k, v in base_meter.result().items() if k in SCORES}}
    ids = torch.cat(ids_all) if ids_all else torch.empty(0, dtype=torch.int64)
    counts = torch.bincount(ids, minlength=tok.codebook_size).double()
    p = counts[counts > 0] / max(1, len(ids))
    entropy = float(-(p * p.log2()).sum())
    keys = [*SCORES, *(f"naive_{k}" for k in SCORES)]
    mean = {k: float(np.mean([r[k] for r in clips_rows])) if clips_rows else None for k in keys}
    scored = [v for v in per_video.values() if "psnr" in v]
    return {
        "size": size, "clip_frames": clip_frames, "videos": len(videos), "clips": len(clips_rows), "tokens": len(ids),
        "mean": mean,
        "video_mean": {k: float(np.mean([v[k] for v in scored])) if scored else None for k in keys},
        "wins": sum(v["psnr"] >= v["naive_psnr"] for v in scored),
        "used_codes": int((counts > 0).sum()), "entropy_bits": entropy, "perplexity": 2**entropy,
        "per_video": per_video, "per_clip": clips_rows,
    }


def write_sheet(path: Path, firsts: list[tuple[np.ndarray, np.ndarray]], step: int) -> None:
    """PNG: per clip, every `step`-th frame of the source above the same frames reconstructed (decode's layout)."""
    from lfqtok.inspect.decode import ContactSheetWriter, SheetLayout

    t, h, w, _ = firsts[0][0][::step].shape
    sheet = ContactSheetWriter(path, SheetLayout(frames=t, height=h, width=w, clips=len(firsts), sides=2))
    for src, rec in firsts:
        sheet.write(rec[::step], src[::step])
    sheet.close()


def print_report(console: Console, name: str, data: Path, r: dict[str, Any]) -> None:
    table = Table(title=f"{name} on {data} ({r['clips']} clips of {r['clip_frames']}x{r['size']}x{r['size']})")
    for col in ("video", "clips", "PSNR", "naive", "SSIM", "naive", "Y PSNR", "naive", "CbCr PSNR", "naive", "shift", "naive"):
        table.add_column(col, justify="right")

    def cells(v: dict[str, Any]) -> list[str]:
        return [f"{v[p + k]:.{3 if k == 'ssim' else 2}f}" for k in SCORES for p in ("", "naive_")]

    for video, v in r["per_video"].items():
        table.add_row(video, *([str(v["clips"]), *cells(v)] if "psnr" in v else ["0", v["error"]]))
    table.add_row("[bold]mean of clips", str(r["clips"]), *cells(r["mean"]))
    table.add_row("[bold]mean of videos", str(len(r["per_video"])), *cells(r["video_mean"]))
    console.print(table)
    console.print(f"model >= naive PSNR on {r['wins']} of {len(r['per_video'])} videos; codes used {r['used_codes']:,}, "
                  f"entropy {r['entropy_bits']:.2f} bits, perplexity {r['perplexity']:,.0f}; colour shift in 1/255")


@app.command()
def main(
    model: Annotated[str, typer.Option(help="'default' or a tokenizer .safetensors")] = "default",
    data: Annotated[Optional[Path], typer.Option(help="directory of held-out videos [default: ../shared/data/videos/eval]")] = None,
    size: Annotated[Optional[list[int]], typer.Option(help="short side and crop; repeat for several sizes [default: 128 and 256]")] = None,
    clip_frames: Annotated[int, typer.Option(help="frames per clip, 1 + 4k")] = 17,
    max_clips: Annotated[int, typer.Option(help="clips per video at most")] = 8,
    batch_size: Annotated[int, typer.Option(help="clips per encode/decode call")] = 4,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (1 is fastest on a busy shared CPU)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    limit: Annotated[Optional[int], typer.Option(help="first N videos only (smoke runs)")] = None,
    sheet: Annotated[Optional[Path], typer.Option(help="write a PNG: first clip of --sheet-videos videos, source above reconstruction")] = None,
    sheet_videos: Annotated[str, typer.Option(help="comma-separated video names for --sheet (default: the first 3)")] = "",
) -> None:
    console = Console(stderr=True, width=160)
    if threads is not None:
        torch.set_num_threads(threads)
    data = data or default_data()
    sizes = size or [128, 256]
    try:
        tok = load_tokenizer(model, device=device)
        for s in sizes:
            tok.check_video_shape(clip_frames, s, s)
    except LfqtokError as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    videos = sorted(p for p in data.rglob("*") if p.suffix.lower() in VIDEO_EXTS)[:limit]
    if not videos:
        console.print(f"error: no videos in {data}")
        raise typer.Exit(2)
    start = time.monotonic()
    firsts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    results = [evaluate(tok, videos, s, clip_frames, max_clips, batch_size, firsts if i == 0 else None) for i, s in enumerate(sizes)]
    picked = [firsts[n] for n in (sheet_videos.split(",") if sheet_videos else list(firsts)[:3]) if n in firsts]
    if sheet is not None and picked:
        write_sheet(sheet, picked, tok.config.temporal_compression)
    summary = {"model": model, "name": tok.name, "sha256": tok.sha256, "data": str(data), "seconds": time.monotonic() - start,
               "sizes": results}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for r in results:
        print_report(console, tok.name, data, r)
    console.print(f"{summary['seconds']:.1f} s")


if __name__ == "__main__":
    app()
