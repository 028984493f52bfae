"""PSNR and SSIM of worldsim-eval: exact values on constructed frames, and scikit-image's SSIM."""

from __future__ import annotations

import numpy as np
import pytest

from worldsim.eval.metrics import PSNR_CAP, mean_per_horizon, psnr, ssim


def _ramp(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 30x40 gradient image and a noisy copy (uniform integer noise in [-30, 30], clipped)."""
    x = np.linspace(0, 1, 40)[None, :, None] * np.linspace(0, 1, 30)[:, None, None] * 255 * np.ones(3)
    smooth = x.astype(np.uint8)
    noisy = np.clip(smooth.astype(int) + rng.integers(-30, 31, smooth.shape), 0, 255).astype(np.uint8)
    return smooth, noisy


def test_identical_frames_have_infinite_psnr_and_unit_ssim():
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 24, 32, 3), dtype=np.uint8)
    assert psnr(frames, frames).shape == (2, 3)
    assert np.all(np.isinf(psnr(frames, frames)))
    np.testing.assert_allclose(ssim(frames, frames), 1.0, atol=1e-12)


def test_psnr_of_a_known_error_is_the_formula():
    rng = np.random.default_rng(1)
    a = rng.integers(20, 236, (4, 16, 16, 3)).astype(np.uint8)
    signs = rng.choice([-1, 1], a.shape)
    for d in (1, 5, 16):
        b = (a.astype(int) + d * signs).astype(np.uint8)  # every pixel off by exactly d: MSE = d^2
        np.testing.assert_allclose(psnr(b, a), 10 * np.log10(255**2 / d**2), rtol=1e-12)


def test_ssim_matches_scikit_image_reference_values():
    # scikit-image 0.26 structural_similarity(gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=255, channel_axis=-1) on these exact images.
    smooth, noisy = _ramp(np.random.default_rng(7))
    shifted = np.roll(smooth, 2, axis=1)
    np.testing.assert_allclose(ssim(smooth, noisy), 0.4153431873563351, rtol=1e-9)
    np.testing.assert_allclose(ssim(smooth, shifted), 0.9589391408891798, rtol=1e-9)


def test_ssim_agrees_with_scikit_image_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.normal(0, 25, a.shape).round(), 0, 255).astype(np.uint8)
    ref = [
        metrics.structural_similarity(
            a[i],
            b[i],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(ssim(a, b), ref, rtol=1e-9)


def test_a_shifted_image_scores_below_one_and_worse_with_larger_shifts():
    smooth, _ = _ramp(np.random.default_rng(0))
    scores = [float(ssim(smooth, np.roll(smooth, s, axis=1))) for s in (1, 3, 8)]
    assert all(s < 1.0 for s in scores)
    assert scores[0] > scores[1] > scores[2]


def test_metrics_reject_mismatched_shapes():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:1])
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:, :8, :8], a[:, :8, :8])


def test_mean_per_horizon_skips_short_episodes_and_caps_infinity():
    values = np.array([[10.0, 20.0, np.inf], [30.0, np.nan, np.nan]])
    mean, count = mean_per_horizon(values)
    np.testing.assert_allclose(mean, [20.0, 20.0, PSNR_CAP])
    np.testing.assert_array_equal(count, [2, 1, 1])
