"""Peak memory of `lfqtok encode` (whole process tree: main process and decode workers) for a long and a
short video with the same options, and the cost of listing many input files.

    python scripts/bench_memory.py [--long-seconds 600] [--files 100000] [--model default]

Videos are generated (640x360, 30 fps, a moving pattern) into a temp dir. Peak tree memory (the sum of
each process's PSS) is sampled from /proc every 20 ms. Prints a table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np


def make_video(path: Path, seconds: float, width: int = 640, height: int = 360, fps: int = 30) -> None:
    """A moving gradient with a bouncing square: cheap to encode, not trivially compressible."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            frame = np.empty((height, width, 3), np.uint8)
            frame[..., 0] = (xx + 3 * i) % 256
            frame[..., 1] = (yy + 2 * i) % 256
            frame[..., 2] = 128
            x, y = (7 * i) % (width - 40), (5 * i) % (height - 40)
            frame[y : y + 40, x : x + 40] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def tree_rss(pid: int) -> int:
    """Proportional resident bytes (PSS) of a process and all its descendants.

    PSS, not RSS: a child between fork and exec (how the decode workers are spawned) shares all of its
    parent's pages, and summing RSS would count them twice."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run_peak(cmd: list[str]) -> tuple[float, int]:
    """(seconds, peak tree RSS bytes) of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, peak


LIST_SNIPPET = """
import resource, sys, time
from lfqtok.pipeline.sources import list_items, plan_shards
start = time.perf_counter()
items = list_items([sys.argv[1]])
jobs = plan_shards(items, 1000)
print(len(items), len(jobs), time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

BASELINE_SNIPPET = "import resource, lfqtok.pipeline.sources; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-seconds", type=float, default=600)
    parser.add_argument("--short-seconds", type=float, default=4)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--model", default="default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each command, interleaved, all printed")
    parser.add_argument("--videos-dir", type=Path, default=None, help="keep the generated videos here for reruns")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lfqtok-mem-"))
    root = args.videos_dir or tmp
    videos = {"long": root / "long" / "long.mp4", "short": root / "short" / "short.mp4"}
    for name, seconds in (("long", args.long_seconds), ("short", args.short_seconds)):
        if videos[name].exists():
            continue
        videos[name].parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        make_video(videos[name], seconds)
        print(f"made {name} video ({seconds:.0f} s, 640x360): {time.perf_counter() - t:.1f} s", file=sys.stderr)

    lfq = [sys.executable, "-m", "lfqtok"]
    print(f"{'options':32s} {'video':6s} {'seconds':>8s} {'peak tree PSS (MiB)':>20s}")
    for options in (["--size", "256", "--max-clips", "2"], ["--size", "64", "--fps", "1"]):
        for run, name in ((r, n) for r in range(args.repeat) for n in videos):
            path = videos[name]
            out = tmp / f"tok-{name}-{options[1]}-{run}"
            cmd = [*lfq, "encode", str(path.parent), "-o", str(out), "--model", args.model,
                   "--workers", str(args.workers), "--device", "cpu", *options]
            seconds, peak = run_peak(cmd)
            print(f"{' '.join(options):32s} {name:6s} {seconds:8.1f} {peak / 2**20:20.0f}")

    many = tmp / "many"
    for d in range(args.files // 1000 + 1):
        sub = many / f"d{d:04d}"
        sub.mkdir(parents=True)
        for i in range(min(1000, args.files - d * 1000)):
            (sub / f"v{i:04d}.mp4").touch()
    base = int(subprocess.check_output([sys.executable, "-c", BASELINE_SNIPPET]).decode())
    n, shards, seconds, peak = subprocess.check_output([sys.executable, "-c", LIST_SNIPPET, str(many)]).decode().split()
    print(f"listing {int(n):,} files into {shards} shard jobs: {float(seconds):.2f} s, "
          f"peak RSS {int(peak) / 2**20:.0f} MiB ({(int(peak) - base) / 2**20:.0f} MiB over the bare import)")


if __name__ == "__main__":
    main()
