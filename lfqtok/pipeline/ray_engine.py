"""Ray engine: shard jobs run on GPU actors (one `ShardEncoder` each, model loaded once per actor), fed by CPU
decode tasks anywhere in the cluster (`RayDecodePool`: one streaming Ray task per video).

The driver deals shards to actors with bounded in-flight work and sums their progress. A shard whose actor
died (node lost, OOM-killed) is retried on another actor: safe, because a shard is finished exactly when its
`_stats.json` exists, and a rerun of a shard overwrites its temp files. Each retry and replaced actor is one
warning on the `lfqtok` logger; Ray's own log lines stay in its log files unless `verbose`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from ..errors import LfqtokError, UsageError
from .pool import ClipEvent, DecodeFn, Event, FailEvent, decode_item, decoder_attempts
from .sources import ShardJob, VideoItem
from ..io.storage import Options, is_url
from .video import ClipSpec, resolve_decoder

if TYPE_CHECKING:  # worker.py imports torch: decode tasks import this module and must stay light
    from .worker import Counters, ProgressFn, ShardEncoder, ShardResult

MAX_RETRIES = 2  # a shard whose actor died runs at most 1 + MAX_RETRIES times
SHARDS_PER_ACTOR = 2  # in flight per actor: the next shard decodes while the last one's tail is encoded
CLIPS_AHEAD = 4  # clips a decode task may run ahead of its consumer (Ray generator backpressure)
POLL_SECONDS = 0.5  # how often the driver collects progress from the actors
ACTOR_START_TIMEOUT = 600.0  # seconds without any live actor before the run gives up (cluster too small)
MIN_STALL_SECONDS = 600.0  # a busy actor whose progress has not moved this long (or 5 video timeouts) is killed
INSTALL_HINT = '--engine ray needs Ray, which is not installed: pip install "lfqtok[ray]"'

log = logging.getLogger(__name__)

# helpers


def import_ray() -> Any:
    """Ray is an optional extra: without it, `--engine ray` is one clear usage error."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


@contextmanager
def connected(address: str | None, verbose: bool = False) -> Iterator[Any]:
    """Start a local cluster (None: or join the one `ray start` runs on this machine) or join one ('auto',
    'host:port', 'ray://...'); a connected driver stays so; leaving stops only what ray.init started.

    Unless `verbose`, Ray's own lines (workers' output, its warnings, the raylet's "worker died" notices that
    it prints on stdout, into `--json` output) stay in /tmp/ray/session_latest/logs for the whole run."""
    ray = import_ray()
    with _quiet(ray, verbose):
        if ray.is_initialized():
            yield ray
            return
        try:
            ray.init(address=address, log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
        except (ConnectionError, TimeoutError, ValueError) as exc:
            raise UsageError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc}); start one with `ray start --head`") from None
        try:
            yield ray
        finally:
            ray.shutdown()


@contextmanager
def _quiet(ray: Any, verbose: bool) -> Iterator[None]:
    """Keep the driver's relay of cluster errors (the raylet's worker-died and task-retry notices, which Ray
    prints to stdout whatever `log_to_driver` says) off the terminal while inside; they stay in Ray's logs.
    That relay has no public switch: this is the module flag Ray's own debugger (ray.util.rpdb) sets."""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    if verbose or not hasattr(module, "_worker_logs_enabled"):
        yield
        return
    before, module._worker_logs_enabled = module._worker_logs_enabled, False
    try:
        yield
    finally:
        module._worker_logs_enabled = before


def absolute_jobs(jobs: Iterable[ShardJob]) -> Iterator[ShardJob]:
    """Workers run in other directories (and on other machines): every path they open must be absolute (made so as
    the jobs are dealt: a table's stream stays one)."""
    absolute = lambda item: item if is_url(item.path) or not item.path else replace(item, path=os.path.abspath(item.path))
    return (replace(job, items=tuple(map(absolute, job.items))) for job in jobs)


def absolute_model(model: str) -> str:
    """A checkpoint path as every node must open it ('default' stays: the weights ship in the package)."""
    return os.path.abspath(model) if not is_url(model) and os.path.isfile(model) else model


# decode tasks


def _decode_task(decode: DecodeFn, index: int, item: VideoItem, spec: ClipSpec, decoder: str) -> Iterator[Event | None]:
    """Body of one decode task: None (it runs: its decode clock starts), then the events of one video
    (`pool.decode_item`: the same clips and the same error lines as the local engine)."""
    yield None
    yield from decode(index, item, spec, decoder)


@functools.lru_cache(maxsize=None)
def _remote_decode():
    """The decode task: one CPU. Ray replays it once, with the same decoder, if its worker or node dies (a lost node
    costs no video; the clips are not repeated); a task lost again then goes by the pool's decoder attempts."""
    return import_ray().remote(num_cpus=1, max_retries=1, _generator_backpressure_num_objects=CLIPS_AHEAD)(_decode_task)


@dataclass
class _Decoding:
    """One video whose decode task is in flight."""

    item: int
    stream: Any  # ray.ObjectRefGenerator
    video: VideoItem  # what it decodes (tried again with the next decoder when lost before its first event)
    attempt: int = 0  # position in the pool's decoder attempts
    started: bool = False  # whether the task runs (a task queued for a free core cannot time out)
    sent: bool = False  # whether it yielded an event of its video yet (after that, a lost task is a failure)
    stalled: float = 0.0  # seconds waited on it since its last value, once started


class RayDecodePool:
    """`DecodePool`'s interface, with each video decoded by a Ray task on any node of the cluster (`num_cpus=1`).

    At most `workers` videos in flight (0 counts as 1), each at most CLIPS_AHEAD clips ahead of the consumer.
    Events per video: its ClipEvents in order, then one DoneEvent, FailEvent or SkipEvent (a time range shorter
    than one clip); a task that yields nothing for `timeout` seconds of waiting (time the consumer spends
    elsewhere does not count) is killed. A task killed or lost before its first event is tried again with the
    next of `decoder_attempts(decoder)` (PyAV alone), as `DecodePool` does; after an event, or on the last try,
    the video fails.
    `decode` replaces the per-video function, as in `DecodePool` (tests simulate hangs and crashes with it).
    `nice` is `DecodePool`'s, left to Ray: its tasks hold the CPUs it reserved for them (`num_cpus=1`).
    """

    def __init__(
        self, spec: ClipSpec, workers: int, timeout: float = 60.0, *, decoder: str | None = None, decode: DecodeFn | None = None,
        storage_options: Options = None, nice: int = 0,
    ):
        self.spec, self.workers, self.timeout = spec, max(1, workers), timeout
        self.decoders = decoder_attempts(resolve_decoder(decoder))
        # one core per task; a remote video is fetched by its task, on its node (tasks in flight overlap fetches)
        self.decode = decode or functools.partial(decode_item, threads=1, storage_options=storage_options, fetch_timeout=timeout)
        self.active: list[_Decoding] = []

    def __enter__(self) -> "RayDecodePool":
        self.ray = import_ray()
        self.task = _remote_decode()
        return self

    def __exit__(self, *exc: Any) -> None:
        for running in self.active:
            self.ray.cancel(running.stream, force=True)
        self.active.clear()

    def run(self, items: Iterable[VideoItem]) -> Iterator[Event]:
        todo = enumerate(items)
        ahead = next(todo, None)
        while ahead is not None or self.active:
            while ahead is not None and len(self.active) < self.workers:
                index, item = ahead
                self.active.append(_Decoding(index, self._submit(index, item, 0), item))
                ahead = next(todo, None)
            for running in self._wait():
                event = self._next_event(running)
                if event is None:
                    continue
                if not isinstance(event, ClipEvent):
                    self.active.remove(running)
                yield event
            for running in [r for r in self.active if r.stalled >= self.timeout]:
                self.ray.cancel(running.stream, force=True)
                event = self._lost(running, f"decode timed out after {self.timeout:g} s")
                if event is not None:
                    self.active.remove(running)
                    yield event

    # helpers

    def _submit(self, index: int, item: VideoItem, attempt: int) -> Any:
        return self.task.remote(self.decode, index, item, self.spec, self.decoders[attempt])

    def _lost(self, running: _Decoding, error: str) -> FailEvent | None:
        """A task that died or hung: its video's next try if it sent no event yet (None), else its failure."""
        if running.sent or running.attempt + 1 >= len(self.decoders):
            return FailEvent(running.item, error)
        running.attempt += 1
        running.stream = self._submit(running.item, running.video, running.attempt)
        running.started, running.stalled = False, 0.0
        return None

    def _wait(self) -> list[_Decoding]:
        """The videos with a value ready, oldest first (the writer emits in input order); blocks until one is."""
        streams = [r.stream for r in self.active]
        started = time.monotonic()
        ready, _ = self.ray.wait(streams, num_returns=len(streams), timeout=0)
        if not ready:
            stalled = [r.stalled for r in self.active if r.started]
            patience = max(0.01, self.timeout - max(stalled)) if stalled else None
            ready, _ = self.ray.wait(streams, num_returns=1, timeout=patience)
        waited = time.monotonic() - started
        for running in self.active:
            running.stalled += waited if running.started else 0.0
        ready_ids = set(map(id, ready))
        return [r for r in self.active if id(r.stream) in ready_ids]

    def _next_event(self, running: _Decoding) -> Event | None:
        """The next event of a ready task; None for its 'started' value, or when it died and is tried again."""
        running.started, running.stalled = True, 0.0
        try:
            event = self.ray.get(next(running.stream))
        except StopIteration:
            return FailEvent(running.item, "decoder stopped without a result")
        except self.ray.exceptions.RayError as exc:
            return self._lost(running, f"decoder process died ({type(exc).__name__})")
        running.sent = running.sent or event is not None
        return event


# encode actors


@dataclass(frozen=True)
class ActorPlan:
    """How many encode actors, what each reserves, and how many decode tasks each shard keeps in flight."""

    actors: int
    num_gpus: int
    num_cpus: int
    device: str
    decode_tasks: int


def plan_actors(resources: dict[str, float], device: str, workers: int | None, num_jobs: int | None) -> ActorPlan:
    """One actor per GPU of the cluster (CPU actors, one per 4 cores, when it has none or `device` is 'cpu'), at
    most `num_jobs` (None: not known, a table's stream); the remaining cores decode, shared by the shards in flight
    unless `workers` fixes the tasks per shard."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    on_gpu = gpus > 0 and device != "cpu"
    if device.startswith("cuda") and not on_gpu:
        raise UsageError(f"--device {device}: the Ray cluster has no GPUs (use --device auto or cpu)")
    actors = max(1, min(num_jobs or 2**31, gpus if on_gpu else cpus // 4))
    actor_cpus = 1 if cpus >= 2 * actors else 0  # never take the cores the decode tasks need
    spare = max(1, cpus - actors * actor_cpus)
    decode = workers if workers is not None else max(1, spare // (actors * SHARDS_PER_ACTOR))
    return ActorPlan(actors, int(on_gpu), actor_cpus, "cuda" if on_gpu else "cpu", decode)


class EncodeActor:
    """Holds one ShardEncoder (model loaded once, in `ready`) and the live counters of the shards it encodes."""

    def __init__(self, encoder: "ShardEncoder"):
        self.encoder = encoder
        self.live: dict[int, Counters] = {}

    def ready(self) -> None:
        """Load the model now: a model error surfaces here as itself, before any shard is dealt."""
        self.encoder.tokenizer

    def encode(self, job: ShardJob) -> list[ShardResult]:
        def report(counters: Counters) -> None:
            self.live[job.index] = counters

        try:
            return self.encoder([job], on_progress=report)
        finally:
            self.live.pop(job.index, None)

    def progress(self) -> dict[int, Counters]:
        return dict(self.live)


@dataclass
class _Slot:
    """One actor as the driver sees it: started (ready call pending) -> live -> dead."""

    handle: Any
    ready: Any  # ObjectRef of its `ready()` call until it answered, then None
    running: int = 0
    live: dict[int, Any] = field(default_factory=dict)  # its last progress report: shard -> Counters
    poll: Any = None  # ObjectRef of its pending `progress()` call
    moved: float = field(default_factory=time.monotonic)  # when its progress last changed or it got a shard
    stalled: bool = False  # killed because its progress stopped moving

    @property
    def usable(self) -> bool:
        return self.ready is None and self.running < SHARDS_PER_ACTOR


class Dispatcher:
    """Deals shard jobs to encode actors, retries the shards of actors that died, sums progress.

    Each actor runs `encoder` on the plan's device with its decode tasks per shard, decoding through Ray tasks."""

    def __init__(
        self, ray: Any, encoder: "ShardEncoder", plan: ActorPlan, actor_cls: type = EncodeActor, stall_timeout: float | None = None
    ):
        self.ray, self.plan = ray, plan
        # decode stalls are cut by the pool after video_timeout, so a healthy shard's counters move at least that often
        self.stall_timeout = stall_timeout if stall_timeout is not None else max(MIN_STALL_SECONDS, 5 * encoder.video_timeout)
        remote_cls = ray.remote(actor_cls).options(
            num_gpus=plan.num_gpus, num_cpus=plan.num_cpus, max_concurrency=SHARDS_PER_ACTOR + 1, max_restarts=0
        )
        placed = replace(encoder, device=plan.device, workers=plan.decode_tasks, pool_factory=RayDecodePool)
        self.spawn = lambda: remote_cls.remote(placed)
        self.slots: list[_Slot] = []
        self.running: dict[Any, tuple[ShardJob, int, _Slot]] = {}  # ObjectRef -> (job, attempt, slot)
        self.results: list[ShardResult] = []
        self.start_failures = 0  # actors that died before they were ready (bounded: lfqtok missing on a node, ...)

    def run(self, jobs: Iterable[ShardJob], on_progress: "ProgressFn | None", total: "Counters | None" = None) -> list[ShardResult]:
        """Deal `jobs` (a list, or a stream read as shards are dealt); `total`: the run's totals for progress."""
        from .worker import Counters

        total = total or Counters(videos_total=sum(len(j.items) for j in jobs) if isinstance(jobs, Sequence) else 0)
        todo = _Todo(jobs)
        for _ in range(self.plan.actors):
            self._start_actor()
        last_live = time.monotonic()
        try:
            while todo or self.running:
                self._deal(todo)
                self._wait(todo)
                if any(s.ready is None for s in self.slots):
                    last_live = time.monotonic()
                elif time.monotonic() - last_live > ACTOR_START_TIMEOUT:
                    raise LfqtokError(
                        f"no encode actor could start on the Ray cluster in {ACTOR_START_TIMEOUT:g} s "
                        f"(needs {self.plan.num_gpus} GPU, {self.plan.num_cpus} CPU each); finished shards are kept"
                    )
                self._poll()
                self._kill_stalled()
                if on_progress is not None:
                    on_progress(self._progress(total))
        finally:
            for slot in self.slots:
                self.ray.kill(slot.handle)
        if on_progress is not None:
            on_progress(self._progress(total))
        return self.results

    # helpers

    def _start_actor(self) -> None:
        handle = self.spawn()
        self.slots.append(_Slot(handle, handle.ready.remote()))

    def _deal(self, todo: deque) -> None:
        """Each waiting shard goes to the least busy live actor (a dead one is gone from `slots` already)."""
        while todo:
            usable = [s for s in self.slots if s.usable]
            if not usable:
                return
            slot = min(usable, key=lambda s: s.running)
            job, attempt = todo.popleft()
            slot.running += 1
            slot.moved = time.monotonic()
            self.running[slot.handle.encode.remote(job)] = (job, attempt, slot)

    def _wait(self, todo: deque) -> None:
        starting = {s.ready: s for s in self.slots if s.ready is not None}
        waitables = list(self.running) + list(starting)
        ready, _ = self.ray.wait(waitables, num_returns=1, timeout=POLL_SECONDS)
        for ref in ready:
            if ref in starting:
                self._started(starting[ref])
            else:
                self._finished(ref, todo)

    def _started(self, slot: _Slot) -> None:
        try:
            self.ray.get(slot.ready)
        except self.ray.exceptions.RayTaskError as exc:  # the model could not be loaded: same on every actor
            raise _cause(exc, "an encode actor failed to start") from None
        except self.ray.exceptions.RayError as exc:  # died while starting (node lost, broken install): another
            self.start_failures += 1
            if self.start_failures > self.plan.actors * (MAX_RETRIES + 1):
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise LfqtokError(f"encode actors keep dying before they are ready ({self.start_failures} so far): {first_line}") from None
            log.warning("an encode actor died while starting (%s); starting another", type(exc).__name__)
            self.slots.remove(slot)
            self._start_actor()
            return
        slot.ready = None

    def _finished(self, ref: Any, todo: deque) -> None:
        job, attempt, slot = self.running.pop(ref)
        slot.running -= 1
        try:
            self.results.extend(self.ray.get(ref))
        except self.ray.exceptions.RayTaskError as exc:  # the shard itself failed (disk full, CUDA OOM, ...)
            raise _cause(exc, f"shard {job.index} failed") from None
        except self.ray.exceptions.RayError as exc:  # the actor died: its shards go to the others
            if attempt >= MAX_RETRIES:
                raise LfqtokError(
                    f"shard {job.index} failed {attempt + 1} times ({type(exc).__name__}: its encode actor died or stalled); "
                    "finished shards are kept, rerun to resume"
                ) from None
            why = f"made no progress for {self.stall_timeout:g} s" if slot.stalled else f"died ({type(exc).__name__})"
            log.warning("shard %d: its encode actor %s; retrying it on a new actor (attempt %d of %d)", job.index, why, attempt + 2, MAX_RETRIES + 1)
            todo.appendleft((job, attempt + 1))
            self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
        """A dead actor's place goes to a new one (it starts when the cluster has room); once per actor."""
        if slot in self.slots:
            self.slots.remove(slot)
            self.ray.kill(slot.handle)
            self._start_actor()

    def _poll(self) -> None:
        """Collect each live actor's answer to its last `progress()` call and ask again (never more than one)."""
        for slot in list(self.slots):
            if slot.poll is not None and self.ray.wait([slot.poll], timeout=0)[0]:
                poll, slot.poll = slot.poll, None
                try:
                    live = self.ray.get(poll)
                    if live != slot.live:
                        slot.live, slot.moved = live, time.monotonic()
                except self.ray.exceptions.RayError as exc:  # it died: an idle one is replaced now, a busy one
                    slot.live = {}  # when its shards come back failed (and are retried)
                    if not slot.running:
                        log.warning("an idle encode actor died (%s); starting a new one", type(exc).__name__)
                        self._replace(slot)
                        continue
            if slot.poll is None and slot.ready is None:
                slot.poll = slot.handle.progress.remote()

    def _kill_stalled(self) -> None:
        """An actor with shards whose progress has not moved for `stall_timeout` (hung GPU, deadlock) is killed:
        its shards then come back failed from Ray and are retried like those of an actor that died."""
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.running and now - slot.moved > self.stall_timeout:
                slot.stalled = True  # said in the line about its shards' retries
                self._replace(slot)

    def _progress(self, total: "Counters") -> "Counters":
        """Finished shards' counts plus the live counters of the shards still running (on the actor they run on)."""
        from .worker import Counters

        running = {(id(slot), job.index) for job, _, slot in self.running.values()}
        live = [c for slot in self.slots for shard, c in slot.live.items() if (id(slot), shard) in running]
        return total.set_sum([Counters.of(self.results), *live])


class _Todo:
    """Shards to deal as (job, attempt): retries first, then the jobs in order, read one ahead (`bool` says whether
    any is left)."""

    def __init__(self, jobs: Iterable[ShardJob]):
        self.retries: deque[tuple[ShardJob, int]] = deque()
        self.stream = iter(jobs)
        self.ahead = next(self.stream, None)

    def __bool__(self) -> bool:
        return bool(self.retries) or self.ahead is not None

    def popleft(self) -> tuple[ShardJob, int]:
        if self.retries:
            return self.retries.popleft()
        job, self.ahead = self.ahead, next(self.stream, None)
        return job, 0

    def appendleft(self, retry: tuple[ShardJob, int]) -> None:
        self.retries.appendleft(retry)


def _cause(exc: Any, what: str) -> LfqtokError:
    """The error raised inside a Ray task, as the one-line LfqtokError the CLI prints."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, LfqtokError):
        return cause
    return LfqtokError(f"{what}: {type(cause).__name__}: {cause}" if cause is not None else f"{what}: {exc}")


# the entry point


def run_ray(
    encoder: "ShardEncoder",
    jobs: Iterable[ShardJob],
    on_progress: "ProgressFn | None" = None,
    *,
    address: str | None = None,
    verbose: bool = False,
) -> list[ShardResult]:
    """Run `encoder` on shard jobs on a Ray cluster (`address`, see `connected`); results come back as the local
    engine's do (`jobs`: a list, or a table's stream, read by the driver as shards are dealt). `verbose`: Ray's own
    log lines go to the terminal too."""
    from .worker import Counters

    listed = isinstance(jobs, Sequence)
    total = Counters(videos_total=sum(len(j.items) for j in jobs) if listed else 0, rows_total=getattr(jobs, "rows_total", 0))
    with connected(address, verbose) as ray:
        plan = plan_actors(ray.cluster_resources(), encoder.device, encoder.workers, len(jobs) if listed else None)
        out = encoder.out if is_url(encoder.out) else os.path.abspath(encoder.out)
        encoder = replace(encoder, out=out, model=absolute_model(encoder.model))
        return Dispatcher(ray, encoder, plan).run(absolute_jobs(jobs), on_progress, total)
