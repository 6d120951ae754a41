"""Where ShardJobs run: `local` (this machine: in-process on one device, one process per GPU on several) or `ray`
(a Ray cluster). An engine receives the shard job function (a `worker.ShardEncoder`) and runs it unchanged, only
placed (device, decode workers), so every engine writes the same bytes."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from dataclasses import replace
from typing import Any, Iterable, Sequence

import torch

from ..device import resolve_device
from ..errors import LfqtokError
from .sources import ShardJob
from .worker import Counters, ProgressFn, ShardEncoder, ShardResult, decode_workers

ENGINES = ("local", "ray")
PROGRESS_SECONDS = 0.25  # a device process reports its progress at most this often


def run_jobs(
    encoder: ShardEncoder,
    jobs: Iterable[ShardJob],
    engine: str = "local",
    *,
    ray_address: str | None = None,
    verbose: bool = False,
    on_progress: ProgressFn | None = None,
) -> list[ShardResult]:
    """Run `encoder` on `jobs` with the engine named `engine`; results come back in shard order.

    `jobs`: a list, or a stream a table gives (`tables.TableJobs`: read as it is encoded, `part(rank, n)` of it for
    one of several devices, `rows_total` for progress). `ray_address` and `verbose` (Ray's own log lines in the
    terminal) matter to the Ray engine only."""
    if isinstance(jobs, Sequence) and not jobs:
        return []
    if engine == "ray":
        from .ray_engine import run_ray

        results = run_ray(encoder, jobs, on_progress, address=ray_address, verbose=verbose)
    else:
        results = run_local(encoder, jobs, on_progress)
    return sorted(results, key=lambda r: r.shard)


def local_devices(device: str) -> list[str]:
    """'auto' and 'cuda' mean every visible GPU (or the CPU when there is none); 'cuda:N' and 'cpu' mean one."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and device in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(dev)]


# the local engine


def total_counters(jobs: Iterable[ShardJob]) -> Counters:
    """The run's totals for progress: a list's samples, a table stream's (estimated) rows."""
    if isinstance(jobs, Sequence):
        return Counters(videos_total=sum(len(j.items) for j in jobs))
    return Counters(rows_total=getattr(jobs, "rows_total", 0))


def job_part(jobs: Any, rank: int, n: int) -> Any:
    """Every n-th job from the rank-th: of a list by slicing, of a stream by its own `part`."""
    return list(jobs[rank::n]) if isinstance(jobs, Sequence) else jobs.part(rank, n)


def run_local(
    encoder: ShardEncoder, jobs: Iterable[ShardJob], on_progress: ProgressFn | None = None, devices: Sequence[str] | None = None
) -> list[ShardResult]:
    """Run `encoder` on this machine: in this process on one device; on several (`devices`, default: what
    `encoder.device` names), one spawned process each, with its share of the decode workers and every
    len(devices)-th job (dealt round-robin up front); progress is summed here."""
    devices = list(devices or local_devices(encoder.device))
    if len(devices) == 1:
        return replace(encoder, device=devices[0])(jobs, on_progress=on_progress, rows_total=total_counters(jobs).rows_total)
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    share = max(1, decode_workers(encoder.workers) // len(devices))
    procs = [
        ctx.Process(target=_device_main, args=(rank, replace(encoder, device=dev, workers=share), part, messages))
        for rank, dev in enumerate(devices)
        if (part := job_part(jobs, rank, len(devices)))
    ]  # not daemonic: each starts decode workers
    for proc in procs:
        proc.start()
    total = total_counters(jobs)
    latest: dict[int, Counters] = {}
    results: list[ShardResult] = []
    running = len(procs)
    try:
        while running:
            try:
                rank, kind, payload = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise LfqtokError(f"an encode process died (exit code {dead[0].exitcode}); rerun to resume")
                continue
            if kind == "progress":
                latest[rank] = payload
                if on_progress is not None:
                    on_progress(total.set_sum(latest.values()))
            elif kind == "done":
                results.extend(payload)
                running -= 1
            else:  # "error": an exception from the device process, or its formatted traceback
                raise payload if isinstance(payload, LfqtokError) else LfqtokError(str(payload))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return results


def _device_main(rank: int, encoder: ShardEncoder, jobs: Iterable[ShardJob], messages) -> None:
    """Body of one device process: encode its jobs, report progress at most every PROGRESS_SECONDS."""
    last = [0.0]

    def report(counters: Counters) -> None:
        now = time.perf_counter()
        if now - last[0] > PROGRESS_SECONDS:
            last[0] = now
            messages.put((rank, "progress", counters))

    try:
        results = encoder(jobs, on_progress=report)
        messages.put((rank, "progress", Counters.of(results)))
        messages.put((rank, "done", results))
    except LfqtokError as exc:
        messages.put((rank, "error", exc))
    except BaseException:
        messages.put((rank, "error", f"encode on {encoder.device} failed:\n{traceback.format_exc()}"))
