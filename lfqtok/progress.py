"""Progress of a command on stderr: a rich bar on a terminal; elsewhere (SLURM, Ray jobs, nohup, `| tee`) or with
`--log-every SECONDS`, one plain line at that interval: done/total (samples, or a table's rows), throughput, failures,
ETA, the shard being written.

The library never prints: its `on_progress` callbacks hand counts to the classes here (`EncodeProgress` for
`encode_dataset`'s `Counters`, `StepProgress` for the (done, total) of `decode_samples` and `token_stats`).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import UsageError

DEFAULT_LOG_SECONDS = 30.0  # the interval of the plain lines when stderr is not a terminal and --log-every is not given


def check_log_every(seconds: float | None) -> None:
    """`--log-every` is a finite number of seconds > 0 (or not given)."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--log-every must be a number of seconds > 0, got {seconds:g}")


def plain_mode(console: Console, log_every: float | None) -> bool:
    """Plain lines, not a live bar: asked for with `log_every`, or stderr or stdout is not a terminal (a batch job,
    `nohup`, `| tee`: a bar there prints nothing until the end, then one line cut at 80 columns)."""
    stdout_tty = sys.stdout is not None and sys.stdout.isatty()
    return log_every is not None or not (console.is_terminal and stdout_tty)


def progress_count(counters: Any) -> tuple[int, int | None, str]:
    """(done, total, unit) of an encode: samples (done, failed or skipped), or a table's rows (estimated up front)."""
    c = counters
    if c.rows_total > 0:
        return c.rows_done, max(c.rows_total, c.rows_done), "rows"
    return c.videos_done + c.videos_failed + c.videos_skipped, c.videos_total or None, "samples"


def clock(seconds: float) -> str:
    """0:01:23: elapsed time and ETA in the plain lines."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@dataclass
class Status:
    """One progress reading, whatever the command: `done` of `total` `unit`, and what else to say."""

    done: int
    total: int | None
    unit: str  # "samples", "clips", "shards"
    details: list[str] = field(default_factory=list)  # "6 clips", "45.1 frames/s", "0 failed" (in this order)
    writing: tuple[int, ...] = ()  # shard indices being written now
    since: float | None = None  # perf_counter() when the work began (the ETA's rate leaves out the start-up)


def status_line(command: str, status: Status, elapsed: float, label: str = "") -> str:
    """One plain line: `[12:00:00] encode [part] 12/40 samples (30%), <details>, 0:01:23 elapsed, ETA 0:03:14,
    writing 00003.tar`; printable ASCII only, as wide as it needs."""
    head = f"[{time.strftime('%H:%M:%S')}] {command}{f' [{label}]' if label else ''}"
    done = f"{status.done:,}/{status.total:,}" if status.total else f"{status.done:,}"
    percent = f" ({status.done / status.total:.0%})" if status.total else ""
    parts = [f"{head} {done} {status.unit}{percent}", *status.details, f"{clock(elapsed)} elapsed"]
    if status.total and status.done >= status.total:
        parts.append("done")
    elif status.total and status.done > 0:
        working = elapsed if status.since is None else time.perf_counter() - status.since
        parts.append(f"ETA {clock(working / status.done * (status.total - status.done))}")
    else:
        parts.append("ETA -")
    if status.writing:
        shown = ", ".join(f"{s:05d}.tar" for s in status.writing[:3])
        parts.append(f"writing {shown}{f' (+{len(status.writing) - 3})' if len(status.writing) > 3 else ''}")
    return ", ".join(parts)


class LogLines:
    """Prints `status_line` of `read()` every `every` seconds from a daemon thread, from `start` on (so a run that
    lists inputs for long, or stalls, still says where it stands); the owner prints at once on its first update."""

    def __init__(self, console: Console, command: str, every: float, read: Callable[[], Status], label: str = ""):
        self.console, self.command, self.every, self.read, self.label = console, command, every, read, label
        self.started = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lfqtok-log-lines", daemon=True)
        self.lock = threading.Lock()

    def start(self) -> None:
        self.thread.start()

    def close(self, final: bool) -> None:
        """Stop the lines; `final`: print the last reading (once, even when complete)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        if final:
            self.print(final=True)

    def print(self, final: bool = False) -> None:
        """One line of the latest reading; a complete one only as the `final` line."""
        with self.lock:
            status = self.read()
            if not final and status.total and status.done >= status.total:
                return
            line = status_line(self.command, status, time.perf_counter() - self.started, self.label)
            file = self.console.file
            file.write(line + "\n")
            file.flush()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.print()


class StepProgress:
    """Context manager whose `update(done, total)` is the `on_progress` callback of `decode_samples` (clips) and
    `token_stats` (shards): a bar on a terminal, plain lines elsewhere or with `log_every`."""

    def __init__(self, console: Console, command: str, unit: str, log_every: float | None = None):
        self.command, self.unit = command, unit
        self.done, self.total = 0, 0
        self.started = False  # the first update came
        self.began = 0.0  # when it came
        plain = plain_mode(console, log_every)
        self.lines = LogLines(console, command, log_every or DEFAULT_LOG_SECONDS, self.status) if plain else None
        self.bar = None if plain else Progress(
            TextColumn(f"[bold]{command}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
        )
        self.task = self.bar.add_task(command, total=None) if self.bar else None

    def __enter__(self) -> "StepProgress":
        if self.lines:
            self.lines.start()
        return self  # the bar starts with the first update, so errors found up front print alone

    def __exit__(self, *exc: Any) -> None:
        if self.lines:
            self.lines.close(final=self.started)
        elif self.started:
            self.bar.stop()

    def status(self) -> Status:
        if not self.started:
            return Status(0, None, self.unit, ["starting (reading the inputs, loading the model)"])
        return Status(self.done, self.total, self.unit, since=self.began)

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        first, self.started = not self.started, True
        if first:
            self.began = time.perf_counter()
        if self.lines:
            if first:
                self.lines.print()
        elif first:
            self.bar.start()
        if self.bar:
            self.bar.update(self.task, completed=done, total=total)


class EncodeProgress:
    """Context manager whose `update(counters)` is the `on_progress` callback of `encode_dataset`: a bar on a
    terminal, plain lines (`LogLines`) elsewhere or with `log_every`; `label` names the part of a split run in them."""

    def __init__(self, console: Console, min_interval: float = 0.1, log_every: float | None = None, label: str = ""):
        plain = plain_mode(console, log_every)
        self.lines = LogLines(console, "encode", log_every or DEFAULT_LOG_SECONDS, self.status, label) if plain else None
        self.progress = Progress(
            TextColumn("[bold]encode"),  # the part of a split run is named by the summary: the bar has no room
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[clips]:,} clips"),
            TextColumn("{task.fields[fps]:,.1f} frames/s"),
            TextColumn("{task.fields[tps]:,.0f} tokens/s"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("encode", total=None, clips=0, fps=0.0, tps=0.0, failed=0, unit="samples")
        self.min_interval = min_interval
        self.last = 0.0
        self.counters: Any = None

    def __enter__(self) -> "EncodeProgress":
        if self.lines:
            self.lines.start()
        return self  # the bar starts with the first update, so errors found up front print alone

    def __exit__(self, *exc: Any) -> None:
        if self.lines:
            self.lines.close(final=self.counters is not None)
            return
        if self.counters is None:
            return
        self.last = 0.0
        self.update(self.counters)  # the final numbers, not the last throttled ones
        self.progress.stop()

    def status(self) -> Status:
        """The latest `Counters` as a plain line's reading."""
        c = self.counters
        if c is None:
            return Status(0, None, "samples", ["starting (listing the inputs, loading the model)"])
        seconds = max(time.perf_counter() - c.started, 1e-9)
        details = [f"{c.clips:,} clips", f"{c.videos_failed:,} failed", f"{c.frames / seconds:,.1f} frames/s",
                   f"{c.tokens / seconds:,.0f} tokens/s"]
        done, total, unit = progress_count(c)
        return Status(done, total, unit, details, tuple(c.writing), c.started)

    def update(self, counters: Any) -> None:
        """Refresh from a `Counters` snapshot, at most every `min_interval` seconds."""
        first = self.counters is None
        self.counters = counters
        if self.lines:
            if first:
                self.lines.print()
            return
        if first:
            self.progress.start()
        now = time.perf_counter()
        if now - self.last < self.min_interval:
            return
        self.last = now
        seconds = max(now - counters.started, 1e-9)
        done, total, unit = progress_count(counters)
        self.progress.update(
            self.task,
            total=total,
            completed=done,
            unit=unit,
            clips=counters.clips,
            fps=counters.frames / seconds,
            tps=counters.tokens / seconds,
            failed=counters.videos_failed,
        )
