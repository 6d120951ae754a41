"""Benchmark `lfqtok encode` against a naive loop, and against its two ceilings, in one run.

    python scripts/bench_encode.py VIDEO_DIR [--model default] [--size 128] [--max-clips 4] [--device auto]

- naive loop: for each video, decord (PyAV where decord is missing) reads each clip, `tokenizer.encode` on a batch of 1, `np.save`;
- decode ceiling: the decode worker pool alone (all workers, clips dropped), frames/s;
- encoder ceiling: the tokenizer alone on random uint8 batches already in memory, frames/s (on the CPU
  clip by clip, as `lfqtok encode` runs there so that tokens do not depend on the batch size);
- end to end: `lfqtok.encode_dataset` with the same videos, model and clip settings.
Prints one table; the ratios are what docs/performance.md records.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lfqtok
from lfqtok.device import resolve_device
from lfqtok.pipeline.encode import EncodeConfig
from lfqtok.pipeline.pool import ClipEvent, DecodePool
from lfqtok.pipeline.sources import list_items
from lfqtok.pipeline.video import ClipSpec
from lfqtok.pipeline.worker import encode_batch


def read_clips(path: str, spec: ClipSpec):
    """Consecutive clips of `spec.clip_frames` raw frames, uint8 (T, H, W, 3): decord, or PyAV where decord is
    not installed (the GPU image has no decord wheel; the loop stays as naive either way)."""
    try:
        import decord
    except ImportError:
        decord = None
    if decord is not None:
        vr = decord.VideoReader(path)
        starts = range(0, len(vr) - spec.clip_frames + 1, spec.clip_frames)
        for start in list(starts)[: spec.max_clips]:
            yield torch.from_numpy(vr.get_batch(list(range(start, start + spec.clip_frames))).asnumpy())
        return
    import av

    with av.open(path) as container:
        frames, clips = [], 0
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == spec.clip_frames:
                yield torch.from_numpy(np.stack(frames))
                frames, clips = [], clips + 1
                if spec.max_clips is not None and clips == spec.max_clips:
                    return


def naive_loop(items, tok, spec: ClipSpec, out: Path) -> int:
    """The loop users write first: one clip at a time, decode, encode, save. Returns frames encoded."""
    frames = 0
    for n, item in enumerate(items):
        clips = read_clips(item.path, spec)
        for k in itertools.count():
            try:
                clip = next(clips)
            except StopIteration:
                break
            except Exception as exc:  # a video the naive loop cannot read is skipped, as such loops do
                print(f"naive loop skips {item.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
                break
            clip = clip.permute(0, 3, 1, 2).float()
            scale = spec.size / min(clip.shape[-2:])
            clip = torch.nn.functional.interpolate(clip, scale_factor=scale, mode="bilinear", antialias=True)
            top, left = (clip.shape[-2] - spec.size) // 2, (clip.shape[-1] - spec.size) // 2
            clip = clip[..., top : top + spec.size, left : left + spec.size].clamp(0, 255).round().to(torch.uint8)
            ids = tok.encode(clip.permute(0, 2, 3, 1)[None])
            np.save(out / f"{n}_{k}.npy", ids.cpu().numpy().astype(np.uint32))
            frames += spec.clip_frames
    return frames


def decode_ceiling(items, spec: ClipSpec, workers: int) -> int:
    frames = 0
    with DecodePool(spec, workers) as pool:
        for event in pool.run(items):
            if isinstance(event, ClipEvent):
                frames += event.clip.frames.shape[0]
    return frames


def encoder_ceiling(tok, spec: ClipSpec, batch_size: int, batches: int) -> int:
    """The encoder alone, fed batches already in memory, computing ids the way the pipeline does."""
    video = torch.randint(0, 256, (batch_size, spec.clip_frames, spec.size, spec.size, 3), dtype=torch.uint8)
    device = next(tok.parameters()).device
    video = video.to(device)
    encode_batch(tok, video)  # warm-up (cuDNN autotune, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    for _ in range(batches):
        ids = encode_batch(tok, video)
    ids.cpu()
    return batches * batch_size * spec.clip_frames


def timed(fn, *args):
    start = time.perf_counter()
    frames = fn(*args)
    return frames, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos")
    parser.add_argument("--model", default="default")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--clip-frames", type=int, default=17)
    parser.add_argument("--max-clips", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoder-batches", type=int, default=4)
    args = parser.parse_args()

    device = str(resolve_device(args.device))
    config = EncodeConfig(model=args.model, size=args.size, clip_frames=args.clip_frames, max_clips=args.max_clips,
                          batch_size=args.batch_size, workers=args.workers, device=device)
    spec = config.clip_spec()
    items = list_items([args.videos])
    tok = lfqtok.load_tokenizer(args.model, device=device)
    tmp = Path(tempfile.mkdtemp(prefix="lfqtok-bench-"))
    try:
        rows = []
        naive_frames, naive_s = timed(naive_loop, items, tok, spec, tmp)
        rows.append(("naive loop (batch 1, np.save)", naive_frames, naive_s))
        dec_frames, dec_s = timed(decode_ceiling, items, spec, config.num_workers())
        rows.append((f"decode ceiling ({config.num_workers()} workers)", dec_frames, dec_s))
        enc_frames, enc_s = timed(encoder_ceiling, tok, spec, args.batch_size, args.encoder_batches)
        rows.append((f"encoder ceiling (batch {args.batch_size})", enc_frames, enc_s))
        start = time.perf_counter()
        summary = lfqtok.encode_dataset([args.videos], tmp / "tokens", config)
        rows.append(("lfqtok encode (end to end)", summary.frames, time.perf_counter() - start))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"device: {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}; "
          f"torch threads {torch.get_num_threads()}; {len(items)} videos; {args.size} px, {args.clip_frames} frames")
    print(f"{'stage':45s} {'frames':>8s} {'seconds':>8s} {'frames/s':>9s}")
    rate = {}
    for name, frames, seconds in rows:
        rate[name] = frames / seconds
        print(f"{name:45s} {frames:8d} {seconds:8.2f} {rate[name]:9.1f}")
    e2e = rate["lfqtok encode (end to end)"]
    ceiling = min(rate[rows[1][0]], rate[rows[2][0]])
    print(f"end to end / naive loop: {e2e / rate[rows[0][0]]:.2f}x")
    print(f"end to end / min(decode, encoder ceiling): {e2e / ceiling:.0%}")


if __name__ == "__main__":
    main()
