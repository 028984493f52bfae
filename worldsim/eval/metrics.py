"""Frame-quality metrics on uint8 video: PSNR and Gaussian-window SSIM, batched in torch.

SSIM follows Wang, Bovik, Sheikh & Simoncelli (2004), "Image quality assessment: from error visibility
to structural similarity": an 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range
255, population (co)variances, computed per colour channel and averaged over the channels and over the
pixels whose window lies fully inside the image. With those settings it equals scikit-image's
`structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255, channel_axis=-1)` (the tests pin the agreement); it is our own so it runs on the GPU
beside the model, batched over frames, without another dependency.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SSIM_SIGMA = 1.5  # Wang et al. 2004
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scipy's/scikit-image's truncation of the Gaussian -> 11 taps
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
PSNR_CAP = 100.0  # dB; identical frames have infinite PSNR, which averages are capped at


def _as_batch(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float64 tensor (N, H, W, 3) (frames flattened over the leading axes)."""
    if not isinstance(
        frames, torch.Tensor
    ):  # a broadcast view or read-only memmap: copy, torch needs writable
        frames = torch.from_numpy(np.require(frames, requirements=["C", "W"]))
    x = frames
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (..., H, W, 3), got shape {tuple(x.shape)}")
    return x.reshape(-1, *x.shape[-3:])


def psnr(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) per frame of uint8 (..., H, W, 3) frames; inf where identical.

    Returns float64 of shape (...,): 10 log10(255^2 / MSE), the MSE over pixels and channels.
    """
    a, b = _as_batch(pred), _as_batch(target)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(DATA_RANGE**2 / mse)
    return out.reshape(np.shape(pred)[:-3])


def frame_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images, capped at 99 dB for identical ones so that logs, JSON and means
    stay finite (the trainer's validation, worldsim-infer and the app report this; `psnr` is batched)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(DATA_RANGE**2 / mse)


def _band_matrix(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n - 10, n) matrix whose rows are the Gaussian window at each 'valid' position along an axis."""
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, device=device, dtype=dtype)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    m = torch.zeros(n - 2 * SSIM_RADIUS, n, device=device, dtype=dtype)
    for i in range(m.shape[0]):
        m[i, i : i + g.numel()] = g
    return m


def _filter(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (..., H, W), 'valid' only (the border pixels SSIM crops anyway).

    Written as two matrix products, which BLAS runs fast in float64 where grouped convolutions do not.
    """
    y = rows @ x.reshape(-1, *x.shape[-2:]) @ cols.T  # 3-D batched: broadcasting 4-D is slow on CPU
    return y.reshape(*x.shape[:-2], *y.shape[-2:])


def ssim(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    device: str | torch.device | None = None,
    chunk: int = 64,
) -> np.ndarray:
    """Mean SSIM per frame of uint8 (..., H, W, 3) frames (1.0 where identical); float64 of shape (...,).

    Frames are processed `chunk` at a time on `device` (default: where `pred` lives, else CPU); float64
    on CPU, float32 on an accelerator.
    """
    a, b = _as_batch(pred), _as_batch(target)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if min(a.shape[1:3]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"ssim needs frames of at least 11x11 pixels, got {tuple(a.shape[1:3])}")
    dev = torch.device(device) if device is not None else a.device
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    H, W = a.shape[1:3]
    rows, cols = _band_matrix(H, dev, dtype), _band_matrix(W, dev, dtype)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    out = []
    for i in range(0, a.shape[0], chunk):
        x = a[i : i + chunk].to(dev, dtype).permute(0, 3, 1, 2)  # (n, 3, H, W)
        y = b[i : i + chunk].to(dev, dtype).permute(0, 3, 1, 2)
        mx, my = _filter(x, rows, cols), _filter(y, rows, cols)
        vx = _filter(x * x, rows, cols) - mx * mx
        vy = _filter(y * y, rows, cols) - my * my
        cxy = _filter(x * y, rows, cols) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(s.mean(dim=(1, 2, 3)).double().cpu())
    return torch.cat(out).numpy().reshape(np.shape(pred)[:-3])


def mean_per_horizon(values: np.ndarray, cap: float | None = PSNR_CAP) -> tuple[np.ndarray, np.ndarray]:
    """(E, H) per-episode values with NaN where an episode is too short -> (mean (H,), count (H,)).

    Values above `cap` (infinite PSNR of identical frames) are clipped to it before averaging.
    """
    v = np.asarray(values, dtype=np.float64)
    if cap is not None:
        v = np.minimum(v, cap)
    count = np.isfinite(v).sum(axis=0)
    total = np.where(np.isfinite(v), v, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(v.shape[1], np.nan), where=count > 0)
    return mean, count
