"""Causal 3D-conv video tokenizer with a Lookup-Free Quantization bottleneck (MagViT2, arXiv:2310.05737).

encode: uint8 video (B, T, H, W, 3), T = 1 + 4k -> encoder -> latents (B, D, t, h, w), t = 1 + k -> sign bits -> ids
decode: ids -> LFQ codes (+-1) -> mirrored decoder (depth-to-space upsampling) -> uint8 video (B, T, H, W, 3)

Causal in time: every temporal conv and every temporal (un)patching only looks back, so the first frame is
encoded alone and the tokens of a latent frame never depend on later frames. Norms are per position (channel
RMS), never over time or space, which keeps that true and makes the model independent of clip size.
Checkpoints are safetensors with the config in the metadata; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from ..device import resolve_device
from ..errors import ModelError, OutputError, UsageError
from .lfq import LFQ, LossBreakdown, pack_sign_bits
from .tokenizer import TokenizerBase

if TYPE_CHECKING:
    from .open_magvit2 import OpenMagvit2Tokenizer

CHROMA_FROM_RGB = ((-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))  # BT.601 Cb, Cr of RGB in [-1, 1]
FORMAT = "lfqtok-tokenizer"  # safetensors metadata `format` of every tokenizer checkpoint
DEFAULT_WEIGHTS = "weights/default.safetensors"  # inside the package

# helpers


def exists(v: Any) -> bool:
    return v is not None


def log2_exact(n: int, what: str) -> int:
    """log2 of a power of two, or a UsageError naming `what`."""
    if not isinstance(n, int) or n < 1 or n & (n - 1):
        raise UsageError(f"{what} must be a power of two, got {n!r}")
    return n.bit_length() - 1


def space_time_to_depth(x: Tensor, space: int, time: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C*time*space*space, (T + time - 1) / time, H / space, W / space).

    Causal: `time - 1` copies of the first frame are put in front, so T = 1 + time*k gives 1 + k frames and
    output frame 0 holds input frame 0 alone.
    """
    if time > 1:
        x = F.pad(x, (0, 0, 0, 0, time - 1, 0), mode="replicate")
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // time, time, h // space, space, w // space, space)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, time, space, space, t, h, w)
    return x.reshape(b, c * time * space * space, t // time, h // space, w // space)


def depth_to_space_time(x: Tensor, space: int, time: int) -> Tensor:
    """Inverse of `space_time_to_depth`: (B, C*time*space^2, t, h, w) -> (B, C, 1 + time*(t-1), h*space, w*space)."""
    b, c, t, h, w = x.shape
    c //= time * space * space
    x = x.reshape(b, c, time, space, space, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, t, time, h, space, w, space)
    x = x.reshape(b, c, t * time, h * space, w * space)
    return x[:, :, time - 1 :]


def pixels_to_unit(video: Tensor) -> Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    return video.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def unit_to_pixels(x: Tensor) -> Tensor:
    """float (B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3), rounded and clamped."""
    return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)


# config


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture and LFQ settings; stored as JSON in every checkpoint's metadata (`lfqtok_config`)."""

    channels: int = 32  # width of the first level; level i has channels * channel_mults[i]
    channel_mults: tuple[int, ...] = (1, 2, 4)  # one level per entry, a 2x down/upsampling stage between levels
    num_res_blocks: int = 1  # residual blocks per level in the encoder (and the decoder unless decoder_res_blocks)
    decoder_res_blocks: int | None = None  # residual blocks per decoder level; None = num_res_blocks
    decoder_expansion: int = 1  # inner width of a decoder residual block = level width * this (decoder-only cost)
    decoder_base: bool = False  # decoder adds a bilinearly upsampled 1/patch-size RGB base: smooth colour and level
    chroma_bits: int = 0  # the last bits come from a small head that sees only Cb, Cr: colour always gets bits
    patch_size: int = 4  # spatial space-to-depth at the input (cheap: full-resolution convs dominate the cost)
    temporal_compression: int = 4  # T = 1 + 4k frames -> t = 1 + k latent frames
    spatial_compression: int = 8  # H x W -> H/8 x W/8 tokens
    codebook_bits: int = 18  # D sign bits per token: 2^18 codes, stored as uint32
    num_codebooks: int = 1  # independent LFQ codebooks per position (ids get a trailing (c) axis when > 1)
    entropy_loss_weight: float = 0.1  # LFQ aux: per-sample entropy minus diversity_gamma * batch entropy
    commitment_loss_weight: float = 0.25  # LFQ aux: pulls latents towards their +-1 codes
    diversity_gamma: float = 1.0  # weight of the batch (codebook usage) entropy inside the entropy loss
    factorized_entropy: bool = True  # O(tokens * D) training entropy (grouped batch term); dense 2^18 is ~30x slower

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        for name in ("channels", "num_res_blocks", "codebook_bits", "num_codebooks", "decoder_expansion"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UsageError(f"tokenizer config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.chroma_bits, int) or not 0 <= self.chroma_bits < self.latent_dim:
            raise UsageError(f"tokenizer config: chroma_bits must be in [0, {self.latent_dim}), got {self.chroma_bits!r}")
        if self.decoder_res_blocks is not None and (not isinstance(self.decoder_res_blocks, int) or self.decoder_res_blocks < 1):
            raise UsageError(f"tokenizer config: decoder_res_blocks must be a positive integer, got {self.decoder_res_blocks!r}")
        if not self.channel_mults or any(not isinstance(m, int) or m < 1 for m in self.channel_mults):
            raise UsageError(f"tokenizer config: channel_mults must be positive integers, got {self.channel_mults!r}")
        if self.codebook_bits > 31:
            raise UsageError(f"tokenizer config: codebook_bits must be at most 31, got {self.codebook_bits}")
        patch = log2_exact(self.patch_size, "patch_size")
        spatial = log2_exact(self.spatial_compression, "spatial_compression")
        temporal = log2_exact(self.temporal_compression, "temporal_compression")
        stages = len(self.channel_mults) - 1
        if spatial < patch or spatial - patch > stages or temporal > stages:
            raise UsageError(
                f"tokenizer config: {stages} down-sampling stages cannot give spatial x{self.spatial_compression} "
                f"(patch {self.patch_size}) and temporal x{self.temporal_compression}; add channel_mults entries"
            )

    @classmethod
    def tiny(cls) -> "TokenizerConfig":
        """A model of a few thousand parameters and 2^8 codes (uint16 ids), for fast CPU tests."""
        return cls(channels=4, channel_mults=(1, 1, 2), num_res_blocks=1, patch_size=4, codebook_bits=8)

    @property
    def codebook_size(self) -> int:
        return 2**self.codebook_bits

    @property
    def decoder_blocks(self) -> int:
        return self.num_res_blocks if self.decoder_res_blocks is None else self.decoder_res_blocks

    @property
    def latent_dim(self) -> int:
        return self.codebook_bits * self.num_codebooks

    def stage_factors(self) -> list[tuple[int, int]]:
        """(space, time) down-sampling factor of each stage: space in the first stages, time in the last ones."""
        stages = len(self.channel_mults) - 1
        space_stages = log2_exact(self.spatial_compression // self.patch_size, "spatial_compression / patch_size")
        time_stages = log2_exact(self.temporal_compression, "temporal_compression")
        return [(2 if i < space_stages else 1, 2 if i >= stages - time_stages else 1) for i in range(stages)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channel_mults": list(self.channel_mults)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenizerConfig":
        """Inverse of `to_dict`; unknown keys are a ModelError (a checkpoint from a newer lfqtok)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"tokenizer config has unknown keys {unknown} (written by a newer lfqtok?)")
        return cls(**{k: tuple(v) if k == "channel_mults" else v for k, v in d.items()})


# layers


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (t, h, w) position: causal and independent of batch and clip size."""

    def __init__(self, dim: int, affine: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(x, dim=1) * self.scale
        return x * self.gamma if exists(self.gamma) else x


class CausalConv3d(nn.Module):
    """3D conv whose temporal receptive field is the current and past frames (first frame replicated)."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int = 3):
        super().__init__()
        self.time_pad = kernel_size - 1
        self.conv = nn.Conv3d(dim_in, dim_out, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 0, 0, 0, self.time_pad, 0), mode="replicate") if self.time_pad else x)


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus the input; the last conv starts at zero (block = identity).

    `inner`: width between the two convs (default `dim`); a wider inside adds capacity at the same stream width."""

    def __init__(self, dim: int, inner: int | None = None):
        super().__init__()
        inner = inner or dim
        self.block = nn.Sequential(
            ChannelRMSNorm(dim), nn.SiLU(), CausalConv3d(dim, inner), ChannelRMSNorm(inner), nn.SiLU(), CausalConv3d(inner, dim)
        )
        nn.init.zeros_(self.block[-1].conv.weight)
        nn.init.zeros_(self.block[-1].conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Downsample(nn.Module):
    """Causal space/time-to-depth, then a 1x1x1 conv: a strided conv whose kernel equals its stride."""

    def __init__(self, dim_in: int, dim_out: int, space: int, time: int):
        super().__init__()
        self.space, self.time = space, time
        self.proj = nn.Conv3d(dim_in * space * space * time, dim_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(space_time_to_depth(x, self.space, self.time))


class Upsample(nn.Module):
    """1x1x1 conv to space*space*time more channels, then depth-to-space/time (the first latent frame -> 1 frame)."""

    def __init__(self, dim_in: int, dim_out: int, space: int, time: int):
        super().__init__()
        self.space, self.time = space, time
        self.conv = CausalConv3d(dim_in, dim_out * space * space * time, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return depth_to_space_time(self.conv(x), self.space, self.time)


# encoder / decoder


class Encoder(nn.Module):
    """float (B, 3, T, H, W) in [-1, 1] -> latents (B, D, t, h, w), RMS-normalized per position for LFQ."""

    def __init__(self, c: TokenizerConfig):
        super().__init__()
        dims = [c.channels * m for m in c.channel_mults]
        self.patch = c.patch_size
        self.conv_in = CausalConv3d(3 * c.patch_size**2, dims[0])
        layers: list[nn.Module] = []
        for i, (space, time) in enumerate(c.stage_factors()):
            layers += [ResBlock(dims[i]) for _ in range(c.num_res_blocks)]
            layers.append(Downsample(dims[i], dims[i + 1], space, time))
        layers += [ResBlock(dims[-1]) for _ in range(c.num_res_blocks)]
        self.layers = nn.Sequential(*layers)
        self.out = nn.Sequential(ChannelRMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], c.latent_dim - c.chroma_bits))
        self.chroma = ChromaHead(c) if c.chroma_bits else None
        self.norm_latent = ChannelRMSNorm(c.latent_dim, affine=False)  # latents on the scale of the +-1 codes

    def forward(self, x: Tensor) -> Tensor:
        z = self.out(self.layers(self.conv_in(space_time_to_depth(x, self.patch, 1))))
        if exists(self.chroma):
            z = torch.cat([z, self.chroma(x)], dim=1)
        return self.norm_latent(z)


class ChromaHead(nn.Module):
    """Cb, Cr of the input (B, 3, T, H, W) -> `chroma_bits` latent channels (B, k, t, h, w) at token resolution.

    Colour is a small share of the pixel error, so a single encoder spends its bits on luma and guesses colour;
    this head sees nothing but colour (4x4 means, then the token's space-time block and its neighbours)."""

    def __init__(self, c: TokenizerConfig):
        super().__init__()
        self.pool, self.time = c.spatial_compression // 2, c.temporal_compression
        self.register_buffer("to_chroma", torch.tensor(CHROMA_FROM_RGB), persistent=False)
        self.net = nn.Sequential(
            CausalConv3d(2 * 4 * self.time, 64), nn.SiLU(), CausalConv3d(64, 64), nn.SiLU(), CausalConv3d(64, c.chroma_bits)
        )

    def forward(self, x: Tensor) -> Tensor:
        chroma = torch.einsum("ij,bjthw->bithw", self.to_chroma.to(x.dtype), x)  # (B, 2, T, H, W)
        chroma = F.avg_pool3d(chroma, (1, self.pool, self.pool))
        return self.net(space_time_to_depth(chroma, 2, self.time))


class Decoder(nn.Module):
    """Codes (B, D, t, h, w) -> float (B, 3, T, H, W), the encoder mirrored with depth-to-space upsampling."""

    def __init__(self, c: TokenizerConfig):
        super().__init__()
        dims = [c.channels * m for m in c.channel_mults]
        self.patch = c.patch_size
        blocks = lambda dim: [ResBlock(dim, dim * c.decoder_expansion) for _ in range(c.decoder_blocks)]  # noqa: E731
        self.conv_in = CausalConv3d(c.latent_dim, dims[-1])
        layers: list[nn.Module] = blocks(dims[-1])
        for i, (space, time) in reversed(list(enumerate(c.stage_factors()))):
            layers.append(Upsample(dims[i + 1], dims[i], space, time))
            layers += blocks(dims[i])
        self.layers = nn.Sequential(*layers)
        self.out = nn.Sequential(ChannelRMSNorm(dims[0]), nn.SiLU(), CausalConv3d(dims[0], 3 * c.patch_size**2))
        # smooth base: one RGB value per patch, bilinearly upsampled; the patch output above adds the detail
        self.base = CausalConv3d(dims[0], 3) if c.decoder_base else None
        if exists(self.base):
            nn.init.zeros_(self.base.conv.weight)
            nn.init.zeros_(self.base.conv.bias)

    def forward(self, z: Tensor) -> Tensor:
        h = self.layers(self.conv_in(z))
        x = depth_to_space_time(self.out(h), self.patch, 1)  # (B, 3, T, H, W)
        if exists(self.base):
            base = self.base(h)  # (B, 3, T, H/patch, W/patch)
            x = x + F.interpolate(base.flatten(1, 2), scale_factor=self.patch, mode="bilinear").unflatten(1, base.shape[1:3])
        return x


# tokenizer


class TrainOutput(NamedTuple):
    recon: Tensor  # (B, 3, T, H, W), unbounded floats (targets are in [-1, 1])
    indices: Tensor  # (B, t, h, w) [+ (c)] int64
    aux_loss: Tensor  # LFQ entropy + commitment loss, already weighted
    loss_breakdown: LossBreakdown  # per_sample_entropy, batch_entropy, commitment


class Tokenizer(TokenizerBase):
    """Video <-> token ids. `encode`/`decode` are the stable API (DESIGN.md §2); `forward` is for training."""

    to_unit = staticmethod(pixels_to_unit)

    def __init__(self, config: TokenizerConfig | None = None, *, name: str = "untitled"):
        super().__init__()
        self.config = config if exists(config) else TokenizerConfig()
        self.name = name
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quantizer = LFQ(
            dim=c.latent_dim,
            codebook_size=c.codebook_size,
            num_codebooks=c.num_codebooks,
            entropy_loss_weight=c.entropy_loss_weight,
            commitment_loss_weight=c.commitment_loss_weight,
            diversity_gamma=c.diversity_gamma,
            factorized_entropy=c.factorized_entropy,
        )
        self._file_sha256: str | None = None  # set by load_tokenizer: the hash of the bytes it was read from

    # properties

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def sha256(self) -> str:
        """Hex sha256 of the checkpoint bytes this model was loaded from, else of its serialized safetensors."""
        return self._file_sha256 or hashlib.sha256(serialize_tokenizer(self)).hexdigest()

    # inference

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA, nothing on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _latents_to_indices(self, z: Tensor) -> Tensor:
        """float32 latents (B, D*c, t, h, w) -> int64 ids (B, t, h, w) [+ (c)], bit i (MSB first) = sign of channel i."""
        bits = z.float().movedim(1, -1)  # (B, t, h, w, D*c)
        if self.num_codebooks > 1:
            bits = bits.unflatten(-1, (self.num_codebooks, self.config.codebook_bits))
        return pack_sign_bits(bits)

    @torch.inference_mode()
    def encode_to_device(self, video: Tensor) -> Tensor:
        """uint8 (B, T, H, W, 3) on any device -> int64 ids (B, t, h, w) [+ (c)] left on the model's device."""
        x = self._video_in(video)
        with self._autocast():
            z = self.encoder(x)
        return self._latents_to_indices(z)

    @torch.inference_mode()
    def decode(self, ids: Tensor) -> Tensor:
        """int ids (B, t, h, w) [+ (c)] of any integer dtype -> uint8 video (B, T, H, W, 3) on the CPU."""
        ids = self._ids_in(ids, 5 if self.num_codebooks > 1 else 4)
        if self.num_codebooks > 1 and ids.shape[-1] != self.num_codebooks:
            raise UsageError(f"ids have {ids.shape[-1]} codebooks, the tokenizer has {self.num_codebooks}")
        codes = self.quantizer.indices_to_codes(ids)  # (B, D*c, t, h, w)
        with self._autocast():
            x = self.decoder(codes)
        return unit_to_pixels(x).cpu()

    # training

    def forward(self, x: Tensor) -> TrainOutput:
        """float (B, 3, T, H, W) in [-1, 1] -> recon, ids, weighted LFQ aux loss, its breakdown; the LFQ runs in fp32."""
        z = self.encoder(x)
        with torch.autocast(x.device.type, enabled=False):
            (quantized, indices, aux_loss), breakdown = self.quantizer(z.float(), return_loss_breakdown=True)
        return TrainOutput(self.decoder(quantized), indices, aux_loss, breakdown)


# checkpoints


def _header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file, or ValueError when `data` is not one."""
    if len(data) < 8:
        raise ValueError("too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise ValueError("bad header length")
    header = json.loads(data[8 : 8 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    return header


def serialize_tokenizer(tok: Tokenizer, name: str | None = None, dtype: torch.dtype = torch.float32) -> bytes:
    """Inference weights + config metadata as safetensors bytes; the same model gives the same bytes.

    `dtype`: storage of the floating-point weights (float16 halves a release; they load back into fp32)."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise UsageError(f"weights are stored as float32, float16 or bfloat16, not {dtype}")
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in tok.state_dict().items()}
    metadata = {"format": FORMAT, "name": name or tok.name, "lfqtok_config": json.dumps(tok.config.to_dict(), sort_keys=True)}
    return _canonical_header(save_safetensors_bytes(tensors, metadata=metadata))


def _canonical_header(data: bytes) -> bytes:
    """safetensors bytes with the metadata keys sorted: the library writes them in a random (hash) order."""
    header = _header(data)
    meta = header.pop("__metadata__", {})
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # tensor data stays 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + struct.unpack("<Q", data[:8])[0] :]


def save_tokenizer(tok: Tokenizer, path: str | Path, name: str | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write `tok` as a safetensors checkpoint atomically (temp file + rename); returns the path."""
    path = Path(path)
    data = serialize_tokenizer(tok, name, dtype)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write tokenizer checkpoint {path}: {exc.strerror or exc}") from None
    return path


def _read_checkpoint(name_or_path: str | Path) -> tuple[bytes, str]:
    """Bytes of the named checkpoint ("default" = the embedded one) and a label for messages."""
    if str(name_or_path) == "default":
        ref = resources.files(__package__).joinpath(DEFAULT_WEIGHTS)
        if not ref.is_file():
            raise ModelError("the embedded default tokenizer is missing from this lfqtok install (weights/default.safetensors)")
        return ref.read_bytes(), "default"
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ModelError(f"tokenizer checkpoint not found: {path} (give 'default' or the path of a .safetensors file)")
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise ModelError(f"cannot read tokenizer checkpoint {path}: {exc.strerror or exc}") from None


def load_tokenizer(
    name_or_path: str | Path = "default", device: str | torch.device = "cpu", storage_options: Mapping[str, Any] | None = None
) -> Tokenizer | OpenMagvit2Tokenizer:
    """Load "default" (shipped in the package), a .safetensors path or a foreign checkpoint onto `device`, in eval mode.

    Foreign checkpoints (Open-MAGVIT2 video: upstream's .ckpt or its `lfqtok convert` output) are recognized by
    their contents and load as a tokenizer with the same API (lfqtok/tokenizers/convert.py). A URL is fetched once per
    machine into the local cache (`storage.fetch_cached`, with `storage_options`) and loaded from there.
    """
    dev = resolve_device(device)
    from .convert import load_foreign
    from ..io.storage import fetch_cached

    name_or_path = fetch_cached(name_or_path, storage_options)

    foreign = load_foreign(name_or_path, dev)
    if foreign is not None:
        return foreign
    data, label = _read_checkpoint(name_or_path)
    try:
        meta = _header(data).get("__metadata__") or {}
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for every kind of corruption
        raise ModelError(f"{label} is not a safetensors file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{label} is not an lfqtok tokenizer checkpoint (metadata format={meta.get('format')!r})")
    try:
        config = TokenizerConfig.from_dict(json.loads(meta["lfqtok_config"]))
    except (KeyError, TypeError, json.JSONDecodeError, UsageError) as exc:
        raise ModelError(f"{label} has no valid lfqtok_config metadata: {exc}") from None
    tok = Tokenizer(config, name=meta.get("name") or Path(label).stem)
    expected = {k: v.shape for k, v in tok.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k])
    if missing or unexpected or wrong:
        raise ModelError(
            f"{label}: tensors do not match its config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]})"
        )
    tok.load_state_dict(tensors)
    tok._file_sha256 = hashlib.sha256(data).hexdigest()
    return tok.to(dev).eval()
