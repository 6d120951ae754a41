"""Batch stage: clips from many videos -> fixed-size uint8 batches of one clip shape in a few reused (pinned) buffers.

The buffers are recycled through a queue, so the batcher blocks when the encoder is behind: memory stays
at `num_buffers` batches whatever the decode speed.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UsageError

NUM_BUFFERS = 3  # batch buffers a batcher holds: one filling, one encoding, one for a clip of another shape
MEMORY_SHARE = 0.5  # the batch buffers may take at most this share of the machine's memory (the rest: model, decoders)

# checks


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_buffers(batch_size: int, clip_shape: tuple[int, ...], size: str, memory: int | None = None) -> None:
    """UsageError, before any work, when NUM_BUFFERS batches of `clip_shape` (T, H, W, 3) uint8 clips would take
    more than MEMORY_SHARE of `memory` (this machine's): the line names the `--batch-size` that fits, or `--size`."""
    memory = machine_memory() if memory is None else memory
    clip = math.prod(clip_shape)
    need = NUM_BUFFERS * batch_size * clip
    if need <= MEMORY_SHARE * memory:
        return
    fits = int(MEMORY_SHARE * memory // (NUM_BUFFERS * clip))
    shape = " x ".join(map(str, clip_shape))
    room = f"more than half of this machine's {_gb(memory)} memory"
    if fits >= 1:
        raise UsageError(f"--batch-size {batch_size} at --size {size}: {NUM_BUFFERS} batch buffers of {batch_size} clips of "
                         f"{shape} bytes take {_gb(need)}, {room}; use --batch-size {fits}{' or less' if fits > 1 else ''}")
    raise UsageError(f"--size {size}: {NUM_BUFFERS} batch buffers of even one clip of {shape} bytes take "
                     f"{_gb(NUM_BUFFERS * clip)}, {room}; use a smaller --size (or fewer --clip-frames)")


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
    """Packs clips into batches of `batch_size` clips of one shape; call `release(batch)` once its frames are consumed.

    Clips of different shapes (buckets, `--resize fit`, images beside videos) never share a batch: each shape
    has its own open batch, in a buffer sized for `clip_shape`, the largest clip (T, H, W, 3) of the run. At most
    `num_buffers - 1` batches are open at once: a clip of yet another shape first closes the oldest (a short
    batch), so a buffer is always with the encoder or free and memory stays at `num_buffers` buffers."""

    def __init__(
        self,
        batch_size: int,
        clip_shape: tuple[int, ...],
        *,
        pin_memory: bool = False,
        num_buffers: int = NUM_BUFFERS,
        abort: threading.Event | None = None,  # set by a failed consumer: stop waiting for a buffer
    ):
        if num_buffers < 2:
            raise ValueError(f"num_buffers must be >= 2 (one batch fills while one is encoded), got {num_buffers}")
        self.batch_size = batch_size
        self.capacity = math.prod(clip_shape)  # elements of the largest clip
        self.abort = abort or threading.Event()
        self.buffers = [
            torch.empty(batch_size * self.capacity, dtype=torch.uint8, pin_memory=pin_memory) for _ in range(num_buffers)
        ]
        self.free: queue.Queue[int] = queue.Queue()
        for slot in range(num_buffers):
            self.free.put(slot)
        self.max_open = num_buffers - 1
        self.open: dict[tuple[int, ...], tuple[int, list[Any]]] = {}  # shape -> (slot, refs), oldest first

    def add(self, clip: np.ndarray, ref: Any) -> list[Batch]:
        """Copy one (T, H, W, 3) clip into its shape's buffer; return the batches this closes (full, or the oldest
        open one making room for a new shape), in the order to encode them."""
        shape = tuple(clip.shape)
        closed: list[Batch] = []
        if shape not in self.open:
            if math.prod(shape) > self.capacity:
                raise ValueError(f"clip of shape {shape} is larger than the batcher's buffers ({self.capacity} values a clip)")
            if len(self.open) >= self.max_open:
                closed.append(self._close(next(iter(self.open))))
            self.open[shape] = (self._next_free(), [])
        slot, refs = self.open[shape]
        np.copyto(self._view(slot, shape, self.batch_size)[len(refs)].numpy(), clip)  # (clips from Ray's store are read-only)
        refs.append(ref)
        if len(refs) == self.batch_size:
            closed.append(self._close(shape))
        return closed

    def flush(self) -> list[Batch]:
        """The partly filled batches, oldest first (at the end of the stream)."""
        return [self._close(shape) for shape in list(self.open)]

    def _view(self, slot: int, shape: tuple[int, ...], n: int) -> torch.Tensor:
        return self.buffers[slot][: n * math.prod(shape)].view(n, *shape)

    def _close(self, shape: tuple[int, ...]) -> Batch:
        slot, refs = self.open.pop(shape)
        return Batch(self._view(slot, shape, len(refs)), refs, slot)

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
