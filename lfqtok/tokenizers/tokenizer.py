"""The interface every tokenizer family shares (DESIGN.md §2), and the only one the pipeline relies on.

`lfqtok.tokenizers.model.Tokenizer` (ours) and `lfqtok.tokenizers.open_magvit2.OpenMagvit2Tokenizer` implement it; `load_tokenizer`
returns either.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ModelError, UsageError


class TokenizerBase(nn.Module):
    """What every tokenizer family shares (DESIGN.md §2): shapes, input checks, `encode`; the pipeline uses only this.

    A family sets `config` (with temporal_compression, spatial_compression), `name`, `codebook_size`, and
    implements `encode_to_device` and `decode`.
    """

    bit_order = "msb_first"  # index bit i is the sign of latent channel i, channel 0 the most significant bit
    causal = True  # tokens never depend on later frames
    window_frames: int | None = None  # None: any clip length 1 + 4k (a windowed family names its trained length)
    to_unit: Callable[[Tensor], Tensor]  # uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1], the family's way

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_video_shape(self, frames: int, height: int, width: int) -> None:
        """UsageError unless frames = 1 + k * temporal_compression and height, width are multiples of the stride."""
        tc, sc = self.config.temporal_compression, self.config.spatial_compression
        if frames < 1 or (frames - 1) % tc:
            trained = f"; {self.window_frames} is the length {self.name} was trained on" if self.window_frames else ""
            raise UsageError(
                f"clips of {frames} frames cannot be tokenized: the frame count must be 1 + {tc}k "
                f"(1, {1 + tc}, {1 + 2 * tc}, {1 + 4 * tc}, ...{trained})"
            )
        if height < 1 or width < 1 or height % sc or width % sc:
            raise UsageError(f"frames of {height}x{width} cannot be tokenized: height and width must be multiples of {sc}")

    def token_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the ids for a clip of frames x height x width."""
        self.check_video_shape(frames, height, width)
        c = self.config
        return 1 + (frames - 1) // c.temporal_compression, height // c.spatial_compression, width // c.spatial_compression

    def encode(self, video: Tensor) -> Tensor:
        """uint8 (B, T, H, W, 3), T = 1 + 4k, H, W multiples of 8 -> int64 ids (B, t, h, w) [+ (c)] on the CPU."""
        return self.encode_to_device(video).cpu()

    def _video_in(self, video: Tensor) -> Tensor:
        """uint8 (B, T, H, W, 3) of a shape this model takes -> float (B, 3, T, H, W) in [-1, 1] on its device."""
        video = torch.as_tensor(video)
        if video.dtype != torch.uint8 or video.ndim != 5 or video.shape[-1] != 3:
            raise UsageError(f"encode takes uint8 video (B, T, H, W, 3), got {video.dtype} {tuple(video.shape)}")
        self.check_video_shape(*video.shape[1:4])
        return self.to_unit(video.to(self.device, non_blocking=True))

    def _ids_in(self, ids: Tensor, axes: int) -> Tensor:
        """Integer ids with `axes` axes of any integer dtype -> int64 on this model's device, each a code it has."""
        ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.ndim != axes:
            raise UsageError(f"decode takes integer ids with {axes} axes, got {ids.dtype} {tuple(ids.shape)}")
        ids = ids.to(self.device).to(torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ModelError(
                f"token ids span [{int(ids.min())}, {int(ids.max())}] but the tokenizer has {self.codebook_size} codes: "
                "these tokens were made by another tokenizer"
            )
        return ids
