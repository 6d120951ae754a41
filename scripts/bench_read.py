"""`TokenDataset` through a torch DataLoader against the bare loop users write first (tarfile + np.load).

One run, one generated token dir (SHARDS shards x SAMPLES samples of (2, 5, 16, 16) uint32 tokens, 2^18 codes,
written by lfqtok's ShardWriter as in bench_stats.py): tokens/s of the bare loop (open each tar, np.load each array, int64 clips)
and of TokenDataset alone and through a DataLoader with 0, 1 and 2 workers (batches of int64 clips), best of
REPEATS interleaved rounds, and the ratio per worker (target >= 0.8x the bare loop), next to what the
DataLoader costs by itself (the same items from memory: batching, and with workers the transfer of each batch
to the main process), and what the dataset costs inside the workers when they send only a count back (no
transfer). `--memory` adds the peak RSS of a fresh process reading 10 and 100 shards (it should not
grow with the number of shards).

    .venv/bin/python scripts/bench_read.py [--shards 20] [--samples 200] [--repeats 5] [--batch-size 64] [--memory]
"""

from __future__ import annotations

import argparse
import functools
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench_stats import SHAPE, make_tokens  # the same generated token dir as the stats benchmark
WORKERS = (0, 1, 2)

PEAK_RSS = """
import resource, sys, torch
from lfqtok import TokenDataset
loader = torch.utils.data.DataLoader(TokenDataset(sys.argv[1], shuffle=int(sys.argv[2])), batch_size=64)
tokens = sum(batch["tokens"].numel() for batch in loader)
print(tokens, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bare_loop(out: Path) -> int:
    """What users write first: every tar in order, np.load each tokens member, int64 clips."""
    tokens = 0
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if member.name.endswith(".tokens.npy"):
                    for clip in np.load(io.BytesIO(tar.extractfile(member).read())).astype(np.int64):
                        tokens += clip.size
    return tokens


def dataset_alone(out: Path) -> int:
    """TokenDataset iterated directly: its own work per clip, with no DataLoader batching or transfer."""
    from lfqtok import TokenDataset

    return sum(item["tokens"].numel() for item in TokenDataset(out))


def dataset_loop(out: Path, workers: int, batch_size: int) -> int:
    import torch

    from lfqtok import TokenDataset

    loader = torch.utils.data.DataLoader(TokenDataset(out), batch_size=batch_size, num_workers=workers)
    return sum(batch["tokens"].numel() for batch in loader)


def count_tokens(items: list[dict]) -> int:
    """A collate_fn that sends only a count back: the dataset's own cost inside a worker, without the transfer."""
    return sum(item["tokens"].numel() for item in items)


def sink_loop(out: Path, workers: int, batch_size: int) -> int:
    import torch

    from lfqtok import TokenDataset

    loader = torch.utils.data.DataLoader(TokenDataset(out), batch_size=batch_size, num_workers=workers, collate_fn=count_tokens)
    return sum(loader)


class InMemory:
    """The same items TokenDataset yields, from memory: what a DataLoader costs by itself (batching, and with
    workers the transfer of every batch to the main process), the floor under any dataset."""

    def __init__(self, clips: int):
        self.clips = clips

    def __iter__(self):
        import torch

        info = torch.utils.data.get_worker_info()
        tokens = torch.zeros(SHAPE[1:], dtype=torch.int64)
        for i in range(info.id if info else 0, self.clips, info.num_workers if info else 1):
            yield {"tokens": tokens, "key": f"s00000_{i:05d}", "clip": i % 2, "source": f"video{i}.mp4", "shard": "tokens/00000.tar"}


def floor_loop(clips: int, workers: int, batch_size: int) -> int:
    import torch

    class Items(InMemory, torch.utils.data.IterableDataset):
        pass

    loader = torch.utils.data.DataLoader(Items(clips), batch_size=batch_size, num_workers=workers)
    return sum(batch["tokens"].numel() for batch in loader)


def best_of(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, tuple[float, int]]:
    """Best wall time of each run over `repeats` rounds, the runs interleaved in every round (the machine's load
    drifts; interleaving spreads it evenly), and what each returned (the token count)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(times[name]), tokens[name]) for name in runs}


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
    parser.add_argument("--memory", action="store_true", help="also peak RSS with 10 and 100 shards")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tokens"
        expected = make_tokens(out, args.shards, args.samples)
        runs = {"bare": lambda: bare_loop(out), "alone": lambda: dataset_alone(out)}
        runs.update({w: functools.partial(dataset_loop, out, w, args.batch_size) for w in WORKERS})
        clips = args.shards * args.samples * SHAPE[0]
        runs.update({("floor", w): functools.partial(floor_loop, clips, w, args.batch_size) for w in WORKERS})
        runs.update({("sink", w): functools.partial(sink_loop, out, w, args.batch_size) for w in WORKERS if w})
        results = best_of(runs, args.repeats)
        assert all(tokens == expected for _, tokens in results.values()), results
        base = results["bare"][0]
        print(f"{args.shards} shards x {args.samples} samples x {SHAPE} uint32 = {expected:,} tokens, batch {args.batch_size}, "
              f"best of {args.repeats}")
        print(f"bare loop (tarfile + np.load, int64 clips): {base:.2f} s, {expected / base / 1e6:.2f} M tokens/s")
        alone = results["alone"][0]
        print(f"TokenDataset alone (no DataLoader): {alone:.2f} s, {expected / alone / 1e6:.2f} M tokens/s, {base / alone:.2f}x the bare loop")
        for workers in WORKERS:
            seconds = results[workers][0]
            floor = results["floor", workers][0]
            print(f"TokenDataset, DataLoader workers={workers}: {seconds:.2f} s, {expected / seconds / 1e6:.2f} M tokens/s, "
                  f"{base / seconds:.2f}x the bare loop, {base / seconds / max(workers, 1):.2f}x per worker "
                  f"(the DataLoader alone, items from memory: {floor:.2f} s)")
            if workers:
                sink = results["sink", workers][0]
                print(f"  the same workers sending only a count back (the dataset's own cost in a worker): {sink:.2f} s, "
                      f"{base / sink / workers:.2f}x per worker")
        if args.memory:
            for shuffle in (0, 1000):
                rows = [(n, *peak_rss(Path(tmp) / f"mem{n}", n, args.samples, shuffle)) for n in (10, 100)]
                print(f"peak RSS, shuffle={shuffle}: " + ", ".join(f"{n} shards ({t:,} tokens) {kib / 1024:.0f} MiB" for n, t, kib in rows))


if __name__ == "__main__":
    main()
