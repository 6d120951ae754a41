"""Batch stage: clips from many videos -> fixed-size uint8 batches in a few reused (pinned) buffers.

The buffers are recycled through a queue, so the batcher blocks when the encoder is behind: memory stays
at `num_buffers` batches whatever the decode speed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# classes


class BatcherAborted(RuntimeError):
    """Raised inside `add` when the consumer failed; the consumer's own error is the one to report."""


@dataclass
class Batch:
    """`frames` (n, T, H, W, 3) uint8 view of buffer `slot`; `refs[i]` says where clip i came from."""

    frames: torch.Tensor
    refs: list[Any]
    slot: int


class ClipBatcher:
    """Packs clips into batches of `batch_size`; call `release(batch)` once the batch's frames are consumed."""

    def __init__(
        self,
        batch_size: int,
        clip_shape: tuple[int, ...],
        *,
        pin_memory: bool = False,
        num_buffers: int = 3,
        abort: threading.Event | None = None,  # set by a failed consumer: stop waiting for a buffer
    ):
        self.batch_size = batch_size
        self.abort = abort or threading.Event()
        self.buffers = [
            torch.empty((batch_size, *clip_shape), dtype=torch.uint8, pin_memory=pin_memory) for _ in range(num_buffers)
        ]
        self.free: queue.Queue[int] = queue.Queue()
        for slot in range(num_buffers):
            self.free.put(slot)
        self.slot: int | None = None
        self.refs: list[Any] = []

    def add(self, clip: np.ndarray, ref: Any) -> Batch | None:
        """Copy one (T, H, W, 3) clip into the current buffer; return the batch when it is full."""
        if self.slot is None:
            self.slot = self._next_free()
        np.copyto(self.buffers[self.slot][len(self.refs)].numpy(), clip)  # (clips from Ray's store are read-only)
        self.refs.append(ref)
        return self.flush() if len(self.refs) == self.batch_size else None

    def flush(self) -> Batch | None:
        """The partly filled batch, if any (at the end of the stream)."""
        if self.slot is None or not self.refs:
            return None
        batch = Batch(self.buffers[self.slot][: len(self.refs)], self.refs, self.slot)
        self.slot, self.refs = None, []
        return batch

    def _next_free(self) -> int:
        """Wait for a buffer the encoder has finished with (backpressure), unless the run is aborting."""
        while not self.abort.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        raise BatcherAborted("the encoder stage stopped")

    def release(self, batch: Batch) -> None:
        """Hand the batch's buffer back for reuse."""
        self.free.put(batch.slot)
