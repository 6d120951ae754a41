"""Time and peak memory of LFQ train (forward + backward) and eval forward, lfqtok vs vector_quantize_pytorch,
at codebook sizes 2^10 .. 2^18; the eval fast path vs a bare sign-and-pack; codec packing throughput.

    python scripts/bench_lfq.py [--device cpu|cuda] [--tokens 10240] [--bits 10,12,14,16,18] [--mem-cap-gib 16]

Every (implementation, mode, size) runs in a fresh subprocess so that peak memory is its own: on CPU the
extra peak RSS over the RSS just before the measured call, on CUDA the extra peak allocated memory. The
reference's train run is skipped where its (tokens x codes) probability tensors would pass the memory cap;
the estimate scales the bytes per (token, code) pair measured at the largest size it ran. Input: video
latents (b, D, 5, 16, 16) with b * 1280 = tokens, values N(0, std^2) (std 1: sharp code distributions
at inv_temperature 100, the cheap case for lfqtok; std 0.01: many codes above 1e-5, its costly case).
Prints markdown for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GIB = 1 << 30
TOKENS_PER_CLIP = 5 * 16 * 16
PRIOR_BYTES_PER_PAIR = 20.0  # reference train: ~5 float32 (tokens, codes) tensors alive at its peak


# worker (one measurement per process)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def worker(impl: str, mode: str, bits: int, tokens: int, device: str, repeat: int, threads: int, std: float) -> dict:
    """Build one quantizer, run it `repeat` times, return the best time (least disturbed by other load) and
    the extra peak bytes."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if impl == "bare":
        weights = (2 ** torch.arange(bits - 1, -1, -1, device=device, dtype=torch.int32)).view(-1, 1, 1, 1)
        run = lambda x: ((x > 0) * weights).sum(1, dtype=torch.int64)  # noqa: E731 - the baseline is one expression
    else:
        if impl == "lfqtok":
            from lfqtok.tokenizers.lfq import LFQ
        else:
            from vector_quantize_pytorch import LFQ
        quantizer = LFQ(codebook_size=2**bits, commitment_loss_weight=0.25).to(device).train(mode == "train")
        run = quantizer
    x = torch.randn(max(1, tokens // TOKENS_PER_CLIP), bits, 5, 16, 16, device=device) * std
    grad_weights = torch.randn_like(x)

    def call():
        if mode == "train":
            xi = x.clone().requires_grad_()
            quantized, _, aux = run(xi)
            (aux + (quantized * grad_weights).mean()).backward()
        else:
            with torch.no_grad():
                run(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if mode == "eval":
        call()  # warm-up; train runs are long enough not to need one
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        extra = torch.cuda.max_memory_allocated() - before
    else:
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"seconds": min(times), "extra_bytes": max(0, extra)}


# driver


def measure(impl: str, mode: str, bits: int, args: argparse.Namespace, tokens: int, repeat: int) -> dict:
    """Run one worker in a fresh interpreter; an error (e.g. out of memory) becomes a row, not a crash."""
    worker_args = [impl, mode, bits, tokens, args.device, repeat, args.threads, args.input_std]
    cmd = [sys.executable, __file__, "--worker", *map(str, worker_args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(result: dict) -> tuple[str, str]:
    if "skipped" in result:
        return result["skipped"], "-"
    if "error" in result:
        return f"failed: {result['error'][:60]}", "-"
    seconds, extra = result["seconds"], result["extra_bytes"]
    time_str = f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    return time_str, f"{extra / 2**20:.0f} MiB"


def bench_quantizers(args: argparse.Namespace) -> list[str]:
    header = "| codes | mode | lfqtok time | lfqtok extra peak | reference time | reference extra peak |"
    rows = [header, "|---|---|---|---|---|---|"]
    bytes_per_pair = PRIOR_BYTES_PER_PAIR
    for bits in args.bits:
        pairs = args.tokens * 2**bits
        for mode in args.modes:
            repeat = 1 if mode == "train" else args.eval_repeat
            ours = measure("lfqtok", mode, bits, args, args.tokens, repeat)
            need = bytes_per_pair * pairs
            if mode == "train" and need > args.mem_cap_gib * GIB:
                ref = {"skipped": f"skipped: would need ~{need / GIB:.0f} GiB"}
            else:
                ref = measure("reference", mode, bits, args, args.tokens, repeat)
                if mode == "train" and "extra_bytes" in ref:
                    bytes_per_pair = max(ref["extra_bytes"] / pairs, 1.0)
            rows.append(f"| 2^{bits} | {mode} | {' | '.join(fmt(ours))} | {' | '.join(fmt(ref))} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def bench_fast_path(args: argparse.Namespace) -> list[str]:
    rows = [f"| eval forward, 2^18 codes, {args.fast_tokens} tokens | time | extra peak |", "|---|---|---|"]
    labels = {
        "bare": "bare sign-and-pack `((x > 0) * w32).sum(1, dtype=int64)`",
        "lfqtok": "lfqtok.LFQ eval (indices + float32 codes)",
        "reference": "reference eval",
    }
    for impl, label in labels.items():
        runs = [measure(impl, "eval", 18, args, args.fast_tokens, args.eval_repeat) for _ in range(args.fast_runs)]
        result = min(runs, key=lambda r: r.get("seconds", float("inf")))
        rows.append(f"| {label} | {' | '.join(fmt(result))} |")
    return rows


def bench_codec(count: int, bits: int = 18, repeat: int = 3) -> list[str]:
    import numpy as np

    from lfqtok.io.codec import pack_bits, unpack_bits

    values = np.random.default_rng(0).integers(0, 2**bits, count)
    pack_s, unpack_s = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        packed = pack_bits(values, bits)
        mid = time.perf_counter()
        restored = unpack_bits(packed, bits, count)
        pack_s.append(mid - start)
        unpack_s.append(time.perf_counter() - mid)
    if not np.array_equal(restored, values):
        raise SystemExit("codec round trip failed")
    return [
        f"| tight packing, D={bits}, {count:,} tokens | tokens/s |",
        "|---|---|",
        f"| pack_bits | {count / min(pack_s) / 1e6:.1f} M |",
        f"| unpack_bits | {count / min(unpack_s) / 1e6:.1f} M |",
        f"| bytes per token | {packed.size / count:.3f} (uint32 storage: 4) |",
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, mode, bits, tokens, device, repeat, threads, std = sys.argv[2:10]
        print(json.dumps(worker(impl, mode, int(bits), int(tokens), device, int(repeat), int(threads), float(std))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input-std", type=float, default=1.0, help="latent std: smaller = softer code distributions")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch default)")
    parser.add_argument("--tokens", type=int, default=10240, help="tokens per train/eval call (multiple of 1280)")
    parser.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=[10, 12, 14, 16, 18])
    parser.add_argument("--mem-cap-gib", type=float, default=16.0, help="skip reference runs that would need more")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["train", "eval"], help="train,eval or one")
    parser.add_argument("--eval-repeat", type=int, default=20, help="eval calls per process; the best counts")
    parser.add_argument("--fast-tokens", type=int, default=64 * TOKENS_PER_CLIP, help="tokens for the fast-path table")
    parser.add_argument("--fast-runs", type=int, default=3, help="fresh processes per fast-path row; the best counts")
    parser.add_argument("--codec-tokens", type=int, default=10_000_000)
    args = parser.parse_args()
    import torch

    threads = args.threads or torch.get_num_threads()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {threads} torch threads"
    print(f"device: {device_name}; torch {torch.__version__}; {args.tokens} tokens per call; std {args.input_std}\n")
    for table in (bench_quantizers(args), bench_fast_path(args), bench_codec(args.codec_tokens)):
        print("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
