"""The shard worker: `ShardEncoder`, the one ShardJob function every engine runs, and its stages.

Three stages overlap so the encoder never waits: decode worker processes (`pool.py`, or Ray decode tasks), the
encoder in its own thread (GPU work releases the GIL), and a writer thread that assembles each video's clips into
one sample and writes the shards in input order (so reruns, resumes and every engine give the same bytes).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .batch import Batch, BatcherAborted, ClipBatcher
from ..io.codec import to_storage, token_dtype
from ..errors import LfqtokError
from .pool import ClipEvent, DecodePool, DoneEvent, FailEvent, SkipEvent
from ..io.shards import ShardWriter
from .sources import ShardJob, VideoItem
from .record import ClipOrigin, sample_members, sample_record
from ..io.storage import Location, Options, location
from .video import ClipSpec

ProgressFn = Callable[["Counters"], None]
PoolFactory = Callable[..., Any]  # (spec, workers, timeout=, decoder=, storage_options=, nice=) -> context manager with .run(items) -> events
MAX_DEFAULT_WORKERS = 16  # decode processes by default: all cores but one, at most this many


# a CPU encoder's threads wait on one another at every op: a decode worker holding one of their cores stalls them all
# (--scenes on's network windows cost a third of the throughput that way, docs/performance.md). Decode workers of a CPU
# encode run this much nicer: they take the cycles the encoder leaves, which a decode-bound run leaves them all of
CPU_ENCODE_NICE = 8


def decode_workers(workers: int | None) -> int:
    """Decode processes for `--workers`: as given, or (None) all cores but one, at most MAX_DEFAULT_WORKERS."""
    return workers if workers is not None else max(1, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 2) - 1))


# results

COUNTS = ("videos_done", "videos_failed", "videos_skipped", "clips", "frames", "tokens", "rows_done")  # what engines sum over shards and processes


@dataclass
class Counters:
    """Live progress of a run; the encoder and writer threads update it, the progress display reads it."""

    videos_total: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0  # time ranges shorter than one clip: no sample, not failed
    clips: int = 0
    frames: int = 0
    tokens: int = 0
    writing: tuple[int, ...] = ()  # indices of the shards being written now (what a progress line names)
    rows_total: int = 0  # a table's rows this run reads (estimated; 0: not a table): what progress counts then
    rows_done: int = 0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, results: Sequence["ShardResult"]) -> "Counters":
        """The counts of finished shards (what an engine reports for work that is done)."""
        return cls(
            videos_done=sum(r.samples for r in results),
            videos_failed=sum(len(r.failures) for r in results),
            videos_skipped=sum(len(r.skipped) for r in results),
            clips=sum(r.clips for r in results),
            frames=sum(r.frames for r in results),
            tokens=sum(r.tokens for r in results),
            rows_done=sum(r.rows for r in results),
        )

    def set_sum(self, parts: Iterable["Counters"]) -> "Counters":
        """Every count := its sum over `parts` (processes, actors, finished shards), `writing` their shards; the
        totals and the clock stay. Returns self, what the engines hand to `on_progress`."""
        parts = list(parts)
        for name in COUNTS:
            setattr(self, name, sum(getattr(p, name) for p in parts))
        self.writing = tuple(sorted({s for p in parts for s in p.writing}))
        return self


@dataclass
class ShardResult:
    """What one finished shard holds; the same numbers are in its `_stats.json`."""

    shard: int
    samples: int
    clips: int
    tokens: int
    frames: int
    seconds: float
    failures: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)  # time ranges shorter than one clip (in shards of ranges)
    scenes: int | None = None  # --scenes: scenes detected in its samples ...
    scenes_too_short: int | None = None  # ... and those shorter than one clip (they give none)
    rows: int = 0  # table rows whose samples it holds or records (0: not a table); not in its stats file


# the shard job function


@dataclass
class ShardEncoder:
    """Encodes the videos of shard jobs and writes their shards: the ShardJob function every engine runs.

    A picklable callable holding only settings (the model is loaded on first use), so the local engine's
    per-GPU processes and Ray actors run this same code; an engine adapts it with `dataclasses.replace`
    (its device, its share of decode workers, Ray decode tasks as the pool).
    """

    out: str | Path  # the token directory or URL prefix (its manifest is written already)
    spec: ClipSpec  # how clips are cut from each video
    model: str = "default"  # "default" (embedded), a .safetensors path or URL (fetched once per machine)
    device: str = "auto"  # one device: auto | cpu | cuda | cuda:N (engines spread work over several)
    batch_size: int = 16  # clips per encoder batch
    workers: int | None = None  # decode processes; None: all cores but one, at most 16
    video_timeout: float = 60.0  # seconds one video may decode without progress before its try is killed
    decoder: str = "auto"  # each video's first decoder; `decoder_attempts` says what a retry uses
    hflip: bool = False  # images also get the tokens of their horizontally flipped model input (tokens_flip.npy)
    pool_factory: PoolFactory = DecodePool  # (spec, workers, timeout=, decoder=, storage_options=, nice=) -> pool; Ray: RayDecodePool
    storage_options: Options = field(default=None, repr=False)  # for URLs (inputs, model, out); may hold secrets
    _tokenizer: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..tokenizers.model import load_tokenizer

            self._tokenizer = load_tokenizer(self.model, device=self.device, storage_options=self.storage_options)
        return self._tokenizer

    def __call__(self, jobs: Iterable[ShardJob], on_progress: ProgressFn | None = None, rows_total: int = 0) -> list[ShardResult]:
        """Encode every video of `jobs` with one decode pool, so the encoder does not drain between shards.

        `jobs`: a sequence, or a stream (a table's, `rows_total` rows): its items are taken as decoders free up."""
        listed = isinstance(jobs, Sequence)
        counters = Counters(videos_total=sum(len(j.items) for j in jobs) if listed else 0, rows_total=rows_total)
        stream = iter(jobs)
        first = next(stream, None)
        if first is None:
            return []
        tok = self.tokenizer
        spec = self.spec
        storage = token_dtype(tok.codebook_size)
        assembler = _ShardAssembler(location(self.out), storage, counters, self.storage_options, shaped=not spec.shapes.legacy,
                                    hflip=self.hflip, scenes=spec.scenes is not None)
        images_only = listed and all(item.is_image for job in jobs for item in job.items)
        frames = 1 if images_only else spec.clip_frames  # images: 1-frame clips (a stream may hold videos)
        abort = threading.Event()
        on_cuda = next(tok.parameters()).device.type == "cuda"
        batcher = ClipBatcher(self.batch_size, (frames, *spec.shapes.largest, 3), pin_memory=on_cuda, abort=abort)
        gpu_q: queue.Queue[Batch | None] = queue.Queue()
        write_q: queue.Queue[Any] = queue.Queue()
        errors: list[BaseException] = []
        stages = [
            _Stage("encoder", _encoder_loop, gpu_q, write_q, tok, batcher, counters, abort, errors),
            _Stage("writer", _writer_loop, write_q, assembler, abort, errors),
        ]
        try:
            pool = self.pool_factory(spec, decode_workers(self.workers), timeout=self.video_timeout, decoder=self.decoder,
                                     storage_options=self.storage_options, nice=0 if on_cuda else CPU_ENCODE_NICE)
            with pool:
                for event in pool.run(assembler.items(itertools.chain([first], stream))):
                    if abort.is_set():
                        break
                    if isinstance(event, ClipEvent):
                        clip = event.clip  # the frames go into the batch; only where they came from travels on
                        origin = ClipOrigin(clip.frame_indices, clip.padded, clip.times, clip.scene)
                        ref = (event.item, event.clip_index, origin)
                        for batch in batcher.add(clip.frames, ref):
                            gpu_q.put(batch)
                        if self.hflip and assembler.item(event.item).is_image:  # the model input mirrored: (T, H, W, 3)
                            flipped = (event.item, event.clip_index, replace(origin, flipped=True))
                            for batch in batcher.add(clip.frames[:, :, ::-1], flipped):
                                gpu_q.put(batch)
                    else:
                        write_q.put(event)
                    if on_progress is not None:
                        on_progress(counters)
                if not abort.is_set():
                    for batch in batcher.flush():
                        gpu_q.put(batch)
        except BatcherAborted:
            pass
        except BaseException:
            abort.set()
            raise
        finally:
            gpu_q.put(None)
            stages[0].join()
            write_q.put(None)
            stages[1].join()
            if errors or abort.is_set():
                assembler.abandon()
        if errors:
            raise errors[0]
        if on_progress is not None:
            on_progress(counters)
        return assembler.results


class _Stage(threading.Thread):
    """A daemon thread running `fn(*args)`; an exception is kept for the main thread and aborts the run."""

    def __init__(self, name: str, fn: Callable[..., None], *args: Any):
        super().__init__(name=f"lfqtok-{name}", daemon=True)
        self.fn, self.args = fn, args
        self.start()

    def run(self) -> None:
        abort, errors = self.args[-2], self.args[-1]
        try:
            self.fn(*self.args[:-2])
        except BaseException as exc:  # handed to the main thread, which re-raises it
            errors.append(exc)
            abort.set()


CPU_CHUNK = 4  # clips per encoder call on the CPU: ~3x the speed of one clip at a time, and a fixed shape


def encode_batch(tok, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (n, T, H, W, 3) -> int64 ids on the model's device, as the encode pipeline computes them.

    On the CPU, in zero-padded chunks of CPU_CHUNK clips: its kernels pick algorithms by batch shape, so a
    fixed shape keeps tokens independent of --batch-size (and of which clips share a chunk)."""
    device = next(tok.parameters()).device
    video = frames.to(device, non_blocking=True)
    if device.type != "cpu":
        return tok.encode_to_device(video)
    chunks = []
    for chunk in video.split(CPU_CHUNK):
        padded = torch.cat([chunk, chunk.new_zeros((CPU_CHUNK - len(chunk), *chunk.shape[1:]))])
        chunks.append(tok.encode_to_device(padded)[: len(chunk)])
    return torch.cat(chunks)


def _encoder_loop(gpu_q: queue.Queue, write_q: queue.Queue, tok, batcher: ClipBatcher, counters: Counters) -> None:
    """Encoder stage: uint8 batches -> token arrays in the storage dtype (narrowed on the device by the codec)."""
    while (batch := gpu_q.get()) is not None:
        try:
            tokens = to_storage(encode_batch(tok, batch.frames), tok.codebook_size)  # (n, t, h, w) [+ (c)]
        except torch.cuda.OutOfMemoryError:
            raise LfqtokError(
                f"CUDA out of memory encoding a batch of {len(batch.refs)} clips of {tuple(batch.frames.shape[1:4])}: "
                "lower --batch-size (shards already finished are kept; rerun to resume)"
            ) from None
        finally:
            batcher.release(batch)
        clips = sum(not origin.flipped for _, _, origin in batch.refs)  # as the shard stats count: flips aside
        counters.clips += clips
        counters.frames += clips * batch.frames.shape[1]
        counters.tokens += clips * tokens[0].size
        write_q.put((batch.refs, tokens))


def _writer_loop(write_q: queue.Queue, assembler: "_ShardAssembler") -> None:
    """Writer stage: token arrays and per-video verdicts -> samples, written in input order."""
    while (msg := write_q.get()) is not None:
        if isinstance(msg, DoneEvent):
            assembler.done(msg)
        elif isinstance(msg, FailEvent):
            assembler.fail(msg.item, msg.error)
        elif isinstance(msg, SkipEvent):
            assembler.skip(msg.item, msg.reason)
        else:
            refs, tokens = msg
            for (item, clip_index, clip), clip_tokens in zip(refs, tokens):
                assembler.clip(item, clip_index, clip, clip_tokens)


# assembling samples and shards


@dataclass
class _Pending:
    """One video between its first clip and its write."""

    flip: bool = False  # its flipped clips are expected too (--hflip, an image)
    clips: dict[int, tuple[Any, np.ndarray]] = field(default_factory=dict)
    flips: dict[int, np.ndarray] = field(default_factory=dict)
    done: DoneEvent | None = None
    error: str | None = None
    skipped: str | None = None  # why its time range gives no sample

    @property
    def complete(self) -> bool:
        if self.error is not None or self.skipped is not None:
            return True
        n = self.done.num_clips if self.done is not None else None
        return n is not None and len(self.clips) >= n and (not self.flip or len(self.flips) >= n)


class _ShardAssembler:
    """Collects each video's clip tokens and writes samples shard by shard, in the jobs' item order.

    Jobs arrive through `items` as they are read (a table streams them); what it holds of a job goes once the
    job's shard is written, so its memory follows the items in flight, not the run."""

    def __init__(
        self, out: Location, storage: np.dtype, counters: Counters, storage_options: Options = None,
        shaped: bool = False, hflip: bool = False, scenes: bool = False,
    ):
        self.out, self.storage, self.counters, self.hflip = out, storage, counters, hflip
        self.storage_options = storage_options
        self.shaped = shaped  # shape options in use: samples record their frame size, valid box and bucket
        self.scenes = scenes  # --scenes: shard stats count scenes and those too short for a clip
        self.jobs: dict[int, ShardJob] = {}  # jobs taken and not finished, by their order of arrival j
        self.owner: dict[int, tuple[int, int]] = {}  # item index -> (j, index in its job), until it is written
        self.pending: dict[int, _Pending] = {}
        self.next_item: dict[int, int] = {}  # per job: local index of the next sample to write
        self.first_item: dict[int, int] = {}  # per job: the item index of its first item
        self.writers: dict[int, ShardWriter] = {}
        self.stats: dict[int, dict[str, Any]] = {}
        self.results: list[ShardResult] = []
        self.taken = 0  # items handed out so far

    def items(self, jobs: Iterable[ShardJob]) -> Iterator[VideoItem]:
        """The items of `jobs` in order, each job registered before its first item is decoded."""
        for j, job in enumerate(jobs):
            self.jobs[j], self.first_item[j], self.next_item[j] = job, self.taken, 0
            self._stats(j)  # its clock starts as its first item goes to the decoders
            for local, item in enumerate(job.items):
                self.owner[self.taken] = (j, local)
                self.taken += 1
                yield item

    def item(self, index: int) -> VideoItem:
        j, local = self.owner[index]
        return self.jobs[j].items[local]

    def clip(self, item: int, clip_index: int, clip: Any, tokens: np.ndarray) -> None:
        if item not in self.owner:
            return  # a late clip of a video that already failed and was recorded
        if clip.flipped:
            self._get(item).flips[clip_index] = tokens
        else:
            self._get(item).clips[clip_index] = (clip, tokens)
        self._advance(item)

    def done(self, event: DoneEvent) -> None:
        if event.item not in self.owner:
            return
        pending = self._get(event.item)
        pending.done = event
        if event.num_clips == 0:
            pending.error = "no clips could be cut from the video"
        self._advance(event.item)

    def fail(self, item: int, error: str) -> None:
        if item not in self.owner:
            return
        self._get(item).error = error
        self._advance(item)

    def skip(self, item: int, reason: str) -> None:
        if item not in self.owner:
            return
        self._get(item).skipped = reason
        self._advance(item)

    def abandon(self) -> None:
        """On an aborted run: drop every unfinished shard's temp file; finished shards stay as they are."""
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()

    # helpers

    def _get(self, item: int) -> _Pending:
        if item not in self.pending:
            j, local = self.owner[item]
            self.pending[item] = _Pending(flip=self.hflip and self.jobs[j].items[local].is_image)
        return self.pending[item]

    def _advance(self, item: int) -> None:
        j = self.owner[item][0]
        job = self.jobs[j]
        while self.next_item[j] < len(job.items):
            position = self.first_item[j] + self.next_item[j]
            pending = self.pending.get(position)
            if pending is None or not pending.complete:
                return
            self._emit(j, job.items[self.next_item[j]], pending)
            del self.pending[position], self.owner[position]
            self.next_item[j] += 1
        self._finish(j)

    def _emit(self, j: int, item: VideoItem, pending: _Pending) -> None:
        stats = self._stats(j)
        if item.row is not None and not item.segment:  # a table row's first sample (or its recorded failure or skip)
            stats["rows"] += 1
            self.counters.rows_done += 1
        where = {name: value for name, value in (("row", item.row), ("segment", item.segment)) if value is not None}
        if pending.error is not None:
            stats["failures"].append({"source": item.source, **where, "error": pending.error})
            self.counters.videos_failed += 1
            return
        if pending.skipped is not None:
            stats["skipped"].append({"source": item.source, **where, "reason": pending.skipped})
            self.counters.videos_skipped += 1
            return
        done = pending.done
        clips = [pending.clips[i] for i in range(done.num_clips)]
        tokens = np.stack([t for _, t in clips]).astype(self.storage, copy=False)  # (clips, t, h, w) [+ (c)]
        meta = sample_record(item, done.meta, [c for c, _ in clips], tokens.shape, shaped=self.shaped)
        flips = np.stack([pending.flips[i] for i in range(done.num_clips)]).astype(self.storage, copy=False) if pending.flip else None
        self._writer(j).write(item.key, tokens, meta, {**done.extras, **sample_members(item)}, flip_tokens=flips)
        stats["samples"] += 1
        stats["clips"] += tokens.shape[0]
        stats["tokens"] += int(tokens.size)
        stats["frames"] += sum(len(c.frame_indices) for c, _ in clips)
        if self.scenes and done.meta.scenes is not None:  # a scene shorter than one clip gives none
            stats["scenes"] += len(done.meta.scenes)
            stats["scenes_too_short"] += len(done.meta.scenes) - len({c.scene for c, _ in clips})
        self.counters.videos_done += 1

    def _stats(self, j: int) -> dict[str, Any]:
        if j not in self.stats:
            self.stats[j] = {"shard": self.jobs[j].index, "samples": 0, "clips": 0, "tokens": 0, "frames": 0,
                             **({"scenes": 0, "scenes_too_short": 0} if self.scenes else {}),
                             "started": time.perf_counter(), "failures": [], "rows": 0}
            if any(item.span is not None for item in self.jobs[j].items):  # a shard of time ranges (a table's)
                self.stats[j]["skipped"] = []
        return self.stats[j]

    def _writer(self, j: int) -> ShardWriter:
        if j not in self.writers:
            self.writers[j] = ShardWriter(self.out, self.jobs[j].index, self.storage, self.storage_options)
            self._writing()
        return self.writers[j]

    def _writing(self) -> None:
        self.counters.writing = tuple(sorted(self.jobs[j].index for j in self.writers))

    def _finish(self, j: int) -> None:
        if j not in self.jobs:
            return
        stats = self._stats(j)
        started = stats.pop("started")
        rows = stats.pop("rows")
        stats["seconds"] = round(time.perf_counter() - started, 3)
        writer = self._writer(j)  # an all-failed shard still gets its (empty) tar and stats
        writer.finish(stats)
        del self.writers[j], self.stats[j], self.jobs[j], self.next_item[j], self.first_item[j]
        self._writing()
        self.results.append(ShardResult(**stats, rows=rows))
