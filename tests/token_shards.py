"""An independent token-shard writer for tests: tarfile + numpy + json only, no lfqtok code, known contents.

Follows DESIGN.md §4: OUT/lfqtok.json, OUT/{shard:05d}.tar with {key}.json before {key}.tokens.npy (as
webdataset's TarWriter orders members), OUT/{shard:05d}_stats.json with the sample and clip counts.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def write_token_dir(
    root: Path,
    sizes: list[int],
    *,
    shape: tuple[int, ...] = (2, 3, 3),
    codebook_size: int = 1000,
    seed: int = 0,
    stats: bool = True,
    shapes: list[tuple[int, ...]] | None = None,
    labels: bool = False,
) -> dict[tuple[str, int], np.ndarray]:
    """Shards of `sizes[i]` samples each; sample i has 1 + i % 3 clips of `shape` uint16 tokens.

    `shapes`: mixed shapes as a `--buckets` run writes them: the sample's bucket is shapes[(s + i) % len], its json
    says "bucket", the manifest lists "buckets" and has token_shape null. `labels`: "class" and "label" in the json.
    Returns {(key, clip): tokens (t, h, w)} for every clip written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "lfqtok-tokens", "format_version": 1, "codebook_size": codebook_size, "num_codebooks": 1,
                "token_dtype": "uint16", "bit_order": "msb_first", "token_shape": list(shape)}
    if shapes:
        manifest |= {"token_shape": None, "buckets": [[8 * h, 8 * w] for _, h, w in shapes], "token_shapes": [list(x) for x in shapes]}
    (root / "lfqtok.json").write_text(json.dumps(manifest))
    written: dict[tuple[str, int], np.ndarray] = {}
    for s, n in enumerate(sizes):
        clips = 0
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(n):
                key = f"s{s}_{i}"
                this = shapes[(s + i) % len(shapes)] if shapes else shape
                tokens = rng.integers(0, codebook_size, (1 + i % 3, *this)).astype(np.uint16)
                meta = {"source": f"videos/{key}.mp4", "tokens_shape": list(tokens.shape)}
                if shapes:
                    meta["bucket"] = [8 * this[1], 8 * this[2]]
                if labels:
                    meta |= {"class": f"class{i % 2}", "label": i % 2}
                add_member(tar, f"{key}.json", json.dumps(meta).encode())
                add_member(tar, f"{key}.tokens.npy", npy_bytes(tokens))
                add_member(tar, f"{key}.txt", f"caption of {key}".encode())
                written.update({(key, c): tokens[c] for c in range(len(tokens))})
                clips += len(tokens)
        if stats:
            (root / f"{s:05d}_stats.json").write_text(json.dumps({"shard": s, "samples": n, "clips": clips, "failures": []}))
    return written


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every file of an encode's OUT by name, with its bytes; stats without their wall-clock seconds (what two runs
    that must agree byte for byte are compared by)."""
    files = {}
    for path in sorted(out.iterdir()):
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            stats.pop("seconds")
            data = json.dumps(stats, sort_keys=True).encode()
        files[path.name] = data
    return files
