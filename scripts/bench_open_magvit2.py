"""Time and peak memory of the released Open-MAGVIT2 video tokenizer's configuration on this machine.

    python scripts/bench_open_magvit2.py [--batch 1] [--threads 2] [--decode] [--size 128] [--frames 17] [--json]

Builds the released layout (ch 128, ch_mult 1,2,2,4, 4 res blocks, z 18: 370.5 M parameters) with seeded
random weights (the real ones cannot be downloaded here; speed and memory do not depend on the values),
encodes one batch of random uint8 clips with `tok.encode` (fp32, the pipeline's path), and optionally decodes
the ids. Reports seconds per call and peak RSS (ru_maxrss) after building the model and after each call.
The peak minus the built model is the activation memory of that batch; two runs with different --batch give
the memory per clip, from which docs estimate GPU batch sizes. Run each --batch in its own process: the
peak only grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lfqtok.tokenizers.open_magvit2 import OpenMagvit2Config, OpenMagvit2Tokenizer  # noqa: E402

MIB = 1 << 20


def peak_rss() -> int:
    """Peak resident bytes of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="clips per call")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--decode", action="store_true", help="also decode the ids (the decoder is the heavier half)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    start_rss = peak_rss()
    tok = OpenMagvit2Tokenizer(OpenMagvit2Config(), name="open-magvit2-video-released-random").eval()
    built_rss = peak_rss()
    params = sum(p.numel() for p in tok.parameters())
    video = torch.randint(0, 256, (args.batch, args.frames, args.size, args.size, 3), dtype=torch.uint8)
    row: dict[str, object] = {
        "config": tok.config.to_dict(), "parameters": params, "batch": args.batch, "clip": [args.frames, args.size, args.size],
        "threads": args.threads, "torch": torch.__version__, "rss_before_mib": round(start_rss / MIB),
        "weights_mib": round(params * 4 / MIB), "rss_built_mib": round(built_rss / MIB),
    }
    t0 = time.perf_counter()
    ids = tok.encode(video)
    row["encode_seconds"] = round(time.perf_counter() - t0, 2)
    row["token_shape"] = list(ids.shape)
    row["encode_peak_rss_mib"] = round(peak_rss() / MIB)
    row["encode_activation_mib"] = round((peak_rss() - built_rss) / MIB)
    if args.decode:
        t0 = time.perf_counter()
        rec = tok.decode(ids)
        row["decode_seconds"] = round(time.perf_counter() - t0, 2)
        row["decoded_shape"] = list(rec.shape)
        row["decode_peak_rss_mib"] = round(peak_rss() / MIB)
    if args.json:
        print(json.dumps(row))
        return
    for key, value in row.items():
        print(f"{key:24s} {value}")


if __name__ == "__main__":
    main()
