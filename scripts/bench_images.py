"""Benchmark `lfqtok encode` on images against a naive loop, with the decode stage's own ceiling, in one run.

    python scripts/get_photos.py /tmp/photos          # openly licensed photographs (Debian wallpapers, skimage data)
    python scripts/bench_images.py /tmp/photos [--size 256] [--model default] [--device cpu]

- naive loop: for each file, PIL open, convert to RGB, resize the short side to SIZE (Pillow's default filter),
  centre crop, `tokenizer.encode` on a batch of 1, `np.save`;
- decode ceiling: the decode worker pool alone (decoding + resizing, no encoder), images/s, and one process
  decoding every JPEG with and without draft mode (libjpeg's DCT downscaling), with the PSNR between the two
  model inputs;
- end to end: `lfqtok.encode_dataset` on the same files, model and size.
Prints one table; docs/performance.md records it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lfqtok
from lfqtok.device import resolve_device
from lfqtok.pipeline.encode import EncodeConfig
from lfqtok.pipeline.images import image_clip
from lfqtok.pipeline.pool import ClipEvent, DecodePool
from lfqtok.pipeline.sources import list_items
from lfqtok.pipeline.video import ClipSpec


def naive_loop(paths: list[str], tok, size: int, out: Path) -> int:
    """The loop users write first: one image at a time, open, resize, crop, encode, save. Returns images encoded."""
    for n, path in enumerate(paths):
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / min(im.size)
            im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))))
            left, top = (im.width - size) // 2, (im.height - size) // 2
            rgb = np.array(im.crop((left, top, left + size, top + size)))
        ids = tok.encode(torch.from_numpy(rgb)[None, None])  # (1, 1, h, w)
        np.save(out / f"{n}.npy", ids.numpy().astype(np.uint32))
    return len(paths)


def decode_ceiling(items, spec: ClipSpec, workers: int) -> int:
    """The decode pool alone: images decoded and resized in `workers` processes, clips dropped."""
    images = 0
    with DecodePool(spec, workers) as pool:
        for event in pool.run(items):
            images += isinstance(event, ClipEvent)
    return images


def draft_effect(paths: list[str], spec: ClipSpec) -> tuple[float, float, float]:
    """(seconds with draft, seconds without, mean PSNR between the two model inputs) over the JPEGs, one process."""
    seconds, frames = [], []
    for draft in (True, False):
        start = time.perf_counter()
        frames.append([image_clip(p, spec, draft=draft)[1].frames.astype(np.float64) for p in paths])
        seconds.append(time.perf_counter() - start)
    mse = [max(np.mean((a - b) ** 2), 1e-10) for a, b in zip(*frames)]
    return seconds[0], seconds[1], float(np.mean([10 * np.log10(255**2 / m) for m in mse]))


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images")
    parser.add_argument("--model", default="default")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = str(resolve_device(args.device))
    config = EncodeConfig(model=args.model, size=args.size, batch_size=args.batch_size, workers=args.workers, device=device)
    spec = config.clip_spec()
    items = [i for i in list_items([args.images]) if i.is_image]
    paths = [i.path for i in items]
    jpegs = [p for p in paths if p.lower().endswith((".jpg", ".jpeg"))]
    tok = lfqtok.load_tokenizer(args.model, device=device)
    tmp = Path(tempfile.mkdtemp(prefix="lfqtok-bench-"))
    print(f"{len(paths)} images ({len(jpegs)} JPEG), size {args.size}, model {args.model}, device {device}, "
          f"{torch.get_num_threads()} torch threads, {config.num_workers()} decode workers")
    try:
        rows = []
        n, s = timed(naive_loop, paths, tok, args.size, tmp)
        rows.append(("naive loop (PIL, batch 1, np.save)", n, s))
        n, s = timed(decode_ceiling, items, spec, config.num_workers())
        rows.append((f"decode ceiling ({config.num_workers()} workers, draft)", n, s))
        with_draft, without, psnr = draft_effect(jpegs, spec)
        rows.append(("JPEG decode+resize, 1 process, draft", len(jpegs), with_draft))
        rows.append(("JPEG decode+resize, 1 process, full decode", len(jpegs), without))
        summary, s = timed(lfqtok.encode_dataset, [args.images], tmp / "tokens", config)
        rows.append(("lfqtok encode (end to end)", summary.videos_ok, s))
        naive_rate = rows[0][1] / rows[0][2]
        print(f"{'':46} {'images':>7} {'seconds':>8} {'images/s':>9} {'vs naive':>8}")
        for name, count, seconds in rows:
            print(f"{name:46} {count:7d} {seconds:8.2f} {count / seconds:9.2f} {count / seconds / naive_rate:7.2f}x")
        print(f"draft mode: JPEG decoding {without / with_draft:.2f}x faster; model inputs differ by {psnr:.1f} dB PSNR (mean)")
        if summary.failures:
            print(f"encode failures: {summary.failures}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
