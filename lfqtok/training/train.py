"""`train_tokenizer`: train a `Tokenizer` on videos with L1 (+ MSE) + LFQ aux loss; the embedded default was made with it.

Inputs are listed like `lfqtok encode`'s (files, directories, @lists, WebDataset tar shards of videos). Videos are
decoded once (decord or PyAV, short side scaled to `short_side`) and kept in memory as uint8; every batch is
random clips of them: random video (by length), temporal offset and frame step, zoom, crop and horizontal flip.
The sampler is seeded by (seed, step), so a resumed run sees the batches the uninterrupted one would have seen.
State (model + AdamW moments + step) is one safetensors file written atomically; nothing is ever pickled.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..device import resolve_device
from ..errors import InputError, OutputError, UsageError, VideoError
from ..inspect.metrics import RGB_TO_YCBCR
from ..tokenizers.model import ResBlock, Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer
from ..pipeline.sources import list_items, read_video_bytes
from ..pipeline.video import iter_frames

STATE_FORMAT = "lfqtok-train-state"

# config


@dataclass(frozen=True)
class TrainConfig:
    """One training run; saved into the state file so a resume can check it continues the same run."""

    inputs: tuple[str, ...]  # video files, directories (recursive), @lists, tar shards: as `lfqtok encode` takes
    out_dir: str  # last.safetensors (resumable state) and tokenizer.safetensors (inference weights)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    name: str = "lfqtok-default"  # stored in the exported checkpoint's metadata
    steps: int = 4000  # optimizer steps; the LR schedule ends here
    max_minutes: float | None = None  # wall-clock budget: the schedule ends at whichever of steps / time comes first
    batch_size: int = 8
    clip_frames: int = 9  # 1 + 4k: short clips train fast, the model is causal and fully convolutional
    crop: int = 64  # square crops; the model is evaluated at 128 px
    short_side: int = 160  # videos are decoded once at this short side and kept in memory
    zoom: tuple[float, float] = (0.6, 1.0)  # random scale of the stored frames before cropping (eval: 128/160)
    max_frame_step: int = 2  # temporal stride drawn from 1 .. this (speed augmentation)
    max_frames_per_video: int | None = None  # decode at most this many frames per video (tests, memory)
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # cosine decay from lr to lr * this
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    l1_weight: float = 1.0  # reconstruction loss = l1_weight * L1 + mse_weight * MSE (on [-1, 1] pixels)
    mse_weight: float = 0.0  # MSE is what PSNR measures; L1 alone favours sharp medians
    chroma_weight: float | None = None  # None: losses on RGB; else on YCbCr (BT.601) with Cb, Cr errors x this vs Y
    lowpass_weight: float = 0.0  # + this x MSE of the per-frame block means (spatial_compression^2): exact colour, level
    photos: tuple[str, ...] = ()  # still images (files, directories): clips of synthetic camera moves over them
    photo_fraction: float = 0.0  # share of the clips cut from `photos` (the rest from the videos)
    ema_decay: float | None = None  # exponential moving average of the weights; the export is the average
    init_from: str | None = None  # start from these tokenizer weights ("default" or a path): fine-tuning, fresh optimizer
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 200  # steps between state files (and at the end)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        object.__setattr__(self, "photos", tuple(str(i) for i in self.photos))
        object.__setattr__(self, "zoom", tuple(self.zoom))
        if not self.inputs:
            raise UsageError("training needs at least one video file or directory")
        for name in ("steps", "batch_size", "crop", "short_side", "max_frame_step", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"train config: {name} must be >= 1, got {getattr(self, name)}")
        tc, sc = self.tokenizer.temporal_compression, self.tokenizer.spatial_compression
        if self.clip_frames < 1 or (self.clip_frames - 1) % tc:
            raise UsageError(f"train config: clip_frames must be 1 + {tc}k, got {self.clip_frames}")
        if self.crop % sc:
            raise UsageError(f"train config: crop must be a multiple of {sc}, got {self.crop}")
        if not 0 < self.zoom[0] <= self.zoom[1] or self.crop > self.short_side * self.zoom[0]:
            raise UsageError(f"train config: zoom {self.zoom} of short side {self.short_side} must fit a {self.crop} crop")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UsageError(f"train config: max_minutes must be positive, got {self.max_minutes}")
        if self.l1_weight < 0 or self.mse_weight < 0 or self.l1_weight + self.mse_weight == 0:
            raise UsageError(f"train config: l1_weight and mse_weight must be >= 0, not both 0, got {self.l1_weight}, {self.mse_weight}")
        if (self.chroma_weight is not None and self.chroma_weight < 0) or self.lowpass_weight < 0:
            raise UsageError(f"train config: chroma_weight and lowpass_weight must be >= 0, got {self.chroma_weight}, {self.lowpass_weight}")
        if not 0 <= self.photo_fraction <= 1 or (self.photo_fraction > 0 and not self.photos):
            raise UsageError(f"train config: photo_fraction must be in [0, 1] and needs photos, got {self.photo_fraction}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise UsageError(f"train config: ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise UsageError(f"train config: lr must be positive and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokenizer": self.tokenizer.to_dict()}


class StepStats(NamedTuple):
    """What `on_step` gets after each optimizer step."""

    step: int  # steps done
    steps: int
    progress: float  # 0 .. 1 of the schedule (steps or time budget, whichever is further)
    loss: float
    l1: float
    mse: float
    aux: float
    psnr: float  # dB of the training batch, clamped reconstruction
    lr: float
    seconds: float  # wall time of this run so far (excluding earlier runs of a resumed training)


class TrainResult(NamedTuple):
    steps: int
    seconds: float  # total training wall time, resumed runs included
    loss: float  # last step's
    psnr: float
    state_path: Path
    tokenizer_path: Path
    skipped: list[tuple[str, str]]  # (video, reason) not used for training


# data


def decode_video(video: str | bytes, short_side: int, max_frames: int | None) -> Tensor:
    """A whole video (path or bytes) -> uint8 (N, H, W, 3), short side scaled to `short_side`.

    Frames come from `lfqtok.pipeline.video.iter_frames`: the decoder and frame scaler `lfqtok encode` uses, so a
    center crop of them is exactly what encode tokenizes at `--size short_side`.
    """
    frames = list(itertools.islice(iter_frames(video, size=short_side), max_frames))
    if not frames:
        raise VideoError("no frames")
    return torch.from_numpy(np.stack(frames))


class ClipSampler:
    """Random training clips: float (B, 3, T, crop, crop) in [-1, 1], a pure function of the step.

    Video clips: random video (by length), frame step, start, zoom, crop, horizontal flip. Photo clips (a
    `photo_fraction` of them): a synthetic camera move over a still image: pan, zoom and a small rotation,
    each linear over the clip (a quarter of them held still), sampled bilinearly.
    """

    MAX_PAN = 0.3  # of the crop side, over a whole clip
    MAX_ZOOM = 1.2  # end scale / start scale, either way
    MAX_DEGREES = 6.0  # rotation over a whole clip

    def __init__(self, videos: list[Tensor], config: TrainConfig, photos: list[Tensor] | None = None):
        self.videos, self.config, self.photos = videos, config, photos or []
        self.weights = torch.tensor([float(len(v)) for v in videos])

    def clip(self, video: Tensor, g: torch.Generator) -> Tensor:
        """One random clip: uint8 (N, H, W, 3) -> float (3, T, crop, crop)."""
        c = self.config
        max_step = max(1, min(c.max_frame_step, (len(video) - 1) // max(1, c.clip_frames - 1)))
        step = 1 + int(torch.randint(max_step, (), generator=g))
        span = (c.clip_frames - 1) * step + 1
        start = int(torch.randint(len(video) - span + 1, (), generator=g))
        side = min(round(c.crop / self._zoom(g)), *video.shape[1:3])  # crop side in stored pixels
        top = int(torch.randint(video.shape[1] - side + 1, (), generator=g))
        left = int(torch.randint(video.shape[2] - side + 1, (), generator=g))
        frames = video[start : start + span : step, top : top + side, left : left + side]  # (T, s, s, 3)
        x = frames.permute(0, 3, 1, 2).float()
        if side != c.crop:
            x = F.interpolate(x, size=(c.crop, c.crop), mode="bilinear", antialias=True, align_corners=False)
        return self._finish(x, g)

    def photo_clip(self, photo: Tensor, g: torch.Generator) -> Tensor:
        """A camera move over one still: uint8 (1, H, W, 3) -> float (3, T, crop, crop)."""
        c = self.config
        rand = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))  # noqa: E731
        h, w = photo.shape[1:3]
        side = min(c.crop / self._zoom(g), h, w)  # start view side in stored pixels
        moving = rand(0, 1) >= 0.25
        end_scale = self.MAX_ZOOM ** rand(-1, 1) if moving else 1.0
        angle = rand(-1, 1) * self.MAX_DEGREES * torch.pi / 180 if moving else 0.0
        pan = [rand(-1, 1) * self.MAX_PAN * side if moving else 0.0 for _ in range(2)]
        frac = torch.linspace(0, 1, c.clip_frames, dtype=torch.float64)
        half = side / 2 * (1 + (end_scale - 1) * frac)  # (T,) half view side, pixels
        reach = half.max().item() * 2**0.5  # a rotated view stays inside the photo
        cx = rand(min(reach, w / 2), max(w - reach, w / 2)) + pan[0] * (frac - 0.5)
        cy = rand(min(reach, h / 2), max(h - reach, h / 2)) + pan[1] * (frac - 0.5)
        cos, sin = torch.cos(angle * frac), torch.sin(angle * frac)
        # affine_grid maps output [-1, 1] to input [-1, 1] (align_corners=False): x_in = A x_out + b
        theta = torch.zeros(c.clip_frames, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = cos * half / (w / 2), -sin * half / (w / 2)
        theta[:, 1, 0], theta[:, 1, 1] = sin * half / (h / 2), cos * half / (h / 2)
        theta[:, 0, 2], theta[:, 1, 2] = cx / (w / 2) - 1, cy / (h / 2) - 1
        grid = F.affine_grid(theta.float(), [c.clip_frames, 3, c.crop, c.crop], align_corners=False)
        image = photo.permute(0, 3, 1, 2).float().expand(c.clip_frames, -1, -1, -1)
        x = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self._finish(x, g)

    def batch(self, step: int) -> Tensor:
        c = self.config
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
        picks = torch.multinomial(self.weights, c.batch_size, replacement=True, generator=g)
        from_photo = torch.rand(c.batch_size, generator=g) < (c.photo_fraction if self.photos else 0.0)
        photo_picks = torch.randint(max(1, len(self.photos)), (c.batch_size,), generator=g)
        return torch.stack([
            self.photo_clip(self.photos[int(p)], g) if still else self.clip(self.videos[int(i)], g)
            for i, p, still in zip(picks, photo_picks, from_photo)
        ])

    # helpers

    def _zoom(self, g: torch.Generator) -> float:
        lo, hi = self.config.zoom
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    def _finish(self, x: Tensor, g: torch.Generator) -> Tensor:
        """(T, 3, crop, crop) float 0..255 -> random horizontal flip, [-1, 1], (3, T, crop, crop)."""
        if float(torch.rand((), generator=g)) < 0.5:
            x = x.flip(-1)
        return x.div(127.5).sub(1.0).clamp(-1, 1).transpose(0, 1)


def load_videos(config: TrainConfig) -> tuple[list[Tensor], list[tuple[str, str]]]:
    """Decode every input video long enough for one clip; (videos, skipped (source, reason)).

    Inputs are whatever `lfqtok encode` takes: video files, directories, @lists, WebDataset tar shards of videos.
    """
    videos, skipped = [], []
    for item in list_items(config.inputs):
        if item.is_image:
            continue  # stills train through `photos`, as camera moves
        try:
            video = decode_video(read_video_bytes(item), config.short_side, config.max_frames_per_video)
        except VideoError as exc:
            skipped.append((item.source, str(exc)))
            continue
        if len(video) < config.clip_frames:
            skipped.append((item.source, f"{len(video)} frames, fewer than one clip of {config.clip_frames}"))
            continue
        videos.append(video)
    if not videos:
        raise InputError(f"no usable training video in {list(config.inputs)} ({len(skipped)} skipped)")
    return videos, skipped


PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def load_photos(config: TrainConfig) -> tuple[list[Tensor], list[tuple[str, str]]]:
    """Every still image in `config.photos` (files, directories searched recursively), short side `short_side`."""
    paths: list[Path] = []
    for p in map(Path, config.photos):
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.suffix.lower() in PHOTO_EXTS)
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"photo input not found: {p}")
    photos, skipped = [], []
    for path in paths:
        try:
            photos.append(decode_video(str(path), config.short_side, 1))
        except VideoError as exc:
            skipped.append((str(path), str(exc)))
    if config.photos and not photos:
        raise InputError(f"no readable image in {list(config.photos)} ({len(skipped)} skipped)")
    return photos, skipped


# state


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to lr * min_lr_ratio as progress goes 0 -> 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def save_state(
    path: Path, tok: Tokenizer, opt: torch.optim.Optimizer, step: int, seconds: float, config: TrainConfig, ema: "EMA | None" = None
) -> None:
    """Model + AdamW moments (+ weight average) + step as one safetensors file, written to a temp name and renamed."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in tok.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.shadow.items()})
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    meta = {"format": STATE_FORMAT, "step": str(step), "seconds": f"{seconds:.3f}", "train_config": json.dumps(config.to_dict())}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write training state {path}: {exc.strerror or exc}") from None


def load_state(path: Path, tok: Tokenizer, opt: torch.optim.Optimizer, config: TrainConfig) -> tuple[int, float, "EMA | None"]:
    """Restore model, optimizer and weight average from `path`; (step, seconds, ema). UsageError for another model."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != STATE_FORMAT:
        raise UsageError(f"{path} is not an lfqtok training state")
    saved = json.loads(meta["train_config"])["tokenizer"]
    if saved != config.tokenizer.to_dict():
        raise UsageError(f"{path.parent} holds a training run of another tokenizer config; use another out_dir or no resume")
    tensors = load_file(str(path), device=str(tok.device))
    tok.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v.cpu() if name == "step" else v
    opt.load_state_dict({"state": opt_state, "param_groups": opt.state_dict()["param_groups"]})
    ema = None
    if config.ema_decay is not None:
        ema = EMA(tok, config.ema_decay)  # a run resumed with an average it did not have starts one here
        ema.shadow.update({k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")})
    return int(meta["step"]), float(meta["seconds"]), ema


# losses


def reconstruction_loss(recon: Tensor, x: Tensor, config: TrainConfig, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """(weighted total, L1, MSE) of recon vs x, float (B, 3, T, H, W) in [-1, 1].

    With `chroma_weight` the errors are taken in YCbCr and Cb, Cr count that much more than Y (the weights are
    normalized to average 1, so the loss scale stays that of RGB); `lowpass_weight` adds the MSE of the
    per-frame `block` x `block` means: the whole-patch colour and level a thumbnail keeps exactly.
    """
    err = recon.float() - x
    weight = torch.ones(1, device=x.device)
    if config.chroma_weight is not None:
        err = torch.einsum("ij,bjthw->bithw", torch.tensor(RGB_TO_YCBCR, dtype=err.dtype, device=err.device), err)
        cw = config.chroma_weight
        weight = torch.tensor([1.0, cw, cw], device=x.device).view(1, 3, 1, 1, 1) * (3 / (1 + 2 * cw))
    l1, mse = (err.abs() * weight).mean(), (err.square() * weight).mean()
    loss = config.l1_weight * l1 + config.mse_weight * mse
    if config.lowpass_weight:
        loss = loss + config.lowpass_weight * (F.avg_pool3d(err, (1, block, block)).square() * weight).mean()
    return loss, l1, mse


# weights


def grown_state(init: Tokenizer, tok: Tokenizer) -> dict[str, Tensor]:
    """`tok`'s state dict with every weight of the smaller `init` copied in, so `tok` computes what `init` does.

    `tok` may have more residual blocks per level (new ones are identities: their last conv is zero) and a
    decoder base (zero at init); everything else must match in name and shape. Old blocks keep their order
    and come first in each level. When `tok` gives its last latent channels to a chroma head the checkpoint
    lacks, the encoder's output conv keeps its first channels and the decoder learns what the others now mean.
    """
    state = tok.state_dict()
    source = init.state_dict()
    mapping: dict[str, str] = {}
    for part in ("encoder", "decoder"):
        old_layers, new_layers = getattr(init, part).layers, getattr(tok, part).layers
        old_segments, new_segments = _level_segments(old_layers), _level_segments(new_layers)
        if [len(seg) for seg in old_segments] != [len(seg) for seg in new_segments]:
            raise UsageError(f"init_from: the {part} levels differ; only residual blocks can be added")
        for old, new in zip(old_segments, new_segments):
            if len(new[-1]) < len(old[-1]):
                raise UsageError(f"init_from: the {part} has fewer residual blocks than the checkpoint")
            pairs = [(old[0], new[0])] if len(old) == 2 else []  # the level's down/upsampling layer
            mapping.update({f"{part}.layers.{o}.": f"{part}.layers.{n}." for o, n in [*pairs, *zip(old[-1], new[-1])]})
    for name, value in source.items():
        prefix = next((p for p in mapping if name.startswith(p)), None)
        target = mapping[prefix] + name[len(prefix) :] if prefix else name
        if target.startswith("encoder.out.") and target in state and value.ndim and state[target].shape[1:] == value.shape[1:]:
            value = value[: state[target].shape[0]]  # channels handed to a new chroma head
        if target not in state or state[target].shape != value.shape:
            raise UsageError(f"init_from: checkpoint tensor {name} {tuple(value.shape)} has no place in the run's model")
        state[target] = value
    return state


def _level_segments(layers: torch.nn.Sequential) -> list[tuple]:
    """[(index of a down/upsampling layer, [indices of the residual blocks before it]), ..., ([last blocks],)]."""
    segments: list[tuple] = []
    blocks: list[int] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, ResBlock):
            blocks.append(i)
        else:
            segments.append((i, blocks))
            blocks = []
    return [*segments, (blocks,)]


class EMA:
    """Exponential moving average of a model's floating-point state; the average is what gets exported."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Blend in the current weights; the decay ramps up over the first steps so early averages are not stale."""
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v, 1 - d)

    def state_dict(self, model: torch.nn.Module) -> dict[str, Tensor]:
        """The model's state dict with the averaged floating-point tensors."""
        return {**model.state_dict(), **self.shadow}


# training


def _init_weights(tok: Tokenizer, source: str) -> None:
    """Copy the weights of tokenizer checkpoint `source` into `tok` (grown by `grown_state` where it is larger)."""
    init = load_tokenizer(source, "cpu")
    a, b = init.config.to_dict(), tok.config.to_dict()
    growth = {"num_res_blocks", "decoder_res_blocks", "decoder_base", "chroma_bits"}
    if {k: v for k, v in a.items() if k not in growth} != {k: v for k, v in b.items() if k not in growth}:
        raise UsageError(f"init_from {source}: its config {a} differs from the run's {b} beyond added blocks")
    tok.load_state_dict(grown_state(init, tok))


def train_tokenizer(config: TrainConfig, on_step: Callable[[StepStats], None] | None = None, resume: bool = True) -> TrainResult:
    """Train (or resume) a tokenizer; writes state + inference weights every `checkpoint_every` steps and at the end."""
    device = resolve_device(config.device)
    out = Path(config.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from None
    state_path, tok_path = out / "last.safetensors", out / "tokenizer.safetensors"
    videos, skipped = load_videos(config)
    photos, skipped_photos = load_photos(config)
    sampler = ClipSampler(videos, config, photos)

    torch.manual_seed(config.seed)
    tok = Tokenizer(config.tokenizer, name=config.name).to(device).train()
    decay = [p for n, p in tok.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in tok.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))
    if resume and state_path.is_file():
        step, past_seconds, ema = load_state(state_path, tok, opt, config)
    else:
        step, past_seconds = 0, 0.0
        if config.init_from is not None:
            _init_weights(tok, config.init_from)
        ema = EMA(tok, config.ema_decay) if config.ema_decay is not None else None

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    budget = config.max_minutes * 60 if config.max_minutes is not None else math.inf
    start = time.monotonic()
    loss_v = psnr = float("nan")
    progress = step / config.steps
    # on a GPU the next batch is cut on the CPU while this one trains (the sampler releases the GIL in torch ops)
    prefetch = ThreadPoolExecutor(max_workers=1) if device.type == "cuda" else None
    pending = prefetch.submit(sampler.batch, step) if prefetch else None
    try:
        while progress < 1:
            if prefetch:
                x = pending.result().pin_memory().to(device, non_blocking=True)
                pending = prefetch.submit(sampler.batch, step + 1)
            else:
                x = sampler.batch(step)
            lr = lr_at(config, step, progress)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast:
                out_ = tok(x)
            recon_loss, l1, mse = reconstruction_loss(out_.recon, x, config, config.tokenizer.spatial_compression)
            loss = recon_loss + out_.aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tok.parameters(), config.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(tok, step)
            step += 1
            seconds = time.monotonic() - start
            progress = max(step / config.steps, (past_seconds + seconds) / budget)
            with torch.no_grad():
                clamped_mse = (out_.recon.float().clamp(-1, 1) - x).square().mean()
                loss_v, psnr = loss.item(), float(10 * torch.log10(4 / clamped_mse.clamp(min=1e-10)))
            if on_step is not None:
                on_step(StepStats(step, config.steps, progress, loss_v, l1.item(), mse.item(), out_.aux_loss.item(), psnr, lr, seconds))
            if step % config.checkpoint_every == 0 or progress >= 1:
                save_state(state_path, tok, opt, step, past_seconds + seconds, config, ema)
                _export(tok, ema, tok_path, config)
    finally:
        if prefetch:
            prefetch.shutdown(cancel_futures=True)
    if not tok_path.is_file():  # resumed a run that had already finished
        _export(tok, ema, tok_path, config)
    return TrainResult(step, past_seconds + time.monotonic() - start, loss_v, psnr, state_path, tok_path, skipped + skipped_photos)


def _export(tok: Tokenizer, ema: EMA | None, path: Path, config: TrainConfig) -> None:
    """Write the inference checkpoint: the weight average when there is one, else the live weights."""
    if ema is None:
        save_tokenizer(tok, path, name=config.name)
        return
    averaged = Tokenizer(config.tokenizer, name=config.name)
    averaged.load_state_dict({k: v.cpu() for k, v in ema.state_dict(tok).items()})
    save_tokenizer(averaged, path)

