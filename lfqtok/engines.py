"""Where ShardJobs run: `local` (this machine: in-process on one device, one process per GPU on several)
or `ray` (a Ray cluster). Every engine calls the same `ShardEncoder`, so outputs are identical."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from pathlib import Path
from typing import Sequence

import torch

from .encode import Counters, EncodeConfig, ProgressFn, ShardEncoder, ShardResult, resolve_device
from .errors import LfqtokError
from .sources import ShardJob


def run_jobs(config: EncodeConfig, out: Path, jobs: Sequence[ShardJob], on_progress: ProgressFn | None = None) -> list[ShardResult]:
    """Run `jobs` on the engine `config.engine` names; results come back in job order."""
    if not jobs:
        return []
    if config.engine == "ray":
        from .ray_engine import run_ray

        results = run_ray(config, out, jobs, on_progress=on_progress)
    else:
        devices = local_devices(config.device)
        if len(devices) == 1:
            results = ShardEncoder(config, out, devices[0])(jobs, on_progress=on_progress)
        else:
            results = _run_multi_device(config, out, jobs, devices, on_progress)
    return sorted(results, key=lambda r: r.shard)


def local_devices(device: str) -> list[str]:
    """'auto' and 'cuda' mean every visible GPU (or the CPU when there is none); 'cuda:N' and 'cpu' mean one."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and device in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(dev)]


# several devices: one spawned process each, shard jobs dealt round-robin


def _run_multi_device(
    config: EncodeConfig, out: Path, jobs: Sequence[ShardJob], devices: Sequence[str], on_progress: ProgressFn | None
) -> list[ShardResult]:
    """One process per device, each with its share of the decode workers; progress summed here."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    share = max(1, config.num_workers() // len(devices))
    per_device = [list(jobs[i :: len(devices)]) for i in range(len(devices))]
    procs = [
        ctx.Process(target=_device_main, args=(config, str(out), dev, share, part, messages))  # not daemonic: it starts decode workers
        for dev, part in zip(devices, per_device)
        if part
    ]
    for proc in procs:
        proc.start()
    total = Counters(videos_total=sum(len(j.items) for j in jobs))
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
                _sum_into(total, latest.values())
                if on_progress is not None:
                    on_progress(total)
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


def _sum_into(total: Counters, parts) -> None:
    for name in ("videos_done", "videos_failed", "clips", "frames", "tokens"):
        setattr(total, name, sum(getattr(p, name) for p in parts))


def _device_main(config: EncodeConfig, out: str, device: str, workers: int, jobs: list[ShardJob], messages) -> None:
    """Body of one device process: encode its jobs, report progress at most a few times a second."""
    from dataclasses import replace

    rank = int(device.split(":")[-1]) if ":" in device else 0
    last = [0.0]

    def report(counters: Counters) -> None:
        now = time.perf_counter()
        if now - last[0] > 0.25:
            last[0] = now
            messages.put((rank, "progress", counters))

    try:
        encoder = ShardEncoder(replace(config, workers=workers), out, device)
        results = encoder(jobs, on_progress=report)
        messages.put((rank, "progress", Counters(**{**vars(Counters()), **_counts(results)})))
        messages.put((rank, "done", results))
    except LfqtokError as exc:
        messages.put((rank, "error", exc))
    except BaseException:
        messages.put((rank, "error", f"encode on {device} failed:\n{traceback.format_exc()}"))


def _counts(results: Sequence[ShardResult]) -> dict[str, int]:
    return {
        "videos_done": sum(r.samples for r in results),
        "videos_failed": sum(len(r.failures) for r in results),
        "clips": sum(r.clips for r in results),
        "frames": sum(r.frames for r in results),
        "tokens": sum(r.tokens for r in results),
    }
