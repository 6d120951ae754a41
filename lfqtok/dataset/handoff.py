"""Batches from DataLoader workers to the main process through shared memory that is reused, not reallocated.

torch hands each batch tensor a worker yields over in a fresh shared-memory segment (every page faulted in anew,
a file descriptor sent over a socket each time); for token batches that costs more than reading them. Here each
worker keeps a few slots of shared memory: a batch is written into a free slot and only a small handle crosses
the pipe (the slot's memory itself the first time that slot is used). Unpickling the handle in the main process
gives tensors that view the slot, without a copy (a fresh copy would fault in every page of it anew); the slot
goes back to the worker only when the last of those tensors is gone, so what the user holds is never overwritten.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import uuid
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

# constants

HEADER = 64  # bytes before a slot's data: its state (int64: 0 free, 1 holding a batch), then alignment
ALIGN = 64  # each array's offset in a slot
GRAIN = 1 << 16  # slot sizes are rounded up to this
MAX_SLOTS = 16  # per worker; past that (batches still in flight or held by the user) a batch goes torch's way

Specs = dict[str, tuple[tuple[int, ...], np.dtype]]
Rows = list[tuple[str, tuple[int, ...], str, int]]  # (name, shape, numpy dtype string, byte offset in the slot)

# helpers (numpy views of the slots: a torch op per view would cost more than the batch's hand-over)


def _aligned(n: int, to: int) -> int:
    return -(-n // to) * to


def _layout(specs: Specs) -> tuple[Rows, int]:
    """A row per array, and the bytes they need in a slot."""
    rows, offset = [], HEADER
    for name, (shape, dtype) in specs.items():
        dtype = np.dtype(dtype)
        rows.append((name, tuple(shape), dtype.str, offset))
        offset = _aligned(offset + math.prod(shape) * dtype.itemsize, ALIGN)
    return rows, offset


def _view(memory: np.ndarray, shape: tuple[int, ...], dtype: str, offset: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    return memory[offset : offset + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)


def _state(memory: np.ndarray) -> np.ndarray:
    return memory[:8].view(np.int64)


# worker side


class _Slot:
    def __init__(self, nbytes: int):
        self.buffer = torch.zeros(_aligned(nbytes, GRAIN), dtype=torch.uint8).share_memory_()  # what crosses once
        self.memory = self.buffer.numpy()
        self.state = _state(self.memory)
        self.sent = False  # the main process has this slot's memory (it has received a batch in it)


class _Ring:
    """One worker process's slots; a slot is reused once no tensor of its last batch is left in the main process."""

    def __init__(self):
        self.id, self.pid = uuid.uuid4().hex, os.getpid()
        self.slots: list[_Slot] = []

    def take(self, nbytes: int) -> tuple[int, _Slot] | None:
        """A free slot of at least `nbytes` (a new one if none is free), None when MAX_SLOTS are all held."""
        for n, slot in enumerate(self.slots):
            if slot.memory.size >= nbytes and slot.state[0] == 0:
                return n, slot
        for n, slot in enumerate(self.slots):  # free but too small: replace it
            if slot.state[0] == 0:
                self.slots[n] = _Slot(nbytes)
                return n, self.slots[n]
        if len(self.slots) >= MAX_SLOTS:
            return None
        self.slots.append(_Slot(nbytes))
        return len(self.slots) - 1, self.slots[-1]


_ring: _Ring | None = None


def _this_ring() -> _Ring:
    global _ring
    if _ring is None or _ring.pid != os.getpid():  # (a forked child does not share its parent's slots)
        _ring = _Ring()
    return _ring


class SharedBatch:
    """One batch under construction: `arrays` are empty numpy arrays to fill (views into a free shared slot inside
    a DataLoader worker, ordinary arrays elsewhere); `finish` adds the other fields and gives what to yield."""

    def __init__(self, specs: Specs):
        self._slot: tuple[_Ring, int, _Slot] | None = None
        self._rows, nbytes = _layout(specs)
        ring = _this_ring() if get_worker_info() is not None else None
        taken = ring.take(nbytes) if ring else None
        if taken is None:
            self.arrays = {name: np.empty(shape, dtype=dtype) for name, (shape, dtype) in specs.items()}
            return
        n, slot = taken
        slot.state[0] = 1
        self._slot = ring, n, slot
        self.arrays = {name: _view(slot.memory, shape, dtype, offset) for name, shape, dtype, offset in self._rows}

    def finish(self, fields: dict[str, Any]) -> Any:
        """The batch (the arrays as tensors, then `fields`) as the main process will see it: the dict itself
        outside a worker, in a worker a handle that unpickles into that dict."""
        if self._slot is None:
            return {**{name: torch.from_numpy(a) for name, a in self.arrays.items()}, **fields}
        ring, n, slot = self._slot
        handle = _Handle(ring.id, ring.pid, n, None if slot.sent else slot.buffer, self._rows, fields)
        slot.sent = True
        return handle


class _Handle:
    """What crosses the pipe for a batch in a slot; unpickling it in the main process gives the batch (`_receive`)."""

    def __init__(self, ring: str, pid: int, slot: int, buffer: torch.Tensor | None, rows: Rows, fields: dict[str, Any]):
        self.args = ring, pid, slot, buffer, rows, fields

    def __reduce__(self):
        return _receive, self.args

    def __repr__(self) -> str:
        return "<lfqtok batch in a worker's shared memory: a dict once the DataLoader hands it to the main process>"


# main side

_received: dict[str, tuple[int, dict[int, np.ndarray]]] = {}  # ring id -> (worker pid, slot -> its memory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _receive(ring: str, pid: int, slot: int, buffer: torch.Tensor | None, rows: Rows, fields: dict[str, Any]) -> dict[str, Any]:
    """The batch as tensors viewing its slot, which goes back to the worker once the last of them (and of their
    views) is gone. A slot's memory arrives with its first batch and is kept until its worker has exited
    (checked whenever new memory arrives); batches still held keep it mapped."""
    if buffer is not None:
        if ring not in _received:
            for gone in [r for r, (p, _) in _received.items() if not _alive(p)]:
                del _received[gone]
            _received[ring] = pid, {}
        _received[ring][1][slot] = buffer.numpy()  # (the array holds the tensor, hence the mapping)
    memory = _received[ring][1][slot]
    # a ctypes array over the slot is what every tensor of the batch holds on to: numpy and torch do not see
    # through it, so its finalizer runs exactly when no tensor of the batch is left
    region = (ctypes.c_char * memory.size).from_address(memory.ctypes.data)
    region.memory = memory  # the mapping lives as long as the batch
    weakref.finalize(region, _free, _state(memory))
    batch = {name: _tensor(region, shape, dtype, offset) for name, shape, dtype, offset in rows}
    batch.update(fields)
    return batch


def _tensor(region: ctypes.Array, shape: tuple[int, ...], dtype: str, offset: int) -> torch.Tensor:
    numel = math.prod(shape)
    kind = _torch_dtype(dtype)
    if not numel:
        return torch.empty(shape, dtype=kind)
    return torch.frombuffer(region, dtype=kind, count=numel, offset=offset).view(shape)


def _free(state: np.ndarray) -> None:
    state[0] = 0


# dtypes: slots are laid out in numpy's, batches are torch's


@functools.lru_cache(maxsize=None)
def numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
    """numpy's dtype for a torch dtype, None for those numpy has not (bfloat16): such tensors cannot use a slot."""
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        return None


@functools.lru_cache(maxsize=None)
def _torch_dtype(dtype: str) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
