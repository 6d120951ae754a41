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

from .device import resolve_device
from .errors import InputError, OutputError, UsageError, VideoError
from .model import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer
from .sources import list_items, read_video_bytes
from .video import iter_frames

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
    init_from: str | None = None  # start from these tokenizer weights ("default" or a path): fine-tuning, fresh optimizer
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 200  # steps between state files (and at the end)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
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


def resize_short_side(frames: Tensor, short_side: int) -> Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, H', W', 3) with min(H', W') = short_side (bilinear, antialiased)."""
    h, w = frames.shape[1:3]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decode_video(video: str | bytes, short_side: int, max_frames: int | None, chunk: int = 32) -> Tensor:
    """A whole video (path or bytes) -> uint8 (N, H, W, 3), short side scaled to `short_side`, `chunk` frames at a time.

    Frames come from `lfqtok.video.iter_frames` (decord where it reads right, PyAV otherwise) at native size.
    """
    frames = itertools.islice(iter_frames(video), max_frames)
    parts = []
    while batch := list(itertools.islice(frames, chunk)):
        parts.append(resize_short_side(torch.from_numpy(np.stack(batch)), short_side))
    if not parts:
        raise VideoError("no frames")
    return torch.cat(parts)


class ClipSampler:
    """Random training clips of in-memory videos: float (B, 3, T, crop, crop) in [-1, 1], a pure function of the step."""

    def __init__(self, videos: list[Tensor], config: TrainConfig):
        self.videos, self.config = videos, config
        self.weights = torch.tensor([float(len(v)) for v in videos])

    def clip(self, video: Tensor, g: torch.Generator) -> Tensor:
        """One random clip: uint8 (N, H, W, 3) -> float (3, T, crop, crop)."""
        c = self.config
        rand = lambda: float(torch.rand((), generator=g))  # noqa: E731
        max_step = max(1, min(c.max_frame_step, (len(video) - 1) // max(1, c.clip_frames - 1)))
        step = 1 + int(torch.randint(max_step, (), generator=g))
        span = (c.clip_frames - 1) * step + 1
        start = int(torch.randint(len(video) - span + 1, (), generator=g))
        zoom = c.zoom[0] + (c.zoom[1] - c.zoom[0]) * rand()
        side = min(round(c.crop / zoom), *video.shape[1:3])  # crop side in stored pixels
        top = int(torch.randint(video.shape[1] - side + 1, (), generator=g))
        left = int(torch.randint(video.shape[2] - side + 1, (), generator=g))
        frames = video[start : start + span : step, top : top + side, left : left + side]  # (T, s, s, 3)
        x = frames.permute(0, 3, 1, 2).float()
        if side != c.crop:
            x = F.interpolate(x, size=(c.crop, c.crop), mode="bilinear", antialias=True, align_corners=False)
        if rand() < 0.5:
            x = x.flip(-1)
        return x.div(127.5).sub(1.0).clamp(-1, 1).transpose(0, 1)  # (3, T, crop, crop)

    def batch(self, step: int) -> Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        picks = torch.multinomial(self.weights, self.config.batch_size, replacement=True, generator=g)
        return torch.stack([self.clip(self.videos[int(i)], g) for i in picks])


def load_videos(config: TrainConfig) -> tuple[list[Tensor], list[tuple[str, str]]]:
    """Decode every input video long enough for one clip; (videos, skipped (source, reason)).

    Inputs are whatever `lfqtok encode` takes: video files, directories, @lists, WebDataset tar shards of videos.
    """
    videos, skipped = [], []
    for item in list_items(config.inputs):
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


# state


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to lr * min_lr_ratio as progress goes 0 -> 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def save_state(path: Path, tok: Tokenizer, opt: torch.optim.Optimizer, step: int, seconds: float, config: TrainConfig) -> None:
    """Model + AdamW moments + step as one safetensors file, written to a temp name and renamed."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in tok.state_dict().items()}
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


def load_state(path: Path, tok: Tokenizer, opt: torch.optim.Optimizer, config: TrainConfig) -> tuple[int, float]:
    """Restore model and optimizer from `path`; (step, seconds). UsageError if it is a run of another model."""
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
    return int(meta["step"]), float(meta["seconds"])


# training


def _init_weights(tok: Tokenizer, source: str) -> None:
    """Copy the weights of tokenizer checkpoint `source` into `tok`; UsageError if its config differs."""
    init = load_tokenizer(source, "cpu")
    if init.config != tok.config:
        raise UsageError(f"init_from {source}: its config {init.config.to_dict()} differs from the run's {tok.config.to_dict()}")
    tok.load_state_dict(init.state_dict())


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
    sampler = ClipSampler(videos, config)

    torch.manual_seed(config.seed)
    tok = Tokenizer(config.tokenizer, name=config.name).to(device).train()
    decay = [p for n, p in tok.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in tok.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))
    if resume and state_path.is_file():
        step, past_seconds = load_state(state_path, tok, opt, config)
    else:
        step, past_seconds = 0, 0.0
        if config.init_from is not None:
            _init_weights(tok, config.init_from)

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
                err = out_.recon.float() - x
                l1, mse = err.abs().mean(), err.square().mean()
            loss = config.l1_weight * l1 + config.mse_weight * mse + out_.aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tok.parameters(), config.grad_clip)
            opt.step()
            step += 1
            seconds = time.monotonic() - start
            progress = max(step / config.steps, (past_seconds + seconds) / budget)
            with torch.no_grad():
                clamped_mse = (out_.recon.float().clamp(-1, 1) - x).square().mean()
                loss_v, psnr = loss.item(), float(10 * torch.log10(4 / clamped_mse.clamp(min=1e-10)))
            if on_step is not None:
                on_step(StepStats(step, config.steps, progress, loss_v, l1.item(), mse.item(), out_.aux_loss.item(), psnr, lr, seconds))
            if step % config.checkpoint_every == 0 or progress >= 1:
                save_state(state_path, tok, opt, step, past_seconds + seconds, config)
                save_tokenizer(tok, tok_path, name=config.name)
    finally:
        if prefetch:
            prefetch.shutdown(cancel_futures=True)
    if not tok_path.is_file():  # resumed a run that had already finished
        save_tokenizer(tok, tok_path, name=config.name)
    return TrainResult(step, past_seconds + time.monotonic() - start, loss_v, psnr, state_path, tok_path, skipped)

