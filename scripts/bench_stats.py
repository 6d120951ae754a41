"""`lfqtok stats` against the bare loop users write first (open each tar, np.load each array, bincount it).

Both run as fresh processes, start-up (interpreter, imports, worker processes) included, on the same
generated token dir: SHARDS shards x SAMPLES samples of (2, 5, 16, 16) uint32 tokens, 2^18 codes, a skewed
(Zipf) code distribution. Prints seconds, tokens/s and the ratio (target: lfqtok <= 3x the bare loop).

    .venv/bin/python scripts/bench_stats.py [--shards 20] [--samples 200] [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lfqtok.io.shards import ShardWriter, build_manifest, prepare_output

CODEBOOK = 1 << 18
SHAPE = (2, 5, 16, 16)  # (clips, t, h, w): two 17-frame clips at 128x128

BARE_LOOP = """
import io, sys, tarfile, numpy as np
from pathlib import Path
counts = np.zeros(1 << 18, np.int64)
for path in sorted(Path(sys.argv[1]).glob("*.tar")):
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith(".tokens.npy"):
                tokens = np.load(io.BytesIO(tar.extractfile(member).read()))
                counts += np.bincount(tokens.ravel(), minlength=counts.size)
print(int(counts.sum()))
"""

LFQTOK = """
import sys
from lfqtok.inspect.stats import token_stats
workers = int(sys.argv[2]) if len(sys.argv) > 2 else None
print(token_stats([sys.argv[1]], workers=workers)["num_tokens"])
"""


def make_tokens(out: Path, shards: int, samples: int) -> int:
    """Write the token dir with lfqtok's writer; returns the number of tokens."""
    rng = np.random.default_rng(0)
    manifest = build_manifest(codebook_size=CODEBOOK, num_codebooks=1, tokenizer_name="bench", tokenizer_sha256="0" * 64,
                              tokenizer_config={}, clip_frames=17, size=128, token_shape=list(SHAPE[1:]), extra={})
    prepare_output(out, manifest, overwrite=True)
    for index in range(shards):
        with ShardWriter(out, index, np.uint32) as writer:
            for i in range(samples):
                writer.write(f"s{index:05d}_{i:05d}", rng.zipf(1.3, SHAPE) % CODEBOOK, {"source": f"video{i}.mp4"})
            writer.finish({"samples": samples})
    return shards * samples * int(np.prod(SHAPE))


def timed(code: str, *args: str, repeats: int) -> tuple[float, int]:
    """Best wall time of `repeats` fresh processes running `code`, and what it printed (the token count)."""
    best, printed = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        printed = int(subprocess.check_output([sys.executable, "-c", code, *args]).decode())
        best = min(best, time.perf_counter() - start)
    return best, printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="lfqtok reader processes [default: cores]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tokens"
        tokens = make_tokens(out, args.shards, args.samples)
        bare_s, bare_n = timed(BARE_LOOP, str(out), repeats=args.repeats)
        extra = [] if args.workers is None else [str(args.workers)]
        ours_s, ours_n = timed(LFQTOK, str(out), *extra, repeats=args.repeats)
    if not bare_n == ours_n == tokens:
        raise SystemExit(f"token counts differ: bare {bare_n}, lfqtok {ours_n}, written {tokens}")
    print(f"{args.shards} shards x {args.samples} samples of {SHAPE} uint32, {CODEBOOK:,} codes: {tokens:,} tokens")
    print(f"bare loop (tarfile + np.load + bincount): {bare_s:6.2f} s  {tokens / bare_s:12,.0f} tokens/s")
    print(f"lfqtok token_stats (all metrics):        {ours_s:6.2f} s  {tokens / ours_s:12,.0f} tokens/s")
    print(f"ratio lfqtok / bare loop: {ours_s / bare_s:.2f}x (best of {args.repeats}, start-up included)")


if __name__ == "__main__":
    main()
