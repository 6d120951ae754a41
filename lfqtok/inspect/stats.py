"""`token_stats`: codebook usage of token shards (DESIGN.md §5), exact, streamed in bounded memory.

One task per shard in worker processes; each counts codes per (codebook c, temporal token index t) with one
`np.bincount` per ~1M tokens (dense, up to 2^24 bins) or `np.unique` + merge (sparse, above); the main process
adds the partial counts. Every metric (entropy, per-bit balance, bit-pair mutual information) is computed
exactly from the merged histogram, never per token. Numpy only: no torch import.

Per-bit metrics (`bit_balance`, bit-pair mutual information, dead and redundant bits) are indexed by latent
channel: entry i is the sign of channel i. With the manifest's `bit_order` "msb_first" (lfqtok's own models,
and tokens without a manifest) channel i is index bit D-1-i, so i = 0 is the most significant bit (DESIGN §5);
with "lsb_first" (Open-MAGVIT2) channel i is index bit i, so i = 0 is the least significant bit. The result
names the order in `bit_order`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..io import storage
from ..errors import InputError, OutputError, UsageError
from ..io.shards import BIT_ORDERS, META_MEMBER, TOKENS_MEMBER, expand_paths, iter_members, load_npy, read_manifest

# constants

DENSE_BINS = 1 << 24  # (c, t, code) bins counted by bincount; more -> sparse counting
FLUSH_TOKENS = 1 << 20  # tokens buffered before one bincount: amortizes the pass over the histogram
BIT_CHUNK = 1 << 20  # distinct codes expanded to bits at once (bounds the (codes, D) matrix)
DEAD_BALANCE = 0.01  # a bit set in under 1% (or over 99%) of tokens carries almost no information
REDUNDANT_MI = 0.1  # bits of mutual information that flag a pair of bits as redundant
MAX_LISTED = 10  # redundant bit pairs listed
MAX_BIT_TICKS = 24  # bit-balance plot: every bit labelled up to this many bits, every 2nd, 3rd, ... above
SPARSE_SHIFT = 32  # sparse key: ((c << 16) | t) << 32 | code
BY = (None, "shard", "source")
MAX_WORKERS = 256  # reader processes: more than any machine's useful count

# helpers


def exists(v: Any) -> bool:
    return v is not None


def next_pow2(n: int) -> int:
    return 1 << max(1, math.ceil(math.log2(max(n, 2))))


def entropy_bits(counts: np.ndarray) -> float:
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum())


def as_4d(arr: np.ndarray, where: str) -> np.ndarray:
    """Tokens (n, t, h, w) [+ (c)] -> (n, t, h*w, c) view."""
    if arr.ndim not in (4, 5) or arr.dtype.kind not in "iu":
        raise InputError(f"{where}: tokens must be integers of shape (clips, t, h, w) [+ (c)], got {arr.dtype} {arr.shape}")
    n, t = arr.shape[:2]
    c = arr.shape[4] if arr.ndim == 5 else 1
    if t >= 1 << 16 or c >= 1 << 15:
        raise InputError(f"{where}: {t} token indices or {c} codebooks per position are more than stats counts")
    return arr.reshape(n, t, -1, c).astype(np.int64 if arr.dtype == np.uint64 else arr.dtype, copy=False)  # u64+i64 -> float


# exact streaming histogram


@dataclass
class CodeCounts:
    """Exact counts per (codebook c, temporal token index t, code): dense (c, t, k) array or sparse sorted keys.

    `codebook_size` None: inferred as the next power of two above the largest code (k grows as codes come).
    """

    codebook_size: int | None
    c: int = 0
    t: int = 0
    k: int = 2
    max_code: int = -1
    dense: np.ndarray | None = None  # (c, t, k) int64
    keys: np.ndarray | None = None  # sparse: sorted int64 ((c << 16) | t) << 32 | code
    counts: np.ndarray | None = None
    buffer: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0

    def __post_init__(self) -> None:
        self.k = self.codebook_size or self.k

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (worker -> main) with a mostly-empty dense histogram as its nonzero bins, in the smallest dtypes."""
        state = dict(self.__dict__)
        if exists(self.dense):
            flat = np.flatnonzero(self.dense)
            values = self.dense.reshape(-1)[flat]
            state["dense"] = (self.dense.shape, flat.astype(np.min_scalar_type(self.dense.size)),
                              values.astype(np.min_scalar_type(int(values.max(initial=0)))))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if exists(state["dense"]):
            shape, flat, values = state["dense"]
            state["dense"] = np.zeros(shape, np.int64)
            state["dense"].reshape(-1)[flat] = values
        self.__dict__.update(state)

    def add(self, arr: np.ndarray, where: str) -> None:
        """Count one token array (n, t, h, w) [+ (c)]."""
        arr = as_4d(arr, where)
        if self.c and arr.shape[3] != self.c:
            raise InputError(f"{where}: tokens have {arr.shape[3]} codebooks, earlier ones {self.c}")
        if arr.size:
            top, low = int(arr.max()), int(arr.min())
            if low < 0:
                raise InputError(f"{where}: negative token id {low}")
            if exists(self.codebook_size) and top >= self.codebook_size:
                raise InputError(f"{where}: token id {top} >= codebook_size {self.codebook_size} of the manifest")
            self.max_code = max(self.max_code, top)
        self.c = arr.shape[3]
        self.buffer.append(arr)
        self.buffered += arr.size
        if self.buffered >= FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        t = max(self.t, max(a.shape[1] for a in self.buffer))
        k = self.codebook_size or max(self.k, next_pow2(self.max_code + 1))
        self._resize(t, k)
        keys = np.concatenate([(a + self._offsets(a.shape[1])[:, None, :]).ravel() for a in self.buffer])
        self.buffer, self.buffered = [], 0
        if exists(self.dense):
            self.dense += np.bincount(keys, minlength=self.dense.size).reshape(self.dense.shape)
        else:
            self._merge_sparse(*np.unique(keys, return_counts=True))

    def merge(self, other: "CodeCounts") -> None:
        """Add another partial (both flushed)."""
        if self.c and other.c and self.c != other.c:
            raise InputError(f"token shards with {self.c} and {other.c} codebooks cannot be counted together")
        self.c = self.c or other.c
        self.max_code = max(self.max_code, other.max_code)
        self._resize(max(self.t, other.t), max(self.k, other.k))
        if exists(self.dense) and exists(other.dense):
            o = other.dense
            self.dense[: o.shape[0], : o.shape[1], : o.shape[2]] += o
        else:
            self._to_sparse()
            self._merge_sparse(*other.sparse())

    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, counts) of the nonzero bins, keys as in the sparse layout."""
        if exists(self.keys):
            return self.keys, self.counts
        if not exists(self.dense):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        flat = np.flatnonzero(self.dense)
        ci, ti, code = np.unravel_index(flat, self.dense.shape)
        return ((ci << 16 | ti) << SPARSE_SHIFT) | code, self.dense.reshape(-1)[flat]

    def select(self, c: int | None = None, t: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(codes, counts), codes ascending, of one codebook and/or one token index (None: pooled)."""
        if exists(self.dense):
            hist = self.dense if c is None else self.dense[c : c + 1]
            hist = (hist if t is None else hist[:, t : t + 1]).sum(axis=(0, 1))
            codes = np.flatnonzero(hist)
            return codes, hist[codes]
        keys, counts = self.sparse()
        keep = np.ones(keys.size, bool)
        if exists(c):
            keep &= (keys >> (SPARSE_SHIFT + 16)) == c
        if exists(t):
            keep &= ((keys >> SPARSE_SHIFT) & 0xFFFF) == t
        codes, inverse = np.unique(keys[keep] & ((1 << SPARSE_SHIFT) - 1), return_inverse=True)
        return codes, np.bincount(inverse, weights=counts[keep], minlength=codes.size).astype(np.int64)

    # helpers

    def _offsets(self, t: int) -> np.ndarray:
        """(t, c) int64 added to codes to get their bin: dense flat index or sparse key."""
        ti, ci = np.arange(t, dtype=np.int64)[:, None], np.arange(self.c, dtype=np.int64)[None, :]
        if exists(self.dense):
            return (ci * self.t + ti) * self.k
        return (ci << 16 | ti) << SPARSE_SHIFT

    def _resize(self, t: int, k: int) -> None:
        self.t, self.k = t, k
        if exists(self.keys) or self.c * t * k > DENSE_BINS:
            self._to_sparse()
        elif not exists(self.dense):
            self.dense = np.zeros((self.c, t, k), np.int64)
        elif self.dense.shape != (self.c, t, k):
            c0, t0, k0 = self.dense.shape
            self.dense = np.pad(self.dense, ((0, self.c - c0), (0, t - t0), (0, k - k0)))

    def _to_sparse(self) -> None:
        if not exists(self.keys):
            self.keys, self.counts = self.sparse()
            self.dense = None

    def _merge_sparse(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add sorted unique (keys, counts) into the sorted sparse histogram: O(n + m log n), no re-sort."""
        at = np.searchsorted(self.keys, keys)
        seen = at < self.keys.size
        seen[seen] = self.keys[at[seen]] == keys[seen]
        self.counts[at[seen]] += counts[seen]
        new = ~seen
        self.keys = np.insert(self.keys, at[new], keys[new])
        self.counts = np.insert(self.counts, at[new], counts[new].astype(np.int64))


# per-shard work (runs in worker processes)


@dataclass
class ShardCounts:
    """What one shard task returns: its histogram, sample count, (by='source') per-sample rows and (buckets)
    per-bucket totals."""

    path: str
    counts: CodeCounts
    num_samples: int
    sources: list[dict[str, Any]]
    buckets: dict[tuple[int, ...], list[int]] = field(default_factory=dict)  # (H, W) -> [samples, clips, tokens]
    scenes: Counter = field(default_factory=Counter)  # --scenes runs: ("video", n scenes) and ("scene", n clips) -> count


def scene_counts(meta: dict[str, Any]) -> Counter:
    """One sample of a `--scenes` run: its scene count and each scene's clip count, as histogram entries."""
    per_scene = Counter(meta.get("clip_scenes", []))
    scenes = len(meta["scenes"])
    return Counter({("video", scenes): 1}) + Counter(("scene", per_scene.get(i, 0)) for i in range(scenes))


def scene_summary(hist: Counter) -> dict[str, Any]:
    """Scenes per video and clips per scene (mean, min, max) from the merged histogram; `scenes_too_short`: scenes
    with no clip (shorter than one clip)."""
    def spread(kind: str) -> dict[str, float]:
        values = {n: c for (k, n), c in hist.items() if k == kind}
        total = sum(values.values())
        mean = sum(n * c for n, c in values.items()) / total if total else 0.0
        return {"mean": round(mean, 3), "min": min(values, default=0), "max": max(values, default=0)}

    videos = sum(c for (k, _), c in hist.items() if k == "video")
    scenes = sum(c for (k, _), c in hist.items() if k == "scene")
    return {"num_videos": videos, "num_scenes": scenes, "scenes_per_video": spread("video"),
            "clips_per_scene": spread("scene"), "scenes_too_short": hist.get(("scene", 0), 0)}


def count_shard(path: str, codebook_size: int | None, by_source: bool, by_bucket: bool = False, storage_options: dict | None = None,
                by_scene: bool = False) -> ShardCounts:
    """Stream one tar (a path or URL): every sample's tokens into one `CodeCounts` (memory: one histogram + ~1M
    tokens); with `by_bucket`, samples, clips and tokens per bucket of the samples' json; with `by_scene`, the
    histograms of scenes per video and clips per scene."""
    counts, samples, sources, buckets, scenes = CodeCounts(codebook_size), 0, [], {}, Counter()
    want = {TOKENS_MEMBER, META_MEMBER} if by_source or by_bucket or by_scene else {TOKENS_MEMBER}
    for key, sample in iter_members(storage.location(path), want, storage_options):
        if TOKENS_MEMBER not in sample:
            continue
        where = f"{path}:{key}"
        tokens = load_npy(sample[TOKENS_MEMBER], where)
        counts.add(tokens, where)
        samples += 1
        if by_source:
            sources.append(_source_row(key, path, tokens, sample.get(META_MEMBER)))
        if by_bucket:
            bucket = json.loads(sample[META_MEMBER]).get("bucket") if META_MEMBER in sample else None
            row = buckets.setdefault(tuple(bucket) if isinstance(bucket, list) else (), [0, 0, 0])
            row[0], row[1], row[2] = row[0] + 1, row[1] + len(tokens), row[2] + int(tokens.size)
        if by_scene and META_MEMBER in sample:
            meta = json.loads(sample[META_MEMBER])
            scenes += scene_counts(meta) if "scenes" in meta else Counter()
    counts.flush()
    return ShardCounts(path, counts, samples, sources, buckets, scenes)


def _source_row(key: str, path: str, tokens: np.ndarray, meta: bytes | None) -> dict[str, Any]:
    _, n = np.unique(tokens, return_counts=True)
    source = json.loads(meta).get("source") if meta else None
    return {"key": key, "source": source, "shard": path, "num_tokens": int(tokens.size), "used_codes": int(n.size),
            "entropy_bits": entropy_bits(n)}


def _count_task(args: tuple[str, int | None, bool, bool, dict | None, bool]) -> ShardCounts:
    return count_shard(*args)


# metrics


def bit_counts(codes: np.ndarray, counts: np.ndarray, bits: int, bit_order: str = "msb_first") -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel ones (D,) and pairwise both-ones (D, D) token counts, chunked over codes.

    Entry i is latent channel i: the most significant index bit for "msb_first", the least for "lsb_first"."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64) if bit_order == "msb_first" else np.arange(bits, dtype=np.int64)
    ones, both = np.zeros(bits), np.zeros((bits, bits))
    for start in range(0, codes.size, BIT_CHUNK):
        b = ((codes[start : start + BIT_CHUNK, None].astype(np.int64) >> shifts) & 1).astype(np.float64)  # (n, D)
        w = counts[start : start + BIT_CHUNK].astype(np.float64)
        ones += w @ b
        both += b.T @ (b * w[:, None])  # float64 sums of integers stay exact below 2^53 tokens
    return np.rint(ones).astype(np.int64), np.rint(both).astype(np.int64)


def mutual_information(ones: np.ndarray, both: np.ndarray, n: int) -> np.ndarray:
    """(D, D) mutual information in bits between bit pairs from their 2x2 joint counts (diagonal: bit entropy)."""
    if n == 0:
        return np.zeros_like(both, dtype=np.float64)
    a, b = ones[:, None].astype(np.float64), ones[None, :].astype(np.float64)
    n11 = both.astype(np.float64)
    joint = np.stack([n - a - b + n11, b - n11, a - n11, n11]) / n  # p(00), p(01), p(10), p(11)
    pa, pb = a / n, b / n
    marg = np.stack([(1 - pa) * (1 - pb), (1 - pa) * pb, pa * (1 - pb), pa * pb])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log2(joint / marg), 0.0)
    return np.maximum(terms.sum(axis=0), 0.0)


def code_metrics(codes: np.ndarray, counts: np.ndarray, codebook_size: int, top: int, bit_order: str = "msb_first") -> dict[str, Any]:
    """DESIGN §5 metrics of one code distribution, plus bit-pair mutual information and flagged bits.

    Per-bit entries are indexed by latent channel (see `bit_counts`), whatever the ids' bit order."""
    n = int(counts.sum())
    bits = max(1, math.ceil(math.log2(codebook_size)))
    ones, both = bit_counts(codes, counts, bits, bit_order)
    mi = mutual_information(ones, both, n)
    balance = ones / n if n else np.zeros(bits)
    h = entropy_bits(counts)
    order = np.lexsort((codes, -counts))[:top]  # most frequent first, ties by code
    pairs = [(i, j, float(mi[i, j])) for i in range(bits) for j in range(i + 1, bits) if mi[i, j] >= REDUNDANT_MI]
    return {
        "num_tokens": n,
        "used_codes": int(codes.size),
        "utilization": codes.size / codebook_size,
        "entropy_bits": h,
        "perplexity": 2.0**h,
        "bit_balance": balance.tolist(),
        "top": [[int(codes[i]), int(counts[i])] for i in order],
        "bit_mutual_information": mi.round(6).tolist(),
        "dead_bits": [i for i, p in enumerate(balance) if n and (p <= DEAD_BALANCE or p >= 1 - DEAD_BALANCE)],
        "redundant_bit_pairs": [[i, j, round(v, 6)] for i, j, v in sorted(pairs, key=lambda p: -p[2])[:MAX_LISTED]],
    }


def usage_summary(codes: np.ndarray, counts: np.ndarray, codebook_size: int | None = None) -> dict[str, Any]:
    """Tokens, used codes, entropy, perplexity (and utilization when the codebook size is known)."""
    h = entropy_bits(counts)
    row = {"num_tokens": int(counts.sum()), "used_codes": int(codes.size), "entropy_bits": h, "perplexity": 2.0**h}
    return row | ({"utilization": codes.size / codebook_size} if codebook_size else {})


# the entry point


def token_stats(
    paths: Sequence[str | Path] | str | Path,
    *,
    top: int = 10,
    workers: int | None = None,
    by: str | None = None,
    plot: Path | None = None,
    storage_options: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Codebook usage of token dirs / tars / brace patterns: DESIGN §5 keys, bit-pair MI, usage by token index t.

    `by` "shard" | "source" adds `per_shard` / `per_source` rows; `plot` writes a PNG (needs matplotlib). Shards of a
    `--buckets` run (the manifest lists them) add `per_bucket`: samples, clips and tokens of each bucket; those of a
    `--scenes` run add `scenes`: scenes per video and clips per scene.
    Without a manifest the codebook size is the next power of two above the largest code (`codebook_size_inferred`).
    `on_progress(shards counted, shards in all)` follows the work.
    """
    if by not in BY:
        raise UsageError(f"--by must be 'shard' or 'source', got {by!r}")
    if top < 0 or (exists(workers) and not 1 <= workers <= MAX_WORKERS):
        raise UsageError(f"--top must be >= 0 and --workers in [1, {MAX_WORKERS}], got {top} and {workers}")
    tars = expand_paths(paths, storage_options)
    if not tars:
        raise InputError(f"no finished token shards in {', '.join(map(str, [paths] if isinstance(paths, (str, Path)) else paths))}")
    manifest = _common_manifest(tars, storage_options)
    size = manifest["codebook_size"] if manifest else None
    order = manifest.get("bit_order", "msb_first") if manifest else "msb_first"
    if order not in BIT_ORDERS:
        raise InputError(f"the manifest's bit_order {order!r} is not one of {', '.join(BIT_ORDERS)}")
    listed = [tuple(b) for b in manifest.get("buckets") or []] if manifest else []
    scened = bool(manifest and manifest.get("clip", {}).get("scenes"))  # a --scenes run
    tasks = [(str(p), size, by == "source", bool(listed), storage_options, scened) for p in tars]
    total, samples, shard_rows, sources, scenes = CodeCounts(size), 0, {}, [], Counter()
    buckets: dict[tuple[int, ...], list[int]] = {b: [0, 0, 0] for b in listed}
    if on_progress is not None:
        on_progress(0, len(tasks))
    for done, part in enumerate(_run(tasks, workers or min(len(tasks), os.cpu_count() or 1)), 1):
        if on_progress is not None:
            on_progress(done, len(tasks))
        total.merge(part.counts)
        samples += part.num_samples
        sources += part.sources
        scenes += part.scenes
        for bucket, row in part.buckets.items():
            buckets[bucket] = [a + b for a, b in zip(buckets.get(bucket, [0, 0, 0]), row)]
        if by == "shard":
            shard_rows[part.path] = {"shard": part.path, "num_samples": part.num_samples, **usage_summary(*part.counts.select())}
    codebook_size = size or next_pow2(total.max_code + 1)
    metrics = code_metrics(*total.select(), codebook_size, top, order)
    result = {
        "num_samples": samples,
        "num_tokens": metrics.pop("num_tokens"),
        "codebook_size": codebook_size,
        "num_codebooks": manifest["num_codebooks"] if manifest else max(total.c, 1),
        **metrics,
        "codebook_size_inferred": manifest is None,
        "bit_order": order,
    }
    if total.c > 1:
        result["per_codebook"] = [code_metrics(*total.select(c=c), codebook_size, top, order) for c in range(total.c)]
    result["usage_by_position"] = [{"t": t, **usage_summary(*total.select(t=t), codebook_size)} for t in range(total.t)]
    if listed:  # --buckets runs: totals per bucket, in the manifest's order (samples without one last, bucket null)
        result["per_bucket"] = [{"bucket": list(b) or None, "num_samples": n, "num_clips": c, "num_tokens": t}
                                for b, (n, c, t) in buckets.items()]
    if scened:
        result["scenes"] = scene_summary(scenes)
    if by == "shard":
        result["per_shard"] = [{**shard_rows[str(p)], "shard": storage.redact(str(p)),  # a presigned URL's signature stays here
                                "utilization": shard_rows[str(p)]["used_codes"] / codebook_size} for p in tars]
    if by == "source":
        order = {str(p): i for i, p in enumerate(tars)}
        rows = sorted(sources, key=lambda r: order[r["shard"]])  # stable: sample order within a shard
        result["per_source"] = [{**r, "shard": storage.redact(r["shard"])} for r in rows]
    if exists(plot):
        plot_stats(total, result, Path(plot))
    return result


def _common_manifest(tars: Sequence[Path | str], storage_options: dict | None = None) -> dict | None:
    """The manifest the shards share (from their directories); shards of different codebooks or bit orders are
    refused, naming each directory's codebook."""
    found = {d: m for d in dict.fromkeys(map(storage.parent, tars)) if (m := read_manifest(d, storage_options))}
    kinds = {d: (m["codebook_size"], m["num_codebooks"], m.get("bit_order", "msb_first")) for d, m in found.items()}
    if len(set(kinds.values())) > 1:
        described = "; ".join(f"{storage.redact(str(d))}: {n:,} codes x {c} codebook(s), {order}" for d, (n, c, order) in kinds.items())
        raise InputError(f"token shards of different codebooks cannot be counted together ({described})")
    return next(iter(found.values()), None)


def _run(tasks: list[tuple[str, int | None, bool, bool, dict | None, bool]], workers: int) -> Iterator[ShardCounts]:
    """Shard results as they finish: in-process for one worker, else a process pool with bounded tasks in flight."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_count_task, tasks)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"  # fork: instant, no re-run of __main__
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        pending, queue = set(), iter(tasks)
        for task in queue:
            pending.add(pool.submit(_count_task, task))
            if len(pending) < 2 * workers:
                continue
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
        for future in pending:
            yield future.result()


# plot


def plot_stats(counts: CodeCounts, result: dict, path: Path) -> None:
    """PNG: sorted code frequencies (log scale), per-bit balance, entropy by temporal token index."""
    fig = stats_figure(counts, result)
    import matplotlib.pyplot as plt

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def stats_figure(counts: CodeCounts, result: dict) -> Any:
    """The matplotlib figure `plot_stats` saves (UsageError without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'lfqtok[plot]'") from None
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4))
    for c in range(max(counts.c, 1)):
        freq = np.sort(counts.select(c=c)[1])[::-1]
        ax0.loglog(np.arange(1, freq.size + 1), freq / max(freq.sum(), 1), label=f"codebook {c}")
    ax0.set(title=f"code frequencies ({result['used_codes']:,} of {result['codebook_size']:,} used)",
            xlabel="rank", ylabel="frequency")
    if counts.c > 1:
        ax0.legend()
    balance = result["bit_balance"]
    ax1.bar(range(len(balance)), balance)
    ax1.axhline(0.5, color="gray", linestyle="--")
    significant = "MSB" if result.get("bit_order", "msb_first") == "msb_first" else "LSB"
    ax1.set(title=f"bit balance (channel 0 = {significant})", xlabel="latent channel (bit)", ylabel="fraction of 1s", ylim=(0, 1))
    ax1.set_xticks(range(0, len(balance), math.ceil(len(balance) / MAX_BIT_TICKS)))  # whole bits, every one up to 24
    usage = result["usage_by_position"]
    ax2.bar([u["t"] for u in usage], [u["entropy_bits"] for u in usage])
    ax2.set(title="entropy by temporal token index", xlabel="t", ylabel="bits")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))  # token indices are whole numbers too
    fig.tight_layout()
    return fig
