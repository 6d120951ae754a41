"""`TokenDataset`: token shards -> training items for torch, each clip once per epoch over ranks and workers.

Built from webdataset's pieces: `tar_file_expander` streams a shard's members, `group_by_keys` makes samples of
them, `shuffle` is the shuffle buffer. What lfqtok adds is the split of an epoch over (rank, worker) slots that
loses and repeats nothing, items as clips, flat sequences or packed blocks, and an exact resume.

Splitting (S shards in the epoch's order, N = world_size * num_workers slots, slot = rank * num_workers + worker):
the first S - S % N shards go whole, shard p to slot p % N; each of the last S % N shards (all of them when
S < N) is read by the slots n with n % (S % N) equal to its place among them, which keep its samples in turn
(sample i to the (i mod k)-th of its k readers). So every sample is in exactly one slot, whatever the shard
sizes; ranks may still get different numbers of items when shards differ in size.

Token ids in flat sequences: 0 .. codebook_size - 1 are codes; the special ids sit past the codebook at
codebook_size + k: k = 0 BOS, 1 EOS, 2 frame separator (between latent frames), 3 padding (packed blocks only).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..io import storage
from ..errors import InputError, UsageError
from .handoff import SharedBatch, numpy_dtype
from ..io.shards import CAPTION_MEMBER, META_MEMBER, TOKENS_MEMBER, expand_paths, load_npy, open_shard, read_manifest, split_member

# constants

BOS, EOS, SEP, PAD = 0, 1, 2, 3  # special ids are codebook_size + these
NUM_SPECIAL = 4
HANDLERS = ("raise", "warn")
ITEM_KEYS = ("label", "class", "bucket")  # sample json fields that items carry when a sample has them
READ_BUFFER = 1 << 20  # bytes per read of a shard: fewer reads, each a GIL release a worker must win back

Handler = str | Callable[[InputError], Any]

# helpers


def exists(v: Any) -> bool:
    return v is not None


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit arguments win, else torch.distributed when initialized, else RANK and
    WORLD_SIZE from the environment (as torchrun sets them), else (0, 1)."""
    if not exists(rank) or not exists(world_size):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            try:
                found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
            except ValueError:
                raise UsageError(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} must be integers") from None
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise UsageError(f"rank must be in [0, world_size), got rank {rank} of world_size {world_size}")
    return int(rank), int(world_size)


def shard_plan(num_shards: int, slots: int, slot: int) -> list[tuple[int, int, int]]:
    """(shard position, k, j) per shard slot `slot` of `slots` reads: it keeps the samples i with i % k == j.

    Whole shards in turn while every slot can have one; the remaining S % N shards are shared (module docstring).
    """
    whole = num_shards - num_shards % slots
    plan = [(p, 1, 0) for p in range(slot, whole, slots)]
    rest = num_shards - whole
    if rest:
        q = slot % rest
        plan.append((whole + q, len(range(q, slots, rest)), slot // rest))
    return plan


def worker_resume(skip: int, workers: int, worker: int, batch_size: int) -> tuple[int, int]:
    """(role, items to skip) of DataLoader worker `worker` resuming after its rank consumed `skip` items.

    A DataLoader takes one batch of `batch_size` items from each of its `workers` in turn, starting at worker 0,
    so the worker whose turn came next takes role 0's place: worker w plays the worker (w + batches) % workers
    of the interrupted run, and the batches after the resume come in the order they would have come."""
    full, partial = divmod(skip, batch_size)
    role = (worker + full) % workers
    return role, len(range(role, full, workers)) * batch_size + (partial if full % workers == role else 0)


def flat_length(shape: Sequence[int], bos: bool, eos: bool, sep: bool) -> int:
    """Length of the flat sequence of one clip of token shape (t, h, w) [+ (c)]."""
    return math.prod(shape) + int(bos) + int(eos) + (shape[0] - 1 if sep else 0)


def flatten(tokens: torch.Tensor, codebook_size: int, bos: bool, eos: bool, sep: bool) -> torch.Tensor:
    """Clip (t, h, w) [+ (c)] -> (n,) in raster order: t, then h, then w (then c), with the asked special ids."""
    t = tokens.shape[0]
    body = tokens.reshape(t, -1)  # (t, h*w[*c])
    if sep:
        body = torch.cat([body, body.new_full((t, 1), codebook_size + SEP)], dim=1).reshape(-1)[:-1]
    else:
        body = body.reshape(-1)
    head = [body.new_full((1,), codebook_size + BOS)] if bos else []
    tail = [body.new_full((1,), codebook_size + EOS)] if eos else []
    return torch.cat(head + [body] + tail) if head or tail else body


def collate(items: Sequence[dict[str, Any]]) -> Any:
    """Items -> one batch dict, as torch's default_collate makes it for clips: tensors stacked, integer arrays
    stacked as int64, ints as an int64 tensor, the rest as lists (packed blocks' `documents` too).

    In a DataLoader worker the stacked tensors are written into reused shared memory and what is returned is a
    handle that becomes the batch dict when the main process receives it (`lfqtok.dataset.handoff`): use it as the
    DataLoader's collate_fn, not inside other worker code."""
    first = items[0]
    specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for k, v in first.items():
        if torch.is_tensor(v) or isinstance(v, np.ndarray):
            odd = next((it for it in items if tuple(it[k].shape) != tuple(v.shape)), None)
            if odd is not None:
                raise UsageError(f"cannot batch {k} of shapes {tuple(v.shape)} ({first.get('key', 'item 0')}) and "
                                 f"{tuple(odd[k].shape)} ({odd.get('key', 'a later item')}): batch them in the dataset "
                                 "(batch_size=, which groups by shape), or pack them (flat=True with seq_len)")
            dtype = numpy_dtype(v.dtype) if torch.is_tensor(v) else np.dtype(np.int64)
            if dtype is not None:
                specs[k] = ((len(items), *v.shape), dtype)
        elif isinstance(v, int) and not isinstance(v, bool):
            specs[k] = ((len(items),), np.dtype(np.int64))
    batch = SharedBatch(specs)
    for k, out in batch.arrays.items():
        if torch.is_tensor(first[k]):
            torch.stack([it[k] for it in items], out=torch.from_numpy(out))
        elif isinstance(first[k], np.ndarray):
            np.stack([it[k] for it in items], out=out, casting="unsafe")  # widened as astype would
        else:
            out[:] = [it[k] for it in items]
    rest = {k: torch.stack([it[k] for it in items]) if torch.is_tensor(first[k]) else [it[k] for it in items]
            for k in first if k not in specs}  # (tensors of a dtype numpy lacks: stacked by torch)
    return batch.finish(rest)


def round_robin(total: int, available: Sequence[int]) -> list[int]:
    """How many of `total` turns each queue gets when they take one turn each in order, a queue leaving when its
    `available` turns are used (a DataLoader taking batches from its workers). Needs total <= sum(available)."""
    share, left = [0] * len(available), total
    while left > 0:
        active = [q for q, n in enumerate(available) if share[q] < n]
        rounds = min(min(available[q] - share[q] for q in active), left // len(active))
        if rounds == 0:  # fewer turns left than queues: the first ones in order
            for q in active[:left]:
                share[q] += 1
            break
        for q in active:
            share[q] += rounds
        left -= rounds * len(active)
    return share


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, without the stream webdataset appends (' @ <stream>')."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split(" @ ")[0]


# records: one clip, with tokens or (consumed before a resume point, or a dry run) without


@dataclass(slots=True)
class _Clip:
    part: int  # place of its shard in this slot's plan
    ordinal: int  # clips of this slot's share of the shard before this one (-1: not counted)
    shape: tuple[int, ...]  # (t, h, w) [+ (c)]
    tokens: np.ndarray | None = None  # (t, h, w) [+ (c)] as stored (uint16, uint32, ...); None: a placeholder
    key: str = ""
    clip: int = 0
    source: str = ""
    shard: str = ""
    labels: dict[str, Any] | None = None  # the sample json's ITEM_KEYS that it has (label, class, bucket), its caption, its scene


@dataclass(slots=True)
class _Meta:
    """A sample's parsed json, with where the sample sits in the shard and in this slot's share."""

    meta: dict[str, Any]
    mine: bool  # in this slot's share of the shard
    first: int  # ordinal of its first clip (-1: not counted)


class _Watch:
    """Sees every member name (`select`) and every json (`files`) as a shard streams, in tar order, so that
    tokens nobody here needs (other slots' samples, samples consumed before a resume point, dry runs) are never
    extracted: a sample's json precedes its tokens (webdataset's TarWriter writes members sorted by name)."""

    def __init__(self, k: int, j: int, done: set[int] | None, dry: bool, counted: bool):
        self.k, self.j, self.done, self.dry, self.counted = k, j, done or set(), dry, counted
        self.index = -1  # samples (json members) seen
        self.members = 0
        self.ordinal = 0
        self.key: str | None = None
        self.want = True

    def select(self, name: str) -> bool:
        self.members += 1
        key, ext = split_member(name)  # webdataset's rule: the first dot of the base name
        if ext == META_MEMBER:
            return True
        if ext == CAPTION_MEMBER:  # after the tokens (members sorted by name): only with the sample's tokens
            return key == self.key and self.want
        return ext == TOKENS_MEMBER and (key != self.key or self.want)

    def files(self, files: Iterator[dict[str, Any]], where: str) -> Iterator[dict[str, Any]]:
        for f in files:
            key, ext = split_member(f["fname"]) if "fname" in f else (None, None)
            if ext == META_MEMBER:
                self.index += 1
                self.key = key
                f = {**f, "data": self._meta(key, f["data"], where)}
            yield f

    def _meta(self, key: str, data: bytes, where: str) -> _Meta:
        mine = self.index % self.k == self.j
        if not mine:
            self.want = False
            return _Meta({}, False, -1)
        try:
            meta = json.loads(data)
        except ValueError as exc:
            raise InputError(f"{where}: {key}.json is not JSON ({exc})") from None
        first = -1
        if self.counted:
            shape = meta.get("tokens_shape") if isinstance(meta, dict) else None
            if not isinstance(shape, list) or not shape:
                raise InputError(f"{where}: {key}.json has no tokens_shape, which a resume or packing needs")
            first, self.ordinal = self.ordinal, self.ordinal + int(shape[0])
            self.want = not self.dry and not all(i in self.done for i in range(first, self.ordinal))  # (done: set or range)
        else:
            self.want = not self.dry
        return _Meta(meta if isinstance(meta, dict) else {}, True, first)


# items: clips, flat sequences, packed blocks (None stands for an item built from a placeholder)


def _int64(tokens: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tokens.astype(np.int64))


def _clip_item(rec: _Clip, convert: Callable[[np.ndarray], Any]) -> dict[str, Any]:
    item = {"tokens": convert(rec.tokens), "key": rec.key, "clip": rec.clip, "source": rec.source, "shard": rec.shard}
    return item | rec.labels if rec.labels else item


def _by_shape(units: Iterator[tuple[dict | None, list[_Clip]]], size: int) -> Iterator[tuple[list[dict | None], list[_Clip]]]:
    """Items -> batches of `size` items of one token shape (never padded across shapes), in the order they fill;
    at the end the partial ones, in the order their shapes first came. Holds at most `size` items per shape."""
    open_: dict[tuple[int, ...], tuple[list[dict | None], list[_Clip]]] = {}
    for item, finished in units:
        batch, recs = open_.setdefault(finished[0].shape, ([], []))
        batch.append(item)
        recs.extend(finished)
        if len(batch) == size:
            yield open_.pop(finished[0].shape)
    yield from open_.values()


class _Packer:
    """Flat sequences -> blocks of exactly `seq_len` tokens. A sequence that does not fit goes on in the next
    block (`split`; its `documents` entry then has start > 0 there) or starts the next block (the rest padded)."""

    def __init__(self, seq_len: int, pad_id: int, split: bool, drop_last: bool):
        self.seq_len, self.pad_id, self.split, self.drop_last = seq_len, pad_id, split, drop_last
        self.pieces: list[tuple[_Clip, torch.Tensor | None, int, int, int]] = []  # (rec, seq, start, stop, length)
        self.fill = 0

    def add(self, rec: _Clip, seq: torch.Tensor | None, length: int) -> Iterator[tuple[dict | None, list[_Clip]]]:
        if length > self.seq_len and not self.split:
            raise UsageError(f"{rec.shard}:{rec.key} clip {rec.clip}: a sequence of {length} tokens does not fit in "
                             f"seq_len {self.seq_len}; raise seq_len or let sequences split")
        if not self.split and self.fill + length > self.seq_len:
            yield self._emit()
        start = 0
        while start < length:
            stop = min(length, start + self.seq_len - self.fill)
            self.pieces.append((rec, seq, start, stop, length))
            self.fill += stop - start
            start = stop
            if self.fill == self.seq_len:
                yield self._emit()

    def flush(self) -> Iterator[tuple[dict | None, list[_Clip]]]:
        if self.pieces and not self.drop_last:
            yield self._emit()
        self.pieces, self.fill = [], 0

    def _emit(self) -> tuple[dict | None, list[_Clip]]:
        pieces, self.pieces, pad = self.pieces, [], self.seq_len - self.fill
        self.fill = 0
        finished = [rec for rec, _, _, stop, length in pieces if stop == length]
        if any(seq is None for _, seq, *_ in pieces):
            return None, finished
        sizes = [stop - start for _, _, start, stop, _ in pieces]
        tokens = torch.cat([seq[start:stop] for _, seq, start, stop, _ in pieces] + [torch.full((pad,), self.pad_id)])
        segments = torch.repeat_interleave(torch.arange(len(pieces)), torch.tensor(sizes))
        positions = torch.cat([torch.arange(start, stop) for _, _, start, stop, _ in pieces] + [torch.zeros(pad, dtype=torch.long)])
        documents = [{"key": r.key, "clip": r.clip, "source": r.source, "shard": r.shard, "start": start, "stop": stop,
                      "length": length, **(r.labels or {})} for r, _, start, stop, length in pieces]
        item = {"tokens": tokens, "segment_ids": torch.cat([segments, torch.full((pad,), -1)]), "positions": positions,
                "documents": documents}
        return item, finished


# the dataset


@dataclass(frozen=True, slots=True)
class _Shard:
    path: str
    manifest: dict | None
    options: dict | None = field(default=None, repr=False, compare=False)  # storage options of a URL

    def stats(self) -> dict | None:
        """Its `{stem}_stats.json` (sample and clip counts), when there is one."""
        if storage.is_url(self.path):
            url = self.path[: -len(".tar")] + "_stats.json" if self.path.endswith(".tar") else None
            try:
                return json.loads(storage.read_bytes(url, self.options)) if url else None
            except FileNotFoundError:
                return None
            except storage.errors() as exc:
                raise InputError(f"cannot read {storage.redact(url)}: {storage.describe(exc)}") from None
        path = Path(self.path)
        path = path.with_name(path.name[: -len(".tar")] + "_stats.json") if path.name.endswith(".tar") else None
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None

    def clip_shape(self) -> tuple[int, ...] | None:
        m = self.manifest
        if not m or not m.get("token_shape"):
            return None
        return tuple(m["token_shape"]) + ((m["num_codebooks"],) if m.get("num_codebooks", 1) > 1 else ())

    def bucket_shapes(self) -> list[tuple[int, ...]]:
        """The token shape of each bucket of a `--buckets` run (the manifest's `token_shapes`), else none."""
        m = self.manifest or {}
        extra = (m["num_codebooks"],) if m.get("num_codebooks", 1) > 1 else ()
        return [tuple(shape) + extra for shape in m.get("token_shapes") or []]


class TokenDataset(IterableDataset):
    """Token shards as a torch IterableDataset: every clip exactly once per epoch over ranks and DataLoader workers.

    inputs: token dirs (an encode OUT: its finished shards), token tar files, brace patterns. Items:
    - default: one clip, {"tokens": int64 (t, h, w) [+ (c)], "key", "clip" (index in its sample), "source"
      (the video it came from, "" when unknown), "shard" (the tar path)};
    - `flat`: the same with "tokens" (n,) in raster order (t, then h, then w), with `bos` / `eos` / `frame_sep`
      ids past the codebook (codebook_size + 0 / 1 / 2);
    - `seq_len`: flat sequences packed into blocks {"tokens" (seq_len,), "segment_ids" (seq_len,) (-1: padding),
      "positions" (seq_len,) (index in its sequence: > 0 at a block's start means the block goes on with a
      sequence split before it), "documents": [{key, clip, source, shard, start, stop, length}] per segment};
      batch them with `collate_fn=lfqtok.dataset.collate`.
    `batch_size`: yield batches of that many items instead (as `collate` makes them; each worker's last batch may
    be shorter), for `DataLoader(ds, batch_size=None, num_workers=...)`: batches made in the workers reach the
    main process through reused shared memory (`lfqtok.dataset.handoff`), the fastest way to read with workers. Mixed token
    shapes (buckets, fit: the manifests say so) are batched within one shape, never padded across shapes.
    Items carry the sample json's `label`, `class` and `bucket` when it has them, `caption` (its `{key}.txt`) when the
    sample has text (batches: a list of str), and `scene` (the clip's scene index in its video) from a `--scenes` run.
    The order is a function of (seed, epoch, world_size, num_workers): `shuffle` > 0 shuffles the shard order per
    epoch and keeps a buffer of that many clips per worker. `skip`: items this rank already consumed in the epoch
    (a resume), placed among workers as a DataLoader with `loader_batch_size` takes them; consumed items' tokens
    are not read again (whole shards are passed over by their `_stats.json` counts). `even_ranks`: every rank
    stops at the fewest batches any rank has (DDP needs the same number of steps on every rank), the first batches
    of its own as the DataLoader takes them; counted from `_stats.json` and the samples' json without reading
    tokens (`batches_per_rank`). `handler`: "raise" on an
    unreadable, truncated or foreign shard, "warn" to warn naming it and go on, or a callable taking the
    InputError (return to go on, raise to stop).
    """

    def __init__(
        self,
        inputs: str | Path | Sequence[str | Path],
        *,
        flat: bool = False,  # items are flat sequences (raster order), not (t, h, w) clips
        bos: bool = False,  # flat: begin with codebook_size + 0
        eos: bool = False,  # flat: end with codebook_size + 1
        frame_sep: bool = False,  # flat: codebook_size + 2 between latent frames
        seq_len: int | None = None,  # pack flat sequences into blocks of this many tokens (implies flat)
        split_sequences: bool = True,  # packing: a sequence may go on in the next block (else: padding)
        drop_last: bool = False,  # packing: drop each worker's last, padded block
        batch_size: int | None = None,  # yield batches of this many items (use DataLoader(batch_size=None))
        shuffle: int = 0,  # clips in the shuffle buffer (0: shard order, no shuffling)
        seed: int = 0,
        epoch: int = 0,
        skip: int = 0,  # items of this rank already consumed in `epoch`
        loader_batch_size: int | None = None,  # the DataLoader's batch_size, to place `skip` among its workers
        rank: int | None = None,
        world_size: int | None = None,
        even_ranks: bool = False,  # every rank gives the fewest batches any rank gives (for DDP), dropping the rest
        codebook_size: int | None = None,  # for shards without a manifest (flat items need it)
        handler: Handler = "raise",
        storage_options: dict | None = None,  # fsspec options for URL inputs (s3://, gs://, ...)
    ):
        super().__init__()
        flat = flat or exists(seq_len)
        if not flat and (bos or eos or frame_sep):
            raise UsageError("bos, eos and frame_sep are for flat sequences: pass flat=True or seq_len")
        if any(exists(n) and n < 1 for n in (seq_len, batch_size, loader_batch_size)) or shuffle < 0 or skip < 0:
            raise UsageError(f"seq_len, batch_size and loader_batch_size must be >= 1, shuffle and skip >= 0; got "
                             f"{seq_len}, {batch_size}, {loader_batch_size}, {shuffle}, {skip}")
        if even_ranks and not exists(batch_size) and not exists(loader_batch_size):
            raise UsageError("even_ranks counts batches: pass batch_size (batches made here) or loader_batch_size (the "
                             "DataLoader's batch_size)")
        if exists(batch_size) and exists(loader_batch_size) and loader_batch_size not in (1, batch_size):
            raise UsageError(f"with batch_size the DataLoader takes one batch at a time (batch_size=None): "
                             f"loader_batch_size {loader_batch_size} differs from batch_size {batch_size}")
        if not callable(handler) and handler not in HANDLERS:
            raise UsageError(f"handler must be one of {', '.join(HANDLERS)} or a callable, got {handler!r}")
        manifests: dict[Any, dict | None] = {}
        shards = []
        for path in expand_paths(inputs, storage_options):
            parent = storage.parent(path)
            if parent not in manifests:
                manifests[parent] = read_manifest(path, storage_options)
            shards.append(_Shard(str(path), manifests[parent], storage_options))
        if not shards:
            raise InputError(f"no token shards in {inputs}")
        self._shards = shards
        self.codebook_size = self._codebook_size([m for m in manifests.values() if m], codebook_size)
        if flat and not exists(self.codebook_size):
            raise UsageError("flat sequences put special ids past the codebook: pass codebook_size (no lfqtok.json found)")
        self.flat, self.bos, self.eos, self.frame_sep = flat, bos, eos, frame_sep
        self.seq_len, self.split_sequences, self.drop_last = seq_len, split_sequences, drop_last
        self.shuffle, self.seed, self.epoch, self.skip = shuffle, seed, epoch, skip
        self.batch_size, self.handler, self.even_ranks = batch_size, handler, even_ranks
        self._counted: dict[tuple[int, int, int], list[list[int]]] = {}
        self._sized: dict[tuple[int, int, int], list[list[list[int]]]] = {}
        shapes = {s.clip_shape() for s in shards}
        mixed = len(shapes) > 1 or any(m and m.get("token_shape", ()) is None for m in manifests.values())
        self._grouped = exists(batch_size) and not exists(seq_len) and mixed  # batches made within one token shape
        self.loader_batch_size = batch_size or loader_batch_size or 1
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self._check_fits()

    # public

    @property
    def special_ids(self) -> dict[str, int]:
        """The ids of flat sequences past the codebook: bos, eos, frame_sep, pad."""
        size = self._known_codebook_size()
        return {name: size + k for name, k in (("bos", BOS), ("eos", EOS), ("frame_sep", SEP), ("pad", PAD))}

    @property
    def vocab_size(self) -> int:
        """Ids an embedding table needs: codes, plus the special ids when items are flat."""
        return self._known_codebook_size() + (NUM_SPECIAL if self.flat else 0)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The epoch (reshuffles) and the items of it this rank already consumed; call before iterating (a
        DataLoader with persistent_workers keeps the workers' copies, so it would not see this)."""
        if skip < 0:
            raise UsageError(f"skip must be >= 0, got {skip}")
        self.epoch, self.skip = epoch, skip

    def batches_per_rank(self, num_workers: int = 0) -> list[int]:
        """Batches each rank's DataLoader with `num_workers` workers gives this epoch (of `batch_size` items, or of
        `loader_batch_size`; items when neither is set), counted without reading tokens: from `_stats.json` and
        the samples' json. With `even_ranks`, every rank gives the smallest of them: steps per epoch."""
        rows = [sum(row) for row in self._batches(max(num_workers, 1))]
        return [min(rows)] * len(rows) if self.even_ranks else rows

    def __iter__(self) -> Iterator[Any]:
        if not exists(self.batch_size) or self._grouped:
            return self._epoch()
        from webdataset.filters import batched

        return batched(self.batch_size, collation_fn=collate, partial=True)(self._epoch())

    # helpers

    def _epoch(self) -> Iterator[dict[str, Any]]:
        """This worker's items of the epoch, after the `skip` already consumed."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if self._grouped:  # units are batches of one shape: skip whole batches
            role, skip = self._batch_resume(workers, worker)
        else:
            role, skip = worker_resume(self.skip, workers, worker, self.loader_batch_size)
        slots, slot = self.world_size * workers, self.rank * workers + role
        plan = self._plan(slots, slot)
        seed = self._seed(slots, slot)
        stop = self._even_share(workers)[role] if self.even_ranks else None
        if not skip:
            for unit, _ in itertools.islice(self._units(self._records(plan), random.Random(seed)), stop):
                yield collate(unit) if self._grouped else unit
            return
        done, totals = self._consumed(plan, skip, seed)
        stream = itertools.islice(self._units(self._records(plan, done, totals), random.Random(seed)), stop)
        for n, (unit, _) in enumerate(stream):
            if n >= skip and (unit is None or (self._grouped and any(item is None for item in unit))):
                # (a skipped block may be real: it holds the head of a split sequence)
                raise InputError(f"resume: the shards changed since the epoch started (item {n} of this worker), "
                                 "or a _stats.json disagrees with its shard")
            if n >= skip:
                yield collate(unit) if self._grouped else unit

    def _units(self, records: Iterator[_Clip], rng: random.Random) -> Iterator[tuple[Any, list[_Clip]]]:
        """What a worker delivers: items, or (mixed token shapes with batch_size) lists of items of one shape."""
        items = self._items(records, rng)
        return _by_shape(items, self.batch_size) if self._grouped else items

    def _batch_resume(self, workers: int, worker: int) -> tuple[int, int]:
        """(role, batches to skip) of worker `worker` when batches are made within one shape (sizes vary): the
        DataLoader's turns over the roles' batches replayed until they add up to `skip` items."""
        if not self.skip:
            return worker, 0
        sizes = self._sizes(workers)[self.rank]
        taken, total, n = [0] * workers, 0, 0
        while total < self.skip and any(taken[r] < len(sizes[r]) for r in range(workers)):
            for r in range(workers):
                if total < self.skip and taken[r] < len(sizes[r]):
                    total, taken[r], n = total + sizes[r][taken[r]], taken[r] + 1, n + 1
        if total > self.skip:
            raise UsageError(f"skip {self.skip} is not at a batch boundary of this epoch (batches of one token shape "
                             "vary in size): pass the number of items of the batches consumed")
        role = (worker + n) % workers
        return role, taken[role]

    def _seed(self, slots: int, slot: int) -> str:
        return f"lfqtok:{self.seed}:{self.epoch}:{slot}:{slots}"

    def _counts(self, workers: int) -> list[list[int]]:
        """Items of each (rank, worker role) this epoch, from dry runs: _stats.json counts, else the samples' json
        (no tokens read); computed once per epoch and number of workers."""
        key = (self.seed, self.epoch, workers)
        if self._grouped:
            return [[len(sizes) for sizes in row] for row in self._sizes(workers)]
        if key not in self._counted:
            slots = self.world_size * workers
            self._counted[key] = [[sum(1 for _ in self._items(self._records(self._plan(slots, s), totals={}, dry=True),
                                                             random.Random(self._seed(slots, s))))
                                   for s in range(rank * workers, (rank + 1) * workers)] for rank in range(self.world_size)]
        return self._counted[key]

    def _sizes(self, workers: int) -> list[list[list[int]]]:
        """Batches of one shape: the size of each batch of each (rank, worker role) this epoch, from dry runs."""
        key = (self.seed, self.epoch, workers)
        if key not in self._sized:
            slots = self.world_size * workers
            self._sized[key] = [[[len(batch) for batch, _ in self._units(self._records(self._plan(slots, s), totals={}, dry=True),
                                                                         random.Random(self._seed(slots, s)))]
                                 for s in range(rank * workers, (rank + 1) * workers)] for rank in range(self.world_size)]
        return self._sized[key]

    def _batches(self, workers: int) -> list[list[int]]:
        """Batches of each (rank, worker role) this epoch: its items in batches of loader_batch_size."""
        if self._grouped:
            return self._counts(workers)
        return [[-(-n // self.loader_batch_size) for n in row] for row in self._counts(workers)]

    def _even_share(self, workers: int) -> list[int]:
        """Items each worker role of this rank delivers so that the rank gives the fewest batches any rank gives:
        the first that many batches of its own, as its DataLoader takes them (one per worker in turn)."""
        batches = self._batches(workers)
        fewest = min(sum(row) for row in batches)
        shares = round_robin(fewest, batches[self.rank])
        if self._grouped:
            return shares  # units are batches
        return [min(n, k * self.loader_batch_size) for n, k in zip(self._counts(workers)[self.rank], shares)]

    def _known_codebook_size(self) -> int:
        if not exists(self.codebook_size):
            raise UsageError("the codebook size is unknown (no lfqtok.json next to the shards): pass codebook_size")
        return self.codebook_size

    def _plan(self, slots: int, slot: int) -> list[tuple[_Shard, int, int]]:
        order = list(range(len(self._shards)))
        if self.shuffle:
            random.Random(f"lfqtok-shards:{self.seed}:{self.epoch}").shuffle(order)  # the same on every rank
        return [(self._shards[order[p]], k, j) for p, k, j in shard_plan(len(order), slots, slot)]

    def _items(self, records: Iterator[_Clip], rng: random.Random) -> Iterator[tuple[dict | None, list[_Clip]]]:
        """(item, or None when built from a placeholder; the records it finished) in this worker's order."""
        if self.shuffle:
            from webdataset.filters import shuffle

            records = shuffle(self.shuffle, self.shuffle, rng=rng)(records)
        if not exists(self.seq_len):
            if self.flat:
                convert = self._flat
            elif exists(self.batch_size):
                convert = np.asarray  # as stored: collate widens the tokens to int64 once, as it stacks them
            else:
                convert = _int64
            for rec in records:
                yield (None if rec.tokens is None else _clip_item(rec, convert)), [rec]
            return
        packer = _Packer(self.seq_len, self.codebook_size + PAD, self.split_sequences, self.drop_last)
        for rec in records:
            seq = None if rec.tokens is None else self._flat(rec.tokens)
            yield from packer.add(rec, seq, flat_length(rec.shape, self.bos, self.eos, self.frame_sep))
        yield from packer.flush()

    def _flat(self, tokens: np.ndarray) -> torch.Tensor:
        return flatten(_int64(tokens), self.codebook_size, self.bos, self.eos, self.frame_sep)

    def _consumed(self, plan: list[tuple[_Shard, int, int]], skip: int, seed: str) -> tuple[dict[int, set[int] | range], dict[int, int]]:
        """A dry run without tokens: which clips (part -> ordinals) the first `skip` items of this worker used,
        and the clip count of each part it saw whole. The shuffle buffer and the packer depend only on clip
        counts and shapes, so the real run, fed placeholders for those clips, repeats the same order."""
        done: dict[int, set[int] | range] = {}
        totals: dict[int, int] = {}
        open_parts: dict[int, set[int]] = {}  # parts consumed in part; a part consumed whole becomes a range (O(1))
        known = 0
        for n, (_, finished) in enumerate(self._units(self._records(plan, totals=totals, dry=True), random.Random(seed))):
            for rec in finished:
                open_parts.setdefault(rec.part, done.setdefault(rec.part, set())).add(rec.ordinal)
            if finished or len(totals) != known:
                known = len(totals)
                for part in [p for p, used in open_parts.items() if len(used) == totals.get(p)]:
                    done[part] = range(len(open_parts.pop(part)))
            if n + 1 == skip:
                break
        return done, totals

    def _records(self, plan: list[tuple[_Shard, int, int]], done: dict[int, set[int] | range] | None = None,
                 totals: dict[int, int] | None = None, dry: bool = False) -> Iterator[_Clip]:
        """This worker's clips in plan order; placeholders for dry runs and for clips consumed before `skip`."""
        counted = dry or exists(done)
        for part, (shard, k, j) in enumerate(plan):
            used = (done or {}).get(part, set())
            count = self._known_clips(shard, k) if counted else None
            if dry and exists(count):  # whole shard, counts in its _stats.json: not opened
                totals[part] = count
                yield from (_Clip(part, i, shard.clip_shape() or ()) for i in range(count))
                continue
            shape_known = shard.clip_shape() is not None or not self._grouped  # placeholders need their shapes
            if not dry and exists(totals) and part in totals and len(used) == totals[part] and shape_known:
                yield from (_Clip(part, i, shard.clip_shape() or ()) for i in range(totals[part]))
                continue
            n = 0
            for rec in self._stream(part, shard, k, j, used, dry, counted):
                n += 1
                yield rec
            if dry:
                totals[part] = n

    def _known_clips(self, shard: _Shard, k: int) -> int | None:
        """A whole shard's clip count from its _stats.json, when the shapes it needs are known without opening it."""
        if k != 1 or ((exists(self.seq_len) or self._grouped) and shard.clip_shape() is None):
            return None
        stats = shard.stats()
        return int(stats["clips"]) if stats and isinstance(stats.get("clips"), int) else None

    def _stream(self, part: int, shard: _Shard, k: int, j: int, used: set[int] | range, dry: bool, counted: bool) -> Iterator[_Clip]:
        """One shard's clips for this slot, through webdataset's tar expansion and grouping; errors -> handler."""
        from webdataset.handlers import reraise_exception
        from webdataset.tariterators import group_by_keys, tar_file_expander

        watch = _Watch(k, j, used, dry, counted)
        try:
            with open_shard(shard.path, shard.options, buffering=READ_BUFFER) as stream:
                files = tar_file_expander([{"url": shard.path, "stream": stream}], handler=reraise_exception,
                                          select_files=watch.select)
                for sample in group_by_keys(watch.files(files, shard.path), handler=reraise_exception):
                    yield from self._sample_clips(part, shard, sample, used, dry)
            if watch.members and watch.index < 0:
                raise InputError(f"{shard.path}: no lfqtok samples (.json + .tokens.npy members): not a token shard")
            stats = shard.stats()
            if stats and isinstance(stats.get("samples"), int) and stats["samples"] != watch.index + 1:
                raise InputError(f"{shard.path}: {watch.index + 1} samples, its _stats.json says {stats['samples']} (truncated?)")
        except InputError as exc:
            self._handle(exc)
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # via webdataset: truncated, not a tar
            self._handle(InputError(f"{shard.path}: not a readable token shard ({_reason(exc)})"))

    def _sample_clips(self, part: int, shard: _Shard, sample: dict[str, Any], used: set[int] | range, dry: bool) -> Iterator[_Clip]:
        key = sample["__key__"]
        meta = sample.get(META_MEMBER)
        if not isinstance(meta, _Meta):
            raise InputError(f"{shard.path}: sample {key} has no .json member: not a token shard")
        if not meta.mine:
            return
        data = sample.get(TOKENS_MEMBER)
        if data is None:
            shape = meta.meta.get("tokens_shape")
            if meta.first < 0 or not (dry or all(i in used for i in range(meta.first, meta.first + shape[0]))):
                raise InputError(f"{shard.path}: sample {key} has no .tokens.npy member: not a token shard")
            yield from (_Clip(part, meta.first + c, tuple(shape[1:])) for c in range(shape[0]))
            return
        arr = load_npy(data, f"{shard.path}:{key}", copy=False)
        if arr.ndim < 4 or arr.dtype.kind not in "iu":
            raise InputError(f"{shard.path}:{key}: tokens must be integers (clips, t, h, w) [+ (c)], got {arr.dtype} {arr.shape}")
        source, shape = str(meta.meta.get("source") or ""), tuple(arr.shape[1:])
        labels = {k: meta.meta[k] for k in ITEM_KEYS if k in meta.meta}
        if CAPTION_MEMBER in sample:
            labels["caption"] = sample[CAPTION_MEMBER].decode("utf-8", "replace")
        labels = labels or None
        scenes = meta.meta.get("clip_scenes")  # --scenes runs: each clip's scene in its video
        for c, clip in enumerate(arr):
            ordinal = meta.first + c if meta.first >= 0 else -1
            mine = {**(labels or {}), "scene": int(scenes[c])} if isinstance(scenes, list) and c < len(scenes) else labels
            yield _Clip(part, ordinal, shape, None if ordinal in used else clip, key, c, source, shard.path, mine)

    def _handle(self, exc: InputError) -> None:
        if self.handler == "raise":
            raise exc
        if self.handler == "warn":
            warnings.warn(f"lfqtok: skipping the rest of a token shard: {exc}", stacklevel=3)
            return
        self.handler(exc)

    @staticmethod
    def _codebook_size(manifests: list[dict], explicit: int | None) -> int | None:
        kinds = {(m["codebook_size"], m.get("num_codebooks", 1), m.get("bit_order", "msb_first")) for m in manifests}
        if len(kinds) > 1:
            described = "; ".join(f"{n:,} codes x {c} codebook(s), {order}" for n, c, order in sorted(kinds))
            raise InputError(f"token shards of different codebooks or bit orders cannot be mixed ({described})")
        found = next(iter(kinds))[0] if kinds else None
        if exists(explicit) and exists(found) and explicit != found:
            raise UsageError(f"codebook_size {explicit} differs from the manifest's {found}")
        if exists(explicit) and explicit < 1:
            raise UsageError(f"codebook_size must be >= 1, got {explicit}")
        return found if exists(found) else explicit

    def _check_fits(self) -> None:
        """Unsplittable sequences longer than seq_len are refused before any work, when the manifests tell."""
        if not exists(self.seq_len) or self.split_sequences:
            return
        for shard in {id(s.manifest): s for s in self._shards}.values():
            shapes = [shard.clip_shape()] if shard.clip_shape() else shard.bucket_shapes()
            length = max((flat_length(shape, self.bos, self.eos, self.frame_sep) for shape in shapes), default=0)
            if length > self.seq_len:
                raise UsageError(f"a clip's flat sequence has {length} tokens, more than seq_len {self.seq_len}: "
                                 "raise seq_len or let sequences split")
