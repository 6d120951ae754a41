"""lfqtok.inspect.metrics: the one definition of PSNR, SSIM, luma/chroma PSNR and colour shift, checked against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from lfqtok.inspect.metrics import PSNR_CAP, SSIM_C1, QualityMeter, clip_quality, psnr, ssim_frames

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the independent reference (test extra)")


def noisy_pair(seed: int = 0, shape=(3, 32, 40, 3)) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random clip and a noisy, tinted copy of it (uint8)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, shape).astype(np.float64)
    src = (src + np.roll(src, 1, axis=1) + np.roll(src, 1, axis=2)) / 3  # some spatial correlation
    rec = src + rng.normal(0, 12, shape) + np.array([6.0, -3.0, 2.0])
    return src.round().clip(0, 255).astype(np.uint8), rec.round().clip(0, 255).astype(np.uint8)


def test_psnr_equals_scikit_image_and_caps_identical_frames():
    src, rec = noisy_pair()
    assert psnr(rec, src) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(src, rec, data_range=255), abs=1e-9)
    assert psnr(src, src) == PSNR_CAP


def test_ssim_equals_scikit_image_per_frame():
    src, rec = noisy_pair(1)
    ours = ssim_frames(rec, src)
    ref = [
        skimage_metrics.structural_similarity(
            s, r, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        for s, r in zip(src, rec)
    ]
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_ssim_of_identical_constant_and_inverted_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    assert np.allclose(ssim_frames(frames, frames), 1.0)
    a, b = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 150, np.uint8)
    assert ssim_frames(a, b)[0] == pytest.approx((2 * 100 * 150 + SSIM_C1) / (100**2 + 150**2 + SSIM_C1))
    assert ssim_frames(frames, 255 - frames).mean() < 0.1


def test_luma_and_chroma_psnr_match_scikit_image_ycbcr():
    from skimage.color import rgb2ycbcr

    src, rec = noisy_pair(2)
    q = clip_quality(rec, src)
    # scikit-image's rgb2ycbcr is BT.601 *studio* range: Y scaled by 219/255, Cb/Cr by 224/255
    ys, yr = (rgb2ycbcr(v) for v in (src.astype(np.float64) / 255, rec.astype(np.float64) / 255))
    mse_y = np.mean(((ys[..., 0] - yr[..., 0]) * 255 / 219) ** 2)
    mse_c = np.mean(((ys[..., 1:] - yr[..., 1:]) * 255 / 224) ** 2)
    assert q["psnr_luma"] == pytest.approx(10 * np.log10(255**2 / mse_y), abs=1e-3)
    assert q["psnr_chroma"] == pytest.approx(10 * np.log10(255**2 / mse_c), abs=1e-3)


def test_colour_shift_sees_a_tint_not_noise_or_brightness():
    rng = np.random.default_rng(3)
    src = rng.integers(40, 200, (2, 16, 16, 3)).astype(np.uint8)
    brighter = (src.astype(np.int16) + 10).astype(np.uint8)  # luma only
    noisy = (src.astype(np.int16) + rng.choice([-5, 5], src.shape)).astype(np.uint8)
    tinted = (src.astype(np.int16) + np.array([0, 0, 20])).astype(np.uint8)  # bluer: Cb +10, Cr -1.6
    assert clip_quality(brighter, src)["colour_shift"] == pytest.approx(0.0, abs=1e-9)
    assert clip_quality(noisy, src)["colour_shift"] < 0.3
    assert clip_quality(tinted, src)["colour_shift"] == pytest.approx((20 * 0.5 + 20 * 0.081312) / 2)


def test_meter_pools_clips_by_their_squared_errors():
    a_src, a_rec = noisy_pair(4, (2, 16, 16, 3))
    b_src = np.full((2, 16, 16, 3), 90, np.uint8)
    meter = QualityMeter()
    meter.add(a_rec, a_src)
    meter.add(b_src, b_src)  # a perfect clip halves the pooled MSE: +3.01 dB
    assert meter.result()["psnr"] == pytest.approx(psnr(a_rec, a_src) + 10 * np.log10(2))
    assert meter.result()["frames"] == 4
    with pytest.raises(ValueError):
        meter.add(a_rec[:1], a_src)
