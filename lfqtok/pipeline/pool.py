"""Decode stage for many videos: each decoded in an isolated worker process, killed if it hangs or replaced if
it crashes, so one bad file costs one FailEvent and never the run.

Each worker has its own pipe: tasks go down, events come up in order, and the parent reads only while fewer
than `max_pending_clips` events wait for the consumer, so a slow consumer blocks the workers (bounded memory).
A worker's decode clock runs only while it decodes: it stops while the worker waits for a task or blocks
sending an event, and restarts with each event, so `timeout` is decode time without progress. What a video is
decoded with on each try is `decoder_attempts` (shared with the Ray engine's pool): the chosen decoder, then, when
that try crashed or hung before sending anything, PyAV alone; otherwise the video fails with the reason.
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import LfqtokError, UsageError
from .images import image_clip
from .sources import VideoItem, iter_fetched, read_extras, read_video_bytes
from ..io.storage import Options, scrub
from .video import Clip, ClipSpec, RangeTooShort, VideoMeta, iter_clips, resolve_decoder

MAX_WORKERS = 256  # decode processes: more than any machine's useful count (each holds a decoder and its frames)
POLL_SECONDS = 0.2  # how often the parent checks decode clocks while it waits for events

# events


@dataclass
class ClipEvent:
    """Clip `clip_index` of video `item` (position in the input sequence); a video's clips come in order."""

    item: int
    clip_index: int
    clip: Clip


@dataclass
class DoneEvent:
    """Video `item` is finished: after all its `num_clips` ClipEvents."""

    item: int
    meta: VideoMeta
    num_clips: int
    extras: dict[str, bytes]  # passthrough members of its tar sample


@dataclass
class FailEvent:
    """Video `item` failed; `error` is one line. Any ClipEvents it sent before are to be discarded."""

    item: int
    error: str


@dataclass
class SkipEvent:
    """Video `item` is a time range with fewer frames than one clip: no sample, and not a failure (the shard stats
    record it under `skipped`); `reason` is one line."""

    item: int
    reason: str


Event = ClipEvent | DoneEvent | FailEvent | SkipEvent
DecodeFn = Callable[[int, VideoItem, ClipSpec, str], Iterator[Event]]  # (index, item, spec, decoder) -> events
Task = tuple[int, VideoItem, int]  # (index, item, attempt: position in decoder_attempts)

# the decoder policy of both engines


def decoder_attempts(decoder: str) -> tuple[str, str]:
    """The decoder of each try of one video: `decoder` first (auto: decord where it reads right, PyAV from the
    frame where decord fails), then, if that try crashed or hung before its first event, PyAV alone (decord
    segfaults or hangs on some broken inputs, dmlc/decord#373). A try that fails after an event is final."""
    return (decoder, "pyav")


def validate_pool(workers: int, timeout: float) -> None:
    """The options of a decode pool, checked where they are taken and by `EncodeConfig.validate` before any work."""
    if not 0 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be in [0, {MAX_WORKERS}], got {workers}")
    if not 0 < timeout < math.inf:  # nan and inf fail this too: a fetch or decode that never ends must fail
        raise UsageError(f"--video-timeout must be a finite number of seconds > 0, got {timeout}")


def decode_item(
    index: int, item: VideoItem, spec: ClipSpec, decoder: str = "auto", threads: int = 0, storage_options: Options = None,
    fetch_timeout: float | None = None,
) -> Iterator[Event]:
    """One video's events: its ClipEvents, then one DoneEvent or FailEvent (a bad video is an event, not a raise),
    or a SkipEvent for a time range (`item.span`, `video.iter_clips`) shorter than one clip. An image is one 1-frame
    clip (`images.image_clip`, whatever the decoder). `storage_options`, `fetch_timeout` (seconds without
    progress): for a remote item whose bytes were not read ahead."""
    try:
        if item.error is not None:  # a table row whose cells do not make a video: recorded, never opened
            yield FailEvent(index, item.error)
            return
        extras = read_extras(item, storage_options, fetch_timeout)
        if item.is_image:
            meta, clip = image_clip(read_video_bytes(item, storage_options, fetch_timeout), spec)
            yield ClipEvent(index, 0, clip)
            yield DoneEvent(index, meta, 1, extras)
            return
        meta, clips = iter_clips(read_video_bytes(item, storage_options, fetch_timeout), spec, threads=threads, decoder=decoder, span=item.span)
        count = 0
        for clip in clips:
            yield ClipEvent(index, count, clip)
            count += 1
        yield DoneEvent(index, meta, count, extras)
    except RangeTooShort as exc:  # raised before its first clip
        yield SkipEvent(index, str(exc))
    except LfqtokError as exc:
        yield FailEvent(index, str(exc))
    except Exception as exc:  # a decoder bug on one file must not end the run: it is that video's failure
        yield FailEvent(index, scrub(" ".join(f"{type(exc).__name__}: {exc}".split())))  # recorded: no URL's credentials


# worker side


def _worker_main(conn: Connection, clock: Any, spec: ClipSpec, decode: DecodeFn, nice: int) -> None:
    """Worker loop: receive (index, item, decoder), send its events; clock = decode start time, 0 while not decoding."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then kills us
    if nice:
        os.nice(nice)
    while True:
        clock.value = 0.0
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        index, item, decoder = task
        clock.value = time.monotonic()
        for event in decode(index, item, spec, decoder):
            clock.value = 0.0
            try:
                conn.send(event)  # blocks while the parent holds enough events: not decode time
            except OSError:
                return  # the parent is gone
            clock.value = time.monotonic()


# parent side


class _Worker:
    """One decode process, its pipe, its decode clock and the item it is on."""

    def __init__(self, ctx: Any, spec: ClipSpec, decode: DecodeFn, decoders: Sequence[str], nice: int):
        self.decoders = decoders  # per attempt
        self.conn, child = ctx.Pipe()
        self.clock = ctx.Value("d", 0.0, lock=False)
        self.proc = ctx.Process(target=_worker_main, args=(child, self.clock, spec, decode, nice), daemon=True, name="lfqtok-decode")
        self.proc.start()
        child.close()
        self.task: Task | None = None  # what it is on
        self.started = False  # whether it sent an event for its task yet

    @property
    def item(self) -> int | None:
        return self.task[0] if self.task is not None else None

    def give(self, task: Task | None) -> None:
        self.task, self.started = task, False
        if task is not None:
            index, item, attempt = task
            try:
                self.conn.send((index, item, self.decoders[attempt]))
            except OSError:
                pass  # it died: found through its sentinel, and the task goes to another worker

    def received(self, event: Event, tasks: "_Tasks") -> None:
        self.started = True
        if not isinstance(event, ClipEvent):
            self.give(tasks.next())

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


class _Tasks:
    """Videos still to decode: retries first, then the items in order."""

    def __init__(self, items: Iterable[VideoItem]):
        self.items, self.retry = iter(enumerate(items)), deque()
        self.given = 0  # items handed out for their first try
        self.exhausted = False
        self.ahead: tuple[int, VideoItem] | None = None  # one item taken by `more`, not handed out yet

    def more(self) -> bool:
        """Whether a task is left (reads one item ahead from a stream)."""
        if self.retry or self.ahead is not None:
            return True
        if not self.exhausted:
            self.ahead = next(self.items, None)
            self.exhausted = self.ahead is None
        return self.ahead is not None

    def next(self) -> Task | None:
        if self.retry:
            return self.retry.popleft()
        if not self.more():
            return None
        task, self.ahead = self.ahead, None
        self.given += 1
        return (*task, 0)


class DecodePool:
    """Decodes videos into clip events in `workers` processes (0: inline in this process, no timeout).

    Use as a context manager: leaving it kills every worker, also on exceptions and KeyboardInterrupt.
    `decoder`: what each video is decoded with first (None: `resolve_decoder`), PyAV alone on a retry.
    `nice`: added to each worker's niceness (the encode's, when its encoder runs on the CPU: `worker.CPU_ENCODE_NICE`).
    `decode` replaces the per-video function run in the workers (a picklable, module-level function; tests
    use it to simulate hangs and crashes). Remote items' bytes are fetched here, ahead of the workers
    (`sources.iter_fetched`, at most READAHEAD_BYTES), with `storage_options`; a fetch without progress for
    `timeout` seconds is that video's failure, as a decode without progress is.
    """

    def __init__(
        self,
        spec: ClipSpec,
        workers: int,
        timeout: float = 60.0,  # seconds of decode time without a new clip before the worker is killed
        max_pending_clips: int = 64,  # events decoded but not yet taken by the consumer, at most (about)
        *,
        decoder: str | None = None,
        decode: DecodeFn | None = None,
        storage_options: Options = None,
        nice: int = 0,
    ):
        validate_pool(workers, timeout)
        if max_pending_clips < 1:
            raise UsageError(f"max_pending_clips must be >= 1, got {max_pending_clips}")
        self.spec, self.workers, self.timeout, self.max_pending = spec, workers, timeout, max_pending_clips
        self.decoders = decoder_attempts(resolve_decoder(decoder))
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))  # decoder threads per worker: no oversubscription
        self.decode = decode or functools.partial(decode_item, threads=threads, storage_options=storage_options, fetch_timeout=timeout)
        self.storage_options, self.nice = storage_options, nice
        self._ctx = mp.get_context("spawn")  # never fork a parent that may hold torch / CUDA state
        self._pool: list[_Worker] = []

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Kill every worker (they hold nothing worth saving) and wait for them."""
        for worker in self._pool:
            worker.stop()
        self._pool.clear()

    def run(self, items: Iterable[VideoItem]) -> Iterator[Event]:
        """Events for every item (a sequence or a stream, taken as workers free up): per video its ClipEvents in
        order, then exactly one DoneEvent, FailEvent or SkipEvent."""
        if self.workers == 0:  # one try each: a crash here would be this process's
            for index, item in enumerate(iter_fetched(items, self.storage_options, timeout=self.timeout)):
                yield from self.decode(index, item, self.spec, self.decoders[0])
            return
        tasks = _Tasks(iter_fetched(items, self.storage_options, timeout=self.timeout))
        pending: deque[Event] = deque()
        finished = 0  # items whose last event was yielded
        try:
            for worker in self._pool:  # idle workers of an earlier run
                worker.give(tasks.next())
            while len(self._pool) < self.workers and tasks.more():
                self._pool.append(self._start(tasks))
            while finished < tasks.given or tasks.more():
                if len(pending) < self.max_pending:
                    self._collect(pending, tasks, block=not pending)
                if pending:
                    event = pending.popleft()
                    finished += not isinstance(event, ClipEvent)
                    yield event
        except BaseException:
            self.close()  # a consumer that stops early or fails: no worker outlives it
            raise

    # helpers

    def _start(self, tasks: _Tasks) -> _Worker:
        worker = _Worker(self._ctx, self.spec, self.decode, self.decoders, self.nice)
        worker.give(tasks.next())
        return worker

    def _replace(self, worker: _Worker, tasks: _Tasks) -> None:
        worker.stop()
        self._pool[self._pool.index(worker)] = self._start(tasks)

    def _collect(self, pending: deque[Event], tasks: _Tasks, block: bool) -> None:
        """Read what the workers sent (one event each), then fail and replace dead or timed-out workers."""
        busy = [w for w in self._pool if w.task is not None]
        ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], POLL_SECONDS if block else 0))
        for worker in busy:
            if worker.conn in ready:
                try:
                    event = worker.conn.recv()
                except (EOFError, OSError):
                    continue  # it died: handled through its sentinel
                pending.append(event)
                worker.received(event, tasks)
        for worker in busy:
            if not worker.proc.is_alive():
                self._drain(worker, pending)
                self._lost(worker, tasks, pending, f"decoder process died (exit code {worker.proc.exitcode})")
            elif worker.task is not None and 0 < worker.clock.value < time.monotonic() - self.timeout:
                self._lost(worker, tasks, pending, f"decode timed out after {self.timeout:g} s")

    def _lost(self, worker: _Worker, tasks: _Tasks, pending: deque[Event], error: str) -> None:
        """A worker died or hung: its video's next try (`decoder_attempts`) if it sent nothing yet, else it
        fails; the worker is replaced."""
        if worker.task is not None:
            index, item, attempt = worker.task
            if not worker.started and attempt + 1 < len(self.decoders):
                tasks.retry.append((index, item, attempt + 1))
            else:
                pending.append(FailEvent(index, error))
        self._replace(worker, tasks)

    def _drain(self, worker: _Worker, pending: deque[Event]) -> None:
        """Events a worker sent before it died, in order; its item is finished if one of them says so."""
        try:
            while worker.task is not None and worker.conn.poll():
                event = worker.conn.recv()
                pending.append(event)
                worker.started = True
                if not isinstance(event, ClipEvent):
                    worker.task = None
        except (EOFError, OSError):
            pass
