"""Reconstruction quality of uint8 RGB video: PSNR, SSIM, luma/chroma PSNR, colour shift.

One definition for every number lfqtok reports: `lfqtok decode --json`, `scripts/eval_tokenizer.py` and the
training logs all use this module. Frames are uint8 (T, H, W, 3) RGB, peak 255.

- PSNR: 10 log10(255^2 / MSE), the MSE pooled over every value of the frames compared (all clips of a sample
  for `decode`, one clip for the eval script's per-clip rows); PSNR_CAP for identical frames.
- SSIM: Wang et al. 2004 as scikit-image's `structural_similarity(channel_axis=-1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)` computes it: 11x11 gaussian window, valid region
  only, per RGB channel, averaged over channels and pixels; one value per frame.
- Luma / chroma: BT.601 full-range YCbCr (JPEG's). Chroma PSNR pools the Cb and Cr errors.
- Colour shift: per frame, the difference of the mean Cb and of the mean Cr of reconstruction and source,
  in absolute value, averaged over both channels and all frames (a whole-frame tint, in 1/255 units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PSNR_CAP = 100.0  # dB reported for identical frames (MSE 0): finite, so --json stays valid JSON
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004: 11x11 gaussian window, sigma 1.5
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

# BT.601 full-range RGB -> YCbCr (the offset 128 of Cb, Cr cancels in every difference taken here)
RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)


def psnr_from_mse(mse: float) -> float:
    """dB for a mean squared error of uint8 values (peak 255); PSNR_CAP when mse is 0."""
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, float(10 * np.log10(255.0**2 / mse)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of the same shape, the MSE pooled over all their values."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return psnr_from_mse(float(np.mean(d * d)))


def ycbcr_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (..., 3) difference of a and b in YCbCr (BT.601 full range): (Y, Cb, Cr)."""
    return (a.astype(np.float64) - b.astype(np.float64)) @ RGB_TO_YCBCR.T


def ssim_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per frame (T,) of uint8 RGB frames (T, H, W, 3): per channel, averaged; H, W >= 11."""
    import torch
    import torch.nn.functional as F

    x, y = (torch.from_numpy(np.ascontiguousarray(v)).double().permute(0, 3, 1, 2) for v in (a, b))  # (T, 3, H, W)
    g = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(g**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    gh, gw = g.view(1, 1, -1, 1).expand(3, 1, -1, 1), g.view(1, 1, 1, -1).expand(3, 1, 1, -1)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(v, gh, groups=3), gw, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mx**2 + my**2 + SSIM_C1) * (vx + vy + SSIM_C2))
    return s.mean(dim=(1, 2, 3)).numpy()


@dataclass
class QualityMeter:
    """Accumulates every metric over clips added one at a time; `result()` pools them (PSNRs from pooled MSE)."""

    sse_rgb: float = 0.0
    sse_luma: float = 0.0
    sse_chroma: float = 0.0
    pixels: int = 0
    ssim_sum: float = 0.0
    ssim_frames: int = 0
    shift_sum: float = 0.0
    frames: int = 0

    def add(self, rec: np.ndarray, src: np.ndarray) -> None:
        """One reconstructed clip and its source, uint8 (T, H, W, 3) each."""
        if rec.shape != src.shape:
            raise ValueError(f"reconstruction {rec.shape} and source {src.shape} differ in shape")
        d = rec.astype(np.float64) - src.astype(np.float64)
        e = d @ RGB_TO_YCBCR.T  # (T, H, W, 3): Y, Cb, Cr errors
        self.sse_rgb += float(np.sum(d * d))
        self.sse_luma += float(np.sum(e[..., 0] ** 2))
        self.sse_chroma += float(np.sum(e[..., 1:] ** 2))
        self.pixels += int(np.prod(d.shape[:-1]))
        self.shift_sum += float(np.abs(e[..., 1:].mean(axis=(1, 2))).mean(axis=-1).sum())
        self.frames += d.shape[0]
        if min(rec.shape[1:3]) >= SSIM_WINDOW:
            self.ssim_sum += float(ssim_frames(rec, src).sum())
            self.ssim_frames += d.shape[0]

    def result(self) -> dict[str, Any]:
        """psnr, ssim (None below 11x11 frames), psnr_luma, psnr_chroma, colour_shift (1/255 units), frames."""
        if not self.pixels:
            return {"psnr": None, "ssim": None, "psnr_luma": None, "psnr_chroma": None, "colour_shift": None, "frames": 0}
        return {
            "psnr": psnr_from_mse(self.sse_rgb / (3 * self.pixels)),
            "ssim": self.ssim_sum / self.ssim_frames if self.ssim_frames else None,
            "psnr_luma": psnr_from_mse(self.sse_luma / self.pixels),
            "psnr_chroma": psnr_from_mse(self.sse_chroma / (2 * self.pixels)),
            "colour_shift": self.shift_sum / self.frames,
            "frames": self.frames,
        }


def clip_quality(rec: np.ndarray, src: np.ndarray) -> dict[str, Any]:
    """Every metric of one reconstructed clip against its source (uint8 (T, H, W, 3))."""
    meter = QualityMeter()
    meter.add(rec, src)
    return meter.result()
