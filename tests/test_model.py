"""Tokenizer: token shapes, causality, checkpoint round trips and errors, the shipped default (tiny CPU models)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lfqtok.errors import ModelError, UsageError
from lfqtok.tokenizers.model import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# helpers


# the v2 default's parts at tiny size: deeper encoder, asymmetric decoder with a bilinear base, a chroma head
TINY_V2 = {"num_res_blocks": 2, "decoder_res_blocks": 2, "decoder_expansion": 2, "decoder_base": True, "chroma_bits": 2}


def tiny(seed: int = 0, **arch) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer(TokenizerConfig(**{**TokenizerConfig.tiny().to_dict(), **arch})).eval()


def video(frames: int, size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module", params=["v1", "v2"])
def tok(request) -> Tokenizer:
    model = tiny(**(TINY_V2 if request.param == "v2" else {}))
    if request.param == "v2":  # zero-initialized parts (last convs, base) would hide what they add: give them weights
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model


# shapes


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("frames, t", [(1, 1), (17, 5), (33, 9)])
def test_token_shapes(tok, frames, t, size):
    ids = tok.encode(video(frames, size))
    assert ids.dtype == torch.int64
    assert tuple(ids.shape) == (1, t, size // 8, size // 8) == (1, *tok.token_shape(frames, size, size))
    assert 0 <= int(ids.min()) and int(ids.max()) < tok.codebook_size == 256
    rec = tok.decode(ids)
    assert rec.dtype == torch.uint8 and tuple(rec.shape) == (1, frames, size, size, 3)


def test_non_square_and_batched(tok):
    v = video(9, 0, batch=3)
    v = torch.randint(0, 256, (3, 9, 32, 48, 3), dtype=torch.uint8)
    assert tuple(tok.encode(v).shape) == (3, 3, 4, 6)


@pytest.mark.parametrize("frames, height, width", [(16, 64, 64), (2, 64, 64), (17, 60, 64), (17, 64, 12), (0, 64, 64)])
def test_bad_video_shape_is_usage_error(tok, frames, height, width):
    with pytest.raises(UsageError, match="1 \\+ 4k|multiples of 8"):
        tok.encode(torch.zeros(1, frames, height, width, 3, dtype=torch.uint8))


def test_bad_video_dtype_is_usage_error(tok):
    with pytest.raises(UsageError, match="uint8"):
        tok.encode(torch.zeros(1, 17, 64, 64, 3))
    with pytest.raises(UsageError, match="uint8"):
        tok.encode(torch.zeros(17, 64, 64, 3, dtype=torch.uint8))


def test_decode_rejects_foreign_ids(tok):
    with pytest.raises(ModelError, match="256 codes"):
        tok.decode(torch.full((1, 5, 8, 8), 256))
    with pytest.raises(UsageError, match="integer ids"):
        tok.decode(torch.zeros(1, 5, 8, 8))


def test_decode_takes_storage_dtypes(tok):
    ids = tok.encode(video(17, 64))
    from_uint16 = tok.decode(ids.numpy().astype(np.uint16))
    assert torch.equal(from_uint16, tok.decode(ids))


# behaviour


def test_causal_in_time(tok):
    """Changing frame 9 on leaves the tokens of latent frames 0-2 (frames 0-8) and their decoded frames unchanged."""
    a = video(17, 64, seed=1)
    b = a.clone()
    b[:, 9:] = video(8, 64, seed=2)
    ia, ib = tok.encode(a), tok.encode(b)
    assert torch.equal(ia[:, :3], ib[:, :3])
    assert not torch.equal(ia[:, 3:], ib[:, 3:])
    assert torch.equal(tok.decode(ia)[:, :9], tok.decode(ib)[:, :9])


def test_first_frame_encoded_alone(tok):
    """A clip's first latent frame equals the tokens of its first frame encoded as a 1-frame clip."""
    v = video(17, 64, seed=3)
    assert torch.equal(tok.encode(v)[:, :1], tok.encode(v[:, :1]))


def test_encode_is_deterministic(tok):
    v = video(17, 64, batch=2, seed=4)
    assert torch.equal(tok.encode(v), tok.encode(v))
    assert torch.equal(tok.encode(v), tok.encode(v.clone()))  # same input bytes, same ids
    assert torch.equal(tok.encode(v)[1:], tok.encode(v[1:]))  # independent of the batch


def test_encode_matches_training_forward_bits(tok):
    """encode's ids are the LFQ indices of the training forward pass (same sign bits, MSB first)."""
    v = video(9, 32, seed=5)
    x = v.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    with torch.no_grad():
        out = tok(x)
    assert torch.equal(out.indices, tok.encode(v))
    assert out.recon.shape == x.shape


def test_config_round_trip_and_validation():
    c = TokenizerConfig(channels=8, channel_mults=(1, 2, 2, 2), patch_size=2, codebook_bits=10)
    assert TokenizerConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(UsageError, match="down-sampling stages"):
        TokenizerConfig(channel_mults=(1, 2))
    with pytest.raises(UsageError, match="power of two"):
        TokenizerConfig(temporal_compression=3)
    with pytest.raises(ModelError, match="unknown keys"):
        TokenizerConfig.from_dict({**c.to_dict(), "future_option": 1})
    with pytest.raises(UsageError, match="chroma_bits"):
        TokenizerConfig(codebook_bits=4, chroma_bits=4)
    with pytest.raises(UsageError, match="decoder_res_blocks"):
        TokenizerConfig(decoder_res_blocks=0)
    assert TokenizerConfig.from_dict({k: v for k, v in c.to_dict().items() if k not in TINY_V2}) == c  # older checkpoints


def test_chroma_head_gets_the_colour_bits():
    """With a chroma head, the last bits follow the colour of the input, not its brightness."""
    model = tiny(chroma_bits=3)
    grey = torch.full((1, 5, 32, 32, 3), 128, dtype=torch.uint8)
    brighter, tinted = grey + 60, grey.clone()
    tinted[..., 2] += 60  # bluer
    bits = lambda v: model.encode(v) & 0b111  # noqa: E731
    assert torch.equal(bits(grey), bits(brighter))
    assert not torch.equal(bits(grey), bits(tinted))


# checkpoints


def test_save_load_round_trip_bit_exact(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "tok.safetensors", name="tiny-test")
    loaded = load_tokenizer(path)
    v = video(17, 64, batch=2, seed=6)
    ids = tok.encode(v)
    assert torch.equal(loaded.encode(v), ids)
    assert torch.equal(loaded.decode(ids), tok.decode(ids))
    assert loaded.config == tok.config and loaded.name == "tiny-test"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.sha256 == digest
    again = save_tokenizer(loaded, tmp_path / "again.safetensors")
    assert again.read_bytes() == path.read_bytes()  # stable bytes, so a stable sha256
    assert not list(tmp_path.glob("*.tmp"))


def test_in_memory_sha256_is_that_of_its_file(tmp_path):
    tok = tiny(seed=7)
    path = save_tokenizer(tok, tmp_path / "t.safetensors")
    assert tok.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tok.sha256 != tiny(seed=8).sha256


def test_checkpoint_metadata(tok, tmp_path):
    from safetensors import safe_open

    path = save_tokenizer(tok, tmp_path / "t.safetensors", name="x")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "lfqtok-tokenizer" and meta["name"] == "x"
    assert TokenizerConfig.from_dict(json.loads(meta["lfqtok_config"])) == tok.config


def test_load_errors_are_model_errors(tok, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_tokenizer(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 7 + b"not a checkpoint" * 10)
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_tokenizer(garbage)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="not an lfqtok tokenizer"):
        load_tokenizer(other)
    mismatched = tmp_path / "mismatched.safetensors"
    tensors = {k: v.contiguous() for k, v in tok.state_dict().items()}
    tensors.pop("encoder.conv_in.conv.weight")
    meta = {"format": "lfqtok-tokenizer", "name": "m", "lfqtok_config": json.dumps(tok.config.to_dict())}
    save_file(tensors, str(mismatched), metadata=meta)
    with pytest.raises(ModelError, match="do not match its config"):
        load_tokenizer(mismatched)


def test_bad_device_is_usage_error(tmp_path, tok):
    path = save_tokenizer(tok, tmp_path / "t.safetensors")
    with pytest.raises(UsageError, match="device"):
        load_tokenizer(path, device="nonsense")


# the shipped default


def test_default_tokenizer():
    tok = load_tokenizer("default")
    assert tok.codebook_size == 2**18 and tok.num_codebooks == 1
    assert tok.token_shape(17, 128, 128) == (5, 16, 16)
    ids = tok.encode(video(17, 128, seed=9))
    assert tuple(ids.shape) == (1, 5, 16, 16) and ids.dtype == torch.int64
    assert 0 <= int(ids.min()) and int(ids.max()) < 2**18
    assert len(tok.sha256) == 64


def test_half_precision_checkpoint_loads_into_fp32_and_keeps_the_ids(tmp_path):
    model = tiny()
    full, half = save_tokenizer(model, tmp_path / "f.safetensors"), save_tokenizer(model, tmp_path / "h.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_tokenizer(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    v = video(17, 64, batch=2, seed=7)
    assert (loaded.encode(v) == model.encode(v)).float().mean() > 0.99
    assert (loaded.decode(model.encode(v)).int() - model.decode(model.encode(v)).int()).abs().max() <= 2
    with pytest.raises(UsageError, match="float32, float16 or bfloat16"):
        save_tokenizer(model, tmp_path / "x.safetensors", dtype=torch.int8)
