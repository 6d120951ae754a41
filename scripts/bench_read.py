"""`TokenDataset` through a torch DataLoader against the bare loop users write first (tarfile + np.load).

One run, one generated token dir (SHARDS shards x SAMPLES samples of (2, 5, 16, 16) uint32 tokens, 2^18 codes,
written by lfqtok's writer as in bench_stats.py). Timed, best of REPEATS interleaved rounds:
- the bare loop (open each tar, np.load each array, int64 clips), and the same loop in two processes at once,
  each over half the shards (what two processes of this machine get, each: the ceiling of two workers);
- TokenDataset iterated directly, items and batches;
- through a DataLoader with 0, 1 and 2 workers, batches of BATCH int64 clips made three ways: torch's own
  batching of items (`batch_size=BATCH`), the same with `collate_fn=lfqtok.dataset.token_dataset.collate`, and batches made
  in the dataset (`TokenDataset(batch_size=BATCH)`, `DataLoader(batch_size=None)`); the last two hand batches
  to the main process through lfqtok.dataset.handoff's reused shared memory.
Every consumer reads every token once (it sums them, as a training step would at least copy them to its
device; the sums must agree across runs). For each: tokens/s after the first batch has arrived (steady state, the
measure of a loader: it excludes the workers' start-up, paid once an epoch), the time to that first batch, and
tokens/s over the whole run; the steady ratio to the bare loop per worker is the target (>= 0.8x). `--memory` adds the peak RSS of a fresh
process reading 10 and 100 shards (it should not grow with the number of shards).

    .venv/bin/python scripts/bench_read.py [--shards 20] [--samples 200] [--repeats 5] [--batch-size 64]
                                           [--prefetch 2] [--memory]
"""

from __future__ import annotations

import argparse
import functools
import io
import multiprocessing
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from bench_stats import SHAPE, make_tokens  # the same generated token dir as the stats benchmark

WORKERS = (0, 1, 2)
WAYS = {"items": "torch's batching of items", "collate": "collate_fn=lfqtok.dataset.token_dataset.collate",
        "dataset": "batches made in the dataset"}

PEAK_RSS = """
import resource, sys, torch
from lfqtok import TokenDataset
loader = torch.utils.data.DataLoader(TokenDataset(sys.argv[1], shuffle=int(sys.argv[2]), batch_size=64), batch_size=None)
tokens = sum(batch["tokens"].numel() for batch in loader)
print(tokens, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bare_loop(paths: list[Path]) -> Iterator[tuple[int, int]]:
    """What users write first: every tar in order, np.load each tokens member, int64 clips; (tokens, their sum)
    per sample: every consumer here reads every token once (a training step copies them to its device)."""
    for path in paths:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if member.name.endswith(".tokens.npy"):
                    clips = np.load(io.BytesIO(tar.extractfile(member).read())).astype(np.int64)
                    yield clips.size, int(clips.sum())


def count_bare(paths: list[Path]) -> tuple[int, int]:
    counts = list(bare_loop(paths))
    return sum(n for n, _ in counts), sum(s for _, s in counts)


def two_bare_loops(pool: multiprocessing.pool.Pool, paths: list[Path]) -> Iterator[tuple[int, int]]:
    """The bare loop in two processes at once, each over half the shards (a pool started beforehand)."""
    yield from pool.map(count_bare, [paths[0::2], paths[1::2]])


def read(batches: Iterator[dict]) -> Iterator[tuple[int, int]]:
    return ((b["tokens"].numel(), int(b["tokens"].sum())) for b in batches)


def dataset_alone(out: Path, batch_size: int | None) -> Iterator[tuple[int, int]]:
    from lfqtok import TokenDataset

    return read(TokenDataset(out, batch_size=batch_size))


def loader(out: Path, way: str, workers: int, batch_size: int, prefetch: int) -> Iterator[tuple[int, int]]:
    import torch

    from lfqtok import TokenDataset
    from lfqtok.dataset.token_dataset import collate

    options = {"num_workers": workers, **({"prefetch_factor": prefetch} if workers else {})}
    if way == "dataset":
        batches = torch.utils.data.DataLoader(TokenDataset(out, batch_size=batch_size), batch_size=None, **options)
    else:
        batches = torch.utils.data.DataLoader(TokenDataset(out), batch_size=batch_size,
                                              collate_fn=collate if way == "collate" else None, **options)
    return read(batches)


def timed(run: Callable[[], Iterator[tuple[int, int]]]) -> tuple[float, float, float, tuple[int, int]]:
    """(seconds in all, seconds to the first batch, tokens/s after it, (tokens, their sum)) of one run."""
    start = time.perf_counter()
    first, tokens, total, before = None, 0, 0, 0
    for n, s in run():
        tokens, total = tokens + n, total + s
        if first is None:
            first, before = time.perf_counter(), tokens
    end = time.perf_counter()
    return end - start, first - start, (tokens - before) / max(end - first, 1e-9), (tokens, total)


def best_of(runs: dict, repeats: int) -> dict:
    """Per run, the best of each measure over `repeats` rounds, the runs interleaved in every round (the
    machine's load drifts; interleaving spreads it evenly)."""
    best: dict = {}
    for _ in range(repeats):
        for name, run in runs.items():
            total, first, rate, tokens = timed(run)
            old = best.get(name, (float("inf"), float("inf"), 0.0, tokens))
            best[name] = (min(old[0], total), min(old[1], first), max(old[2], rate), tokens)
    return best


def peak_rss(out: Path, shards: int, samples: int, shuffle: int) -> tuple[int, int]:
    """(tokens read, peak RSS in KiB) of a fresh process reading `shards` shards through TokenDataset."""
    make_tokens(out, shards, samples)
    printed = subprocess.check_output([sys.executable, "-c", PEAK_RSS, str(out), str(shuffle)]).decode().split()
    return int(printed[0]), int(printed[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prefetch", type=int, default=2, help="the DataLoader's prefetch_factor (torch's default: 2)")
    parser.add_argument("--memory", action="store_true", help="also peak RSS with 10 and 100 shards")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("fork").Pool(2) as pool:
        out = Path(tmp) / "tokens"
        expected = make_tokens(out, args.shards, args.samples)
        paths = sorted(out.glob("*.tar"))
        runs: dict = {"bare": lambda: bare_loop(paths), "two bare": lambda: two_bare_loops(pool, paths),
                      "alone items": lambda: dataset_alone(out, None), "alone batches": lambda: dataset_alone(out, args.batch_size)}
        for workers in WORKERS:
            runs.update({(way, workers): functools.partial(loader, out, way, workers, args.batch_size, args.prefetch) for way in WAYS})
        results = best_of(runs, args.repeats)
        assert len({r[3] for r in results.values()}) == 1 and results["bare"][3][0] == expected, results  # same tokens
        base = results["bare"][2]
        print(f"{args.shards} shards x {args.samples} samples x {SHAPE} uint32 = {expected:,} tokens, batch {args.batch_size}, "
              f"prefetch_factor {args.prefetch}, best of {args.repeats}; steady: tokens/s after the first batch")
        print(f"bare loop (tarfile + np.load, int64 clips): {base / 1e6:.2f} M tokens/s ({results['bare'][0]:.2f} s)")
        two = results["two bare"]
        print(f"the bare loop in 2 processes at once: {expected / two[0] / 1e6:.2f} M tokens/s, {expected / two[0] / base / 2:.2f}x "
              f"per process (this machine's ceiling for 2 workers)")
        for name, label in (("alone items", "items"), ("alone batches", f"batches of {args.batch_size}")):
            print(f"TokenDataset alone, {label}: {results[name][2] / 1e6:.2f} M tokens/s, {results[name][2] / base:.2f}x")
        print("| way | workers | steady M tokens/s | steady x bare per worker | first batch | whole run x bare per worker |")
        print("|---|---|---|---|---|---|")
        for way, label in WAYS.items():
            for workers in WORKERS:
                total, first, rate, _ = results[way, workers]
                per = max(workers, 1)
                print(f"| {label} | {workers} | {rate / 1e6:.2f} | {rate / base / per:.2f}x | {first:.3f} s | "
                      f"{expected / total / base / per:.2f}x |")
        if args.memory:
            for shuffle in (0, 1000):
                rows = [(n, *peak_rss(Path(tmp) / f"mem{n}", n, args.samples, shuffle)) for n in (10, 100)]
                print(f"peak RSS, shuffle={shuffle}: " + ", ".join(f"{n} shards ({t:,} tokens) {kib / 1024:.0f} MiB" for n, t, kib in rows))


if __name__ == "__main__":
    main()
