"""Pack stage: token indices <-> storage arrays (`uint16` up to 2^16 codes, else `uint32`) and tight D-bit packing.

Numpy only (torch only to narrow a Tensor a caller passes in), so reading tokens back stays light. Tight packing
is a big-endian bit stream: token 0's most significant bit is bit 7 of byte 0, tokens follow each other with no
padding, the last byte is zero-padded; 8 tokens of D bits are exactly D bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lfqtok.errors import InputError, UsageError

# constants

MAX_CODEBOOK_SIZE = 1 << 32
CHUNK_TOKENS = 1 << 20  # tokens per vectorized step of (un)packing: bounds the temporary bit matrix to 32 MiB

# helpers


def as_numpy(indices: Any) -> np.ndarray:
    """ndarray, torch Tensor (any device) or sequence -> ndarray, without importing torch."""
    if hasattr(indices, "detach"):
        indices = indices.detach().cpu().numpy()
    return np.asarray(indices)


def check_range(arr: np.ndarray, limit: int, what: str) -> None:
    """Integer array with every value in [0, limit), else UsageError."""
    if arr.dtype.kind not in "iu":
        raise UsageError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= limit):
        raise UsageError(f"{what} out of range [0, {limit}): min {int(arr.min())}, max {int(arr.max())}")


def check_bits(bits: int) -> None:
    if not 1 <= bits <= 32:
        raise UsageError(f"bits must be in 1..32, got {bits}")


# storage arrays


def token_dtype(codebook_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every index: uint16 up to 2^16 codes, uint32 up to 2^32."""
    if not 1 <= codebook_size <= MAX_CODEBOOK_SIZE:
        raise UsageError(f"codebook_size must be in 1..2^32, got {codebook_size}")
    return np.dtype(np.uint16 if codebook_size <= 1 << 16 else np.uint32)


def to_storage(indices: Any, codebook_size: int) -> np.ndarray:
    """Indices (any shape: ndarray, sequence, or a Tensor on any device) -> same-shape uint16/uint32 array, range-checked.

    A Tensor is narrowed on its own device before it is copied to the host (what the encode pipeline writes: 2-4x
    fewer bytes leave the GPU than as int64); int16/int32 hold the same bits as uint16/uint32 for in-range values.
    """
    dtype = token_dtype(codebook_size)
    if not hasattr(indices, "detach"):
        arr = np.asarray(indices)
        check_range(arr, codebook_size, "token indices")
        return arr.astype(dtype)
    import torch  # the caller holds a Tensor, so torch is loaded already

    ids = indices.detach()
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise UsageError(f"token indices must be integers, got dtype {ids.dtype}")
    if ids.numel():
        lo, hi = torch.aminmax(ids)
        if int(lo) < 0 or int(hi) >= codebook_size:
            raise UsageError(f"token indices out of range [0, {codebook_size}): min {int(lo)}, max {int(hi)}")
    narrow = torch.int16 if dtype == np.uint16 else torch.int32
    return ids.to(narrow).cpu().numpy().view(dtype)


def from_storage(arr: Any) -> np.ndarray:
    """Stored token array (any integer dtype) -> int64 array of the same shape."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise InputError(f"stored tokens must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def reverse_bits(indices: Any, bits: int) -> np.ndarray:
    """Indices with their `bits` low bits in reverse order: MSB-first ids <-> LSB-first ids of the same latent signs."""
    check_bits(bits)
    arr = as_numpy(indices)
    check_range(arr, 1 << bits, "token indices")
    src, out = arr.astype(np.int64), np.zeros(arr.shape, dtype=np.int64)
    for i in range(bits):
        out |= ((src >> i) & 1) << (bits - 1 - i)
    return out.astype(arr.dtype)


# tight packing


def pack_bits(indices: Any, bits: int) -> np.ndarray:
    """Indices (n,) (flattened if not) with values < 2^bits -> uint8 stream of ceil(n * bits / 8) bytes."""
    check_bits(bits)
    values = as_numpy(indices).reshape(-1)
    check_range(values, 1 << bits, "token indices")
    words = values.astype(">u4")
    out = np.empty((values.size * bits + 7) // 8, dtype=np.uint8)
    step = CHUNK_TOKENS * bits // 8  # bytes per full chunk (CHUNK_TOKENS is a multiple of 8)
    for i, start in enumerate(range(0, values.size, CHUNK_TOKENS)):
        stream = np.unpackbits(words[start : start + CHUNK_TOKENS].view(np.uint8)).reshape(-1, 32)
        packed = np.packbits(stream[:, 32 - bits :])  # (n', bits) -> bytes, row-major = token order
        out[i * step : i * step + packed.size] = packed
    return out


def unpack_bits(data: Any, bits: int, count: int) -> np.ndarray:
    """uint8 stream (or bytes) from `pack_bits` -> (count,) int64 indices."""
    check_bits(bits)
    if count < 0:
        raise UsageError(f"count must be >= 0, got {count}")
    is_buffer = isinstance(data, (bytes, bytearray, memoryview))
    stream = np.frombuffer(data, dtype=np.uint8) if is_buffer else np.asarray(data)
    if stream.dtype != np.uint8 or stream.ndim != 1:
        raise InputError(f"packed tokens must be a 1-d uint8 stream, got {stream.dtype} {stream.shape}")
    if stream.size * 8 < count * bits:
        raise InputError(f"packed stream of {stream.size} bytes is too short for {count} tokens of {bits} bits")
    out = np.empty(count, dtype=np.int64)
    step = CHUNK_TOKENS * bits // 8
    for i, start in enumerate(range(0, count, CHUNK_TOKENS)):
        n = min(CHUNK_TOKENS, count - start)
        rows = np.unpackbits(stream[i * step : i * step + (n * bits + 7) // 8], count=n * bits).reshape(n, bits)
        padded = np.zeros((n, 32), dtype=np.uint8)
        padded[:, 32 - bits :] = rows
        out[start : start + n] = np.packbits(padded).view(">u4")
    return out
