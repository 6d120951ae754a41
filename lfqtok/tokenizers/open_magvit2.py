"""Open-MAGVIT2's tokenizers (TencentARC/SEED-Voken, Apache-2.0; arXiv:2409.04410) behind lfqtok's tokenizer API.

Written for lfqtok from the public facts of upstream's `improved_video_model.py` (Encoder/Decoder) and
`lookup_free_quantize.py` (LFQ); parameter names are upstream's, so its checkpoints load without renaming.
Its image tokenizers (`improved_model.py`) are the same network in 2D: here the 3D one with a time kernel of 1
and no time resampling (`image=True`, upstream's names without `.conv_1`), run on every frame alone.

encode: uint8 (B, T, H, W, 3) -> (x / 255 - 0.5) / 0.5 -> Encoder -> latents (B, D, t, h, w) -> ids (B, t, h, w)
decode: ids -> +-1 codes (B, D, t, h, w) -> Decoder -> clamp to [-1, 1] -> uint8 (B, T, H, W, 3)

- Index bit c is `latent[c] > 0` with channel 0 the least significant bit (`bit_order = "lsb_first"`), as
  upstream's LFQ computes it, so ids match its downstream models; code value +1 for a set bit, -1 otherwise.
- Every conv is 3D and causal in time (kernel - 1 zero frames in front, none behind; zero padding kernel // 2
  in space), but GroupNorm (32 groups, eps 1e-6) takes its statistics over the whole clip: the model is not
  causal. It was trained on 17-frame clips, and upstream encodes a video as independent 17-frame windows;
  `window_frames` says so and the encode pipeline cuts exactly those windows.
- Encoder: conv_in 3^3 (no bias) -> per level i: num_res_blocks ResBlocks (the first one changes the width to
  ch * ch_mult[i]), then, except after the last level, a 3^3 conv (bias) of stride 2 in space, and also in time
  unless ch_mult[i] == 1 -> the same number of ResBlocks in the middle -> GroupNorm, swish, 1^3 conv to D.
- Decoder: conv_in 3^3 (bias) D -> width of the last level -> middle ResBlocks -> per level from the last to
  the first: adaptive GroupNorm conditioned on the codes (affine-free GroupNorm, then a gain from the codes'
  per-channel standard deviation and a bias from their mean, each through a Linear D -> width), the level's
  ResBlocks, and, above level 0, an upsampler: 3^3 conv (bias) to 4 (8 with time) times the width, then
  depth-to-space with the channels ordered (time, row, column, C) and, when it doubles time, the second frame
  dropped (t -> 2t - 1) -> GroupNorm, swish, conv_out 3^3 (bias). Time is doubled at level i when
  ch_mult[i - 1] != 1, the mirror of the encoder.
- ResBlock: GroupNorm, swish, conv 3^3 (no bias), GroupNorm, swish, conv 3^3 (no bias), plus the input (through
  a 1^3 conv without bias when the width changes). swish(x) = x * sigmoid(x).
- Image models: convs 3x3 (1x3x3 here), every level but the last halves space only, every upsampler doubles
  space only; each frame of a clip is encoded and decoded on its own, so they are causal with no window.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError, OutputError
from .tokenizer import TokenizerBase

# constants

VIDEO_FAMILY = "open-magvit2-video"  # `family` in the checkpoint metadata and the manifest's tokenizer config
IMAGE_FAMILY = "open-magvit2-image"
FAMILIES = (VIDEO_FAMILY, IMAGE_FAMILY)
FORMAT = "lfqtok-tokenizer"  # safetensors metadata `format` of every lfqtok tokenizer checkpoint
GROUPS, NORM_EPS = 32, 1e-6  # upstream's GroupNorm everywhere
EMA_PREFIX = "model_ema."  # upstream's EMA copies: "model_ema." + the parameter name with its dots removed
TRAINED_WINDOW = 17  # frames per clip the released video tokenizer was trained and is evaluated on
READ_CHUNK = 1 << 24  # bytes hashed at a time

# helpers


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def dotless(name: str) -> str:
    """How upstream's EMA names a parameter: its name with the dots removed."""
    return name.replace(".", "")


def upstream_name(name: str, image: bool) -> str:
    """Upstream's name of one of our parameters: the same, except that its 2D image models have no `.conv_1`."""
    return name.replace(".conv_1.", ".") if image else name


def pixels_to_unit(video: Tensor) -> Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W) in [-1, 1], as upstream's Normalize(0.5, 0.5) does it."""
    return video.permute(0, 4, 1, 2, 3).float().div(255.0).sub(0.5).div(0.5)


def unit_to_pixels(x: Tensor) -> Tensor:
    """float (B, 3, T, H, W) -> uint8 (B, T, H, W, 3): clamp to [-1, 1], (x + 1) / 2 * 255, rounded half up."""
    return x.float().clamp(-1, 1).add(1).div(2).mul(255).add(0.5).floor().to(torch.uint8).permute(0, 2, 3, 4, 1)


# config


@dataclass(frozen=True)
class OpenMagvit2Config:
    """Upstream's `ddconfig` of a video tokenizer, inferred from a checkpoint's tensor shapes, plus how to run it."""

    ch: int = 128  # width of level 0; level i is ch * ch_mult[i] wide
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)  # one level per entry, 2x down in space between levels (and in time where the entry != 1)
    num_res_blocks: int = 4  # ResBlocks per level and in the middle, encoder and decoder
    z_channels: int = 18  # latent channels = bits per token (2^18 codes)
    in_channels: int = 3  # RGB in
    out_ch: int = 3  # RGB out
    window_frames: int | None = TRAINED_WINDOW  # video: the clip length it was trained on (independent windows); image: None
    weights: str = "ema"  # which weights of the source checkpoint these are: "ema" (what upstream evaluates) or "raw"
    image: bool = False  # upstream's 2D image tokenizer: time kernel 1, no time resampling, every frame on its own

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        if self.image != (self.window_frames is None):
            raise ModelError(f"open-magvit2 config: window_frames must be None for an image model only, got {self.window_frames!r}")
        for name in ("ch", "num_res_blocks", "z_channels") + (() if self.image else ("window_frames",)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"open-magvit2 config: {name} must be a positive integer, got {value!r}")
        if not self.ch_mult or any(not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise ModelError(f"open-magvit2 config: ch_mult must be positive integers, got {self.ch_mult!r}")
        if any(self.ch * m % GROUPS for m in self.ch_mult):
            raise ModelError(f"open-magvit2 config: every width ch * ch_mult must be a multiple of {GROUPS} (GroupNorm)")
        if (self.in_channels, self.out_ch) != (3, 3):
            raise ModelError(f"open-magvit2 config: RGB in and out expected, got {self.in_channels} -> {self.out_ch} channels")
        if self.z_channels > 32:
            raise ModelError(f"open-magvit2 config: at most 32 latent channels (uint32 ids), got {self.z_channels}")
        if not self.image and (self.window_frames - 1) % self.temporal_compression:
            raise ModelError(f"open-magvit2 config: window_frames must be 1 + {self.temporal_compression}k, got {self.window_frames}")
        if self.weights not in ("ema", "raw"):
            raise ModelError(f"open-magvit2 config: weights must be 'ema' or 'raw', got {self.weights!r}")

    @property
    def codebook_bits(self) -> int:
        return self.z_channels

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def widths(self) -> list[int]:
        return [self.ch * m for m in self.ch_mult]

    @property
    def family(self) -> str:
        return IMAGE_FAMILY if self.image else VIDEO_FAMILY

    def halves_time(self, level: int) -> bool:
        """Whether the downsampling after encoder level `level` (upsampling into decoder level `level`) also halves
        (doubles) time: upstream's rule, space only where ch_mult[level] == 1 (and always for image models)."""
        return not self.image and self.ch_mult[level] != 1

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.halves_time(i) for i in range(len(self.ch_mult) - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **asdict(self), "ch_mult": list(self.ch_mult)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpenMagvit2Config":
        """Inverse of `to_dict`; another family or unknown keys are a ModelError."""
        d = dict(d)
        family = d.pop("family", None)
        if family not in FAMILIES:
            raise ModelError(f"not an Open-MAGVIT2 config (family {family!r})")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ModelError(f"{family} config has unknown keys {unknown} (written by a newer lfqtok?)")
        config = cls(**d)
        if config.family != family:
            raise ModelError(f"{family} config describes an {config.family} model")
        return config


# layers


class CausalConv3d(nn.Module):
    """3D conv: (kernel - 1) zero frames in front (causal in time), kernel // 2 zeros around in space; `conv_1` as upstream.

    `time=False`: a time kernel of 1 (a 2D conv on every frame, the image models)."""

    def __init__(self, dim_in: int, dim_out: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1), bias: bool = True,
                 *, time: bool = True):
        super().__init__()
        s, kt = kernel // 2, kernel if time else 1
        self.pad = (s, s, s, s, kt - 1, 0)  # (w, w, h, h, t front, t back)
        self.conv_1 = nn.Conv3d(dim_in, dim_out, (kt, kernel, kernel), stride=stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_1(F.pad(x, self.pad) if any(self.pad) else x)


def group_norm(dim: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, dim, eps=NORM_EPS, affine=affine)


class ResBlock(nn.Module):
    """norm1, swish, conv1, norm2, swish, conv2 (convs without bias), plus the input (1^3 `nin_shortcut` when widths differ)."""

    def __init__(self, dim_in: int, dim_out: int, time: bool = True):
        super().__init__()
        self.norm1 = group_norm(dim_in)
        self.conv1 = CausalConv3d(dim_in, dim_out, bias=False, time=time)
        self.norm2 = group_norm(dim_out)
        self.conv2 = CausalConv3d(dim_out, dim_out, bias=False, time=time)
        self.nin_shortcut = CausalConv3d(dim_in, dim_out, kernel=1, bias=False) if dim_in != dim_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return h + (self.nin_shortcut(x) if self.nin_shortcut is not None else x)


class AdaptiveGroupNorm(nn.Module):
    """Affine-free GroupNorm of x, scaled by gamma(std of the codes) and shifted by beta(mean of the codes), per channel.

    The std is the unbiased one (torch's default) over (t, h, w), with eps added to the variance.
    """

    def __init__(self, z_channels: int, dim: int):
        super().__init__()
        self.gn = group_norm(dim, affine=False)
        self.gamma = nn.Linear(z_channels, dim)
        self.beta = nn.Linear(z_channels, dim)

    def forward(self, x: Tensor, codes: Tensor) -> Tensor:
        flat = codes.flatten(2)  # (B, D, t*h*w)
        scale = self.gamma((flat.var(dim=-1) + NORM_EPS).sqrt())[:, :, None, None, None]  # (B, C, 1, 1, 1)
        shift = self.beta(flat.mean(dim=-1))[:, :, None, None, None]
        return scale * self.gn(x) + shift


class Upsampler(nn.Module):
    """3^3 conv to (time * 2 * 2) x the width, then depth-to-space (channels ordered time, row, column, C)."""

    def __init__(self, dim: int, time: int, time_kernel: bool = True):
        super().__init__()
        self.time = time
        self.conv1 = CausalConv3d(dim, dim * time * 4, time=time_kernel)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        b, c, t, h, w = y.shape
        c //= self.time * 4
        y = y.view(b, self.time, 2, 2, c, t, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)  # (B, C, t, time, h, 2, w, 2)
        y = y.reshape(b, c, t * self.time, h * 2, w * 2)
        if self.time > 1:  # t -> 2t - 1: the second frame goes (1 latent frame -> 1 frame)
            y = torch.cat([y[:, :, :1], y[:, :, 2:]], dim=2)
        return y


class Level(nn.Module):
    """One resolution level: `block` (ResBlocks) and the resampling `downsample` / `upsample` after it, if any."""

    def __init__(self, blocks: list[nn.Module], **resample: nn.Module):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        for name, module in resample.items():
            setattr(self, name, module)


# encoder / decoder


class Encoder(nn.Module):
    """float (B, 3, T, H, W) in [-1, 1] -> latents (B, D, 1 + (T-1)/tc, H/sc, W/sc)."""

    def __init__(self, c: OpenMagvit2Config):
        super().__init__()
        widths, n, time = c.widths, len(c.ch_mult), not c.image
        self.conv_in = CausalConv3d(c.in_channels, c.ch, bias=False, time=time)
        levels = []
        dim = c.ch
        for i in range(n):
            blocks = [ResBlock(dim if j == 0 else widths[i], widths[i], time) for j in range(c.num_res_blocks)]
            dim = widths[i]
            resample = {}
            if i < n - 1:
                resample["downsample"] = CausalConv3d(dim, dim, stride=(2 if c.halves_time(i) else 1, 2, 2), time=time)
            levels.append(Level(blocks, **resample))
        self.down = nn.ModuleList(levels)
        self.mid_block = nn.ModuleList([ResBlock(dim, dim, time) for _ in range(c.num_res_blocks)])
        self.norm_out = group_norm(dim)
        self.conv_out = CausalConv3d(dim, c.z_channels, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))


class Decoder(nn.Module):
    """+-1 codes (B, D, t, h, w) -> float (B, 3, 1 + (t-1)*tc, h*sc, w*sc), unbounded (the caller clamps)."""

    def __init__(self, c: OpenMagvit2Config):
        super().__init__()
        widths, n, time = c.widths, len(c.ch_mult), not c.image
        self.conv_in = CausalConv3d(c.z_channels, widths[-1], time=time)
        self.mid_block = nn.ModuleList([ResBlock(widths[-1], widths[-1], time) for _ in range(c.num_res_blocks)])
        levels, adaptive = [], []
        for i in range(n):  # level i is entered from level i + 1 (the middle for the last level)
            dim_in = widths[i + 1] if i < n - 1 else widths[-1]
            adaptive.append(AdaptiveGroupNorm(c.z_channels, dim_in))
            blocks = [ResBlock(dim_in if j == 0 else widths[i], widths[i], time) for j in range(c.num_res_blocks)]
            resample = {"upsample": Upsampler(widths[i], 2 if c.halves_time(i - 1) else 1, time)} if i > 0 else {}
            levels.append(Level(blocks, **resample))
        self.up = nn.ModuleList(levels)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = group_norm(widths[0])
        self.conv_out = CausalConv3d(widths[0], c.out_ch, time=time)

    def forward(self, codes: Tensor) -> Tensor:
        x = self.conv_in(codes)
        for block in self.mid_block:
            x = block(x)
        for level, norm in zip(reversed(self.up), reversed(self.adaptive)):
            x = norm(x, codes)
            for block in level.block:
                x = block(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return self.conv_out(swish(self.norm_out(x)))


# tokenizer


class OpenMagvit2Tokenizer(TokenizerBase):
    """Video <-> token ids with Open-MAGVIT2 weights; the same API as `lfqtok.tokenizers.model.Tokenizer` (DESIGN.md §2).

    fp32 everywhere, also on CUDA (upstream evaluates in fp32). A video model is not causal: the tokens of a clip
    depend on all of it. An image model tokenizes every frame on its own (B, T, ...) -> (B * T, 1, ...).
    """

    bit_order = "lsb_first"  # index bit c = sign of latent channel c, channel 0 the least significant bit
    to_unit = staticmethod(pixels_to_unit)  # upstream's Normalize(0.5, 0.5)

    def __init__(self, config: OpenMagvit2Config | None = None, *, name: str = "open-magvit2"):
        super().__init__()
        self.config = config if config is not None else OpenMagvit2Config()
        self.name = name
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self._sha256: str | None = None  # set by the loaders: the hash of the lfqtok checkpoint bytes

    # properties

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def causal(self) -> bool:
        """Video models: no (GroupNorm statistics span the whole clip); image models: yes (frames are independent)."""
        return self.config.image

    @property
    def window_frames(self) -> int | None:
        """Clip length a video model was trained on (the pipeline encodes independent windows of it); None for images."""
        return self.config.window_frames

    @property
    def sha256(self) -> str:
        """Hex sha256 of this model as an lfqtok safetensors checkpoint (the bytes `save` writes), computed once."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for chunk in iter_file_chunks(self):
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    # inference

    def latents_to_indices(self, z: Tensor) -> Tensor:
        """(B, D, t, h, w) latents -> int64 ids (B, t, h, w): bit c = latent c > 0, channel 0 least significant."""
        weights = torch.ones((), dtype=torch.int64, device=z.device) << torch.arange(z.shape[1], device=z.device)
        return ((z > 0).long() * weights.view(1, -1, 1, 1, 1)).sum(1)

    def indices_to_codes(self, ids: Tensor) -> Tensor:
        """int64 ids (B, t, h, w) -> float32 codes (B, D, t, h, w): +1 where bit c is set, -1 elsewhere."""
        shifts = torch.arange(self.config.z_channels, device=ids.device).view(1, -1, 1, 1, 1)
        return ((ids[:, None] >> shifts) & 1).float().mul_(2).sub_(1)

    def _frames_apart(self, x: Tensor) -> Tensor:
        """Image models: (B, C, T, H, W) -> (B * T, C, 1, H, W), every frame its own sample; video models: x."""
        return x.transpose(1, 2).flatten(0, 1).unsqueeze(2) if self.config.image else x

    def _frames_together(self, x: Tensor, batch: int) -> Tensor:
        """Inverse of `_frames_apart`: (B * T, C, 1, H, W) -> (B, C, T, H, W)."""
        return x.squeeze(2).unflatten(0, (batch, -1)).transpose(1, 2) if self.config.image else x

    @torch.inference_mode()
    def encode_to_device(self, video: Tensor) -> Tensor:
        """uint8 (B, T, H, W, 3) on any device -> int64 ids (B, t, h, w) left on the model's device."""
        x = self._video_in(video)
        z = self.encoder(self._frames_apart(x))
        return self.latents_to_indices(self._frames_together(z, x.shape[0]))

    @torch.inference_mode()
    def decode(self, ids: Tensor) -> Tensor:
        """int ids (B, t, h, w) of any integer dtype -> uint8 video (B, T, H, W, 3) on the CPU."""
        ids = self._ids_in(ids, 4)
        x = self.decoder(self._frames_apart(self.indices_to_codes(ids)))
        return unit_to_pixels(self._frames_together(x, ids.shape[0])).cpu()


# checkpoint layout: which tensors of an upstream checkpoint make the model


def infer_config(shapes: Mapping[str, tuple[int, ...]], label: str) -> OpenMagvit2Config:
    """The architecture from tensor shapes keyed by dotless upstream names ('encoderconv_inconv_1weight': video;
    'encoderconv_inweight', 4-d: image)."""
    image = len(shapes.get("encoderconv_inweight", ())) == 4
    conv, ndim = ("weight", 4) if image else ("conv_1weight", 5)  # a conv's weight: dotless suffix and rank

    def shape(name: str) -> tuple[int, ...]:
        found = shapes.get(name + conv)
        if found is None or len(found) != ndim:
            raise ModelError(f"{label}: no {ndim}-d tensor for {name}{conv}: not an Open-MAGVIT2 tokenizer checkpoint")
        return tuple(found)

    conv_in = shape("encoderconv_in")  # (ch, 3, [3,] 3, 3)
    blocks: dict[int, set[int]] = {}
    for name in shapes:
        m = re.fullmatch(rf"encoderdown(\d+)block(\d+)conv1{conv}", name)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    levels = sorted(blocks)
    if not levels or levels != list(range(len(levels))) or any(blocks[i] != set(range(len(blocks[0]))) for i in levels):
        raise ModelError(f"{label}: encoder levels / residual blocks are not numbered 0..n (levels {levels})")
    ch = conv_in[0]
    mults = []
    for i in levels:
        width = shape(f"encoderdown{i}block0conv1")[0]
        if width % ch:
            raise ModelError(f"{label}: level {i} is {width} wide, not a multiple of ch = {ch}")
        mults.append(width // ch)
    return OpenMagvit2Config(
        ch=ch,
        ch_mult=tuple(mults),
        num_res_blocks=len(blocks[0]),
        z_channels=shape("encoderconv_out")[0],
        in_channels=conv_in[1],
        out_ch=shape("decoderconv_out")[0],
        window_frames=None if image else TRAINED_WINDOW,
        image=image,
    )


def plan_weights(shapes: Mapping[str, tuple[int, ...]], label: str, *, raw: bool = False) -> tuple[OpenMagvit2Config, dict[str, str]]:
    """(config, {model parameter name: checkpoint tensor name}) for an upstream state dict given as name -> shape.

    EMA weights (`model_ema.<name without dots>`, what upstream evaluates) when the checkpoint has them, else
    (or with `raw`) the raw `encoder.*` / `decoder.*` ones. Everything else (discriminator, EMA bookkeeping,
    optimizer state) is ignored. An image model's 4-d conv weights take our 5-d shape (time kernel 1) in `build`.
    """
    raw_names = {dotless(k): k for k in shapes if k.startswith(("encoder.", "decoder."))}
    ema_names = {
        k[len(EMA_PREFIX) :]: k
        for k in shapes
        if k.startswith(EMA_PREFIX) and k[len(EMA_PREFIX) :].startswith(("encoder", "decoder"))
    }
    use_ema = bool(ema_names) and not raw
    source = ema_names if use_ema else raw_names
    if not source:
        what = "raw encoder.*/decoder.* weights" if raw and ema_names else "encoder/decoder weights"
        raise ModelError(f"{label}: no {what}: not an Open-MAGVIT2 tokenizer checkpoint")
    config = infer_config({d: shapes[k] for d, k in source.items()}, label)
    config = replace(config, weights="ema" if use_ema else "raw")
    with torch.device("meta"):
        expected = OpenMagvit2Tokenizer(config).state_dict()
    plan, missing, wrong = {}, [], []
    for name, tensor in expected.items():
        key = source.get(dotless(upstream_name(name, config.image)))
        want = upstream_shape(tuple(tensor.shape), config.image)
        if key is None:
            missing.append(name)
        elif tuple(shapes[key]) != want:
            wrong.append(f"{name} {tuple(shapes[key])} != {want}")
        else:
            plan[name] = key
    if missing or wrong:
        raise ModelError(
            f"{label}: tensors do not make an {config.family} tokenizer of the inferred config "
            f"(ch {config.ch}, ch_mult {list(config.ch_mult)}, {config.num_res_blocks} res blocks, z {config.z_channels}): "
            f"missing {missing[:3]}, wrong shape {wrong[:3]}"
        )
    return config, plan


def upstream_shape(shape: tuple[int, ...], image: bool) -> tuple[int, ...]:
    """Upstream's shape of one of our tensors: a 2D image conv has no time axis (ours is 1 long)."""
    return shape[:2] + shape[3:] if image and len(shape) == 5 else shape


def build(config: OpenMagvit2Config, tensors: Mapping[str, Tensor], name: str, device: torch.device) -> OpenMagvit2Tokenizer:
    """The tokenizer holding `tensors` (model parameter name -> tensor in our or upstream's shape) on `device`, as float32."""
    with torch.device("meta"):
        tok = OpenMagvit2Tokenizer(config, name=name)
    shapes = {k: v.shape for k, v in tok.state_dict().items()}
    state = {k: v.reshape(shapes[k]).to(device=device, dtype=torch.float32) for k, v in tensors.items()}
    tok.load_state_dict(state, assign=True)
    return tok.eval()


# lfqtok checkpoint file (safetensors, written by streaming: no second copy of the weights in memory)


def file_metadata(tok: OpenMagvit2Tokenizer) -> dict[str, str]:
    config = json.dumps(tok.config.to_dict(), sort_keys=True)
    return {"family": tok.config.family, "format": FORMAT, "lfqtok_config": config, "name": tok.name}


def iter_file_chunks(tok: OpenMagvit2Tokenizer) -> Iterator[bytes | memoryview]:
    """The bytes of `tok` as a safetensors file: sorted tensor names, float32, metadata keys sorted; same model, same bytes."""
    tensors = sorted((k, v.detach()) for k, v in tok.state_dict().items())
    header: dict[str, Any] = {"__metadata__": file_metadata(tok)}
    offset = 0
    for name, t in tensors:
        size = t.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    yield struct.pack("<Q", len(text)) + text
    for _, t in tensors:
        yield memoryview(t.to("cpu", torch.float32).contiguous().view(torch.uint8).numpy())


def save(tok: OpenMagvit2Tokenizer, path: str | Path) -> str:
    """Write `tok` as an lfqtok safetensors checkpoint (temp file + rename); returns its sha256."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    digest = hashlib.sha256()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            for chunk in iter_file_chunks(tok):
                digest.update(chunk)
                f.write(chunk)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    tok._sha256 = digest.hexdigest()
    return tok._sha256


def load_file(path: Path, metadata: Mapping[str, str], device: torch.device) -> OpenMagvit2Tokenizer:
    """An lfqtok safetensors checkpoint of this family (metadata already read from its header)."""
    from safetensors.torch import load_file as load_safetensors

    try:
        config = OpenMagvit2Config.from_dict(json.loads(metadata["lfqtok_config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} has no valid lfqtok_config metadata: {exc}") from None
    try:
        tensors = load_safetensors(str(path))
    except Exception as exc:  # safetensors raises its own error types for every kind of corruption
        raise ModelError(f"{path}: unreadable safetensors data ({type(exc).__name__}: {exc})") from None
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in OpenMagvit2Tokenizer(config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        bad = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        raise ModelError(f"{path}: tensors do not match its {config.family} config (first differences: {bad[:3]})")
    tok = build(config, tensors, metadata.get("name") or path.stem, device)
    tok._sha256 = file_sha256(path)
    return tok


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
