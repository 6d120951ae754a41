"""Make a trained tokenizer the embedded default: `python scripts/release_default.py RUN/tokenizer.safetensors`.

Writes lfqtok/tokenizers/weights/default.safetensors with float16 weights (half the bytes of fp32; they load back into an
fp32 model) and reports its size, sha256, and how far the half-precision copy is from the fp32 one on random
clips (ids that differ, decoded pixels). Check the release with scripts/eval_tokenizer.py before committing:
every version stays in git history, so ship only one that is measurably better.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lfqtok.tokenizers.model import load_tokenizer, save_tokenizer  # noqa: E402

TARGET = ROOT / "lfqtok" / "tokenizers" / "weights" / "default.safetensors"


def main(source: str, target: Path = TARGET) -> None:
    full = load_tokenizer(source)
    save_tokenizer(full, target, name="lfqtok-default", dtype=torch.float16)
    half = load_tokenizer(target)
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (2, 17, 128, 128, 3), dtype=torch.uint8, generator=g)
    video = torch.nn.functional.avg_pool3d(video.float().permute(0, 4, 1, 2, 3), 3, 1, 1).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    a, b = full.encode(video), half.encode(video)
    da, db = full.decode(a).int(), half.decode(a).int()
    data = target.read_bytes()
    print(f"{target}: {len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()}")
    print(f"fp16 vs fp32 on 2 random 17x128x128 clips: {(a != b).float().mean().item():.2%} of ids differ, "
          f"decoded pixels differ by at most {(da - db).abs().max().item()} (mean {(da - db).abs().float().mean().item():.4f})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
