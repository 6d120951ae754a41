"""Codec: storage dtype choice, range checks, exact round trips, tight D-bit packing."""

import numpy as np
import pytest
import torch

from lfqtok.io import codec
from lfqtok.io.codec import from_storage, pack_bits, reverse_bits, to_storage, token_dtype, unpack_bits
from lfqtok.errors import InputError, UsageError


@pytest.mark.parametrize(
    "codebook_size, dtype",
    [(2, np.uint16), (2**10, np.uint16), (2**16, np.uint16), (2**16 + 1, np.uint32), (2**18, np.uint32),
     (2**32, np.uint32)],
)
def test_token_dtype(codebook_size, dtype):
    assert token_dtype(codebook_size) == np.dtype(dtype)


@pytest.mark.parametrize("codebook_size", [0, -4, 2**32 + 1, 2**40])
def test_token_dtype_rejects_sizes(codebook_size):
    with pytest.raises(UsageError, match="codebook_size"):
        token_dtype(codebook_size)


@pytest.mark.parametrize("codebook_size", [2**16, 2**32])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_storage_round_trip_at_the_boundaries(codebook_size, as_tensor):
    values = np.array([[0, 1, codebook_size // 2], [codebook_size - 2, codebook_size - 1, 7]], dtype=np.int64)
    stored = to_storage(torch.from_numpy(values) if as_tensor else values, codebook_size)
    assert stored.dtype == token_dtype(codebook_size) and stored.shape == values.shape
    restored = from_storage(stored)
    assert restored.dtype == np.int64 and np.array_equal(restored, values)


@pytest.mark.parametrize("bad", [[-1], [2**16], [3, 2**20]])
def test_to_storage_rejects_out_of_range(bad):
    with pytest.raises(UsageError, match="out of range"):
        to_storage(np.array(bad), 2**16)


def test_storage_rejects_non_integers():
    with pytest.raises(UsageError, match="integers"):
        to_storage(np.array([1.0]), 16)
    with pytest.raises(InputError, match="integers"):
        from_storage(np.array([1.5]))


@pytest.mark.parametrize("bits", [1, 3, 8, 10, 13, 16, 18, 31, 32])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_tight_packing_round_trip(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    values = rng.integers(0, 2**bits, count, dtype=np.int64)
    values[: min(count, 2)] = [2**bits - 1, 0][: min(count, 2)]  # extremes
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == (count * bits + 7) // 8
    for data in (packed, packed.tobytes()):
        restored = unpack_bits(data, bits, count)
        assert restored.dtype == np.int64 and np.array_equal(restored, values)


def test_tight_packing_is_msb_first_big_endian():
    assert pack_bits([0b101, 0b011], 3).tolist() == [0b10101100]
    assert pack_bits(np.array([2**17]), 18).tolist() == [0b10000000, 0, 0]


def test_tight_packing_across_chunks(monkeypatch):
    monkeypatch.setattr(codec, "CHUNK_TOKENS", 16)
    values = np.random.default_rng(0).integers(0, 2**18, 100)
    packed = pack_bits(torch.from_numpy(values).reshape(10, 10), 18)  # tensors, any shape, are flattened
    assert np.array_equal(unpack_bits(packed, 18, 100), values)
    assert np.array_equal(unpack_bits(packed, 18, 37), values[:37])


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: pack_bits([8], 3), UsageError),
        (lambda: pack_bits([1], 0), UsageError),
        (lambda: pack_bits([1], 33), UsageError),
        (lambda: unpack_bits(b"\x00", 18, 1), InputError),
        (lambda: unpack_bits(np.zeros(4, np.uint16), 8, 1), InputError),
        (lambda: unpack_bits(b"", 8, -1), UsageError),
    ],
)
def test_packing_errors(call, error):
    with pytest.raises(error):
        call()


@pytest.mark.parametrize("bits, dtype", [(4, np.uint16), (18, np.uint32), (32, np.uint32)])
def test_reverse_bits_swaps_msb_and_lsb_first_ids(bits, dtype):
    ids = np.array([0, 1, 1 << (bits - 1), (1 << bits) - 1, 0b0110], dtype=dtype)
    flipped = reverse_bits(ids, bits)
    assert flipped.dtype == dtype
    assert flipped.tolist() == [0, 1 << (bits - 1), 1, (1 << bits) - 1, int(format(6, f"0{bits}b")[::-1], 2)]
    assert np.array_equal(reverse_bits(flipped, bits), ids)
    with pytest.raises(UsageError):
        reverse_bits(np.array([1 << bits], dtype=np.int64), bits)
