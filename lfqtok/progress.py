"""Rich progress display for `lfqtok encode` on stderr: samples (videos, images) or a table's rows, clips, frames/s, tokens/s,
failures, ETA."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class EncodeProgress:
    """Context manager whose `update(counters)` is the `on_progress` callback of `encode_dataset`."""

    def __init__(self, console: Console, min_interval: float = 0.1):
        self.progress = Progress(
            TextColumn("[bold]encode"),
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
        return self  # the display starts with the first update, so errors found up front print alone

    def __exit__(self, *exc: Any) -> None:
        if self.counters is not None:
            self.last = 0.0
            self.update(self.counters)  # the final numbers, not the last throttled ones
            self.progress.stop()

    def update(self, counters: Any) -> None:
        """Refresh from a `Counters` snapshot, at most every `min_interval` seconds."""
        if self.counters is None:
            self.progress.start()
        self.counters = counters
        now = time.perf_counter()
        if now - self.last < self.min_interval:
            return
        self.last = now
        seconds = max(now - counters.started, 1e-9)
        rows = counters.rows_total > 0  # a table: rows (estimated up front) are what the ETA counts
        self.progress.update(
            self.task,
            total=(max(counters.rows_total, counters.rows_done) if rows else counters.videos_total) or None,
            completed=counters.rows_done if rows else counters.videos_done + counters.videos_failed + counters.videos_skipped,
            unit="rows" if rows else "samples",
            clips=counters.clips,
            fps=counters.frames / seconds,
            tps=counters.tokens / seconds,
            failed=counters.videos_failed,
        )
