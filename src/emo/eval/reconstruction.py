"""Self-reconstruction metrics: PSNR and SSIM between generated and ground-truth frames.

Both work on uint8 RGB frames (data range 255). SSIM follows Wang et al. 2004 ("Image quality
assessment: from error visibility to structural similarity") as in their reference ``ssim.m``: first
its automatic downsampling (f = max(1, round(min(H, W) / 256)); if f > 1, an f×f mean filter with
symmetric borders, then every f-th pixel), then an 11×11 Gaussian window (σ = 1.5), K1 = 0.01,
K2 = 0.03, statistics over the window positions that fit inside the image ('valid'). ``ssim.m`` is
grayscale; we compute it per RGB channel and average.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

from emo.errors import EmoError
from emo.eval.metrics import Entry, Metric, Video, mean

MAX_PSNR = 100.0  # dB reported for identical frames (MSE = 0) so averages stay finite


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two images of the same shape."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return MAX_PSNR
    return min(MAX_PSNR, 10.0 * math.log10(data_range**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()  # (size,), separable


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of (H, W) with the 1-D window along both axes."""
    k = len(window)
    out = correlate1d(correlate1d(image, window, axis=0, mode="constant"), window, axis=1, mode="constant")
    # correlate1d centres the window; keep the positions where it lies fully inside the image.
    lo, hi = k // 2, k - 1 - k // 2
    return out[lo : out.shape[0] - hi, lo : out.shape[1] - hi]


def downsample_factor(height: int, width: int) -> int:
    """``ssim.m``'s f = max(1, round(min(M, N) / 256)), with MATLAB's round (halves away from zero)."""
    return max(1, math.floor(min(height, width) / 256 + 0.5))


def _downsample(image: np.ndarray, f: int) -> np.ndarray:
    """``imfilter(img, ones(f, f) / f², 'symmetric', 'same')`` then ``img(1:f:end, 1:f:end)``, for (H, W)."""
    # MATLAB centres an f-wide kernel on its element floor((f + 1) / 2): the mean for pixel i covers
    # i - (c - 1) .. i + f - c. Only every f-th output is kept, so only those windows are summed.
    c = (f + 1) // 2
    padded = np.pad(image, ((c - 1, f - c), (c - 1, f - c)), mode="symmetric")
    rows = np.arange(0, image.shape[0], f)[:, None] + np.arange(f)  # (H', f) padded row indices
    cols = np.arange(0, image.shape[1], f)[:, None] + np.arange(f)  # (W', f)
    return padded[rows].mean(axis=1)[:, cols].mean(axis=2)  # (H', W')


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 255.0,
    window: int = 11,
    sigma: float = 1.5,
    downsample: bool = True,
) -> float:
    """Mean structural similarity of two (H, W) or (H, W, C) images (channels averaged).

    ``downsample=False`` skips ``ssim.m``'s automatic downsampling of images over ~384 pixels.
    """
    a, b = _pair(a, b)
    if a.shape[0] < window or a.shape[1] < window:
        raise ValueError(f"SSIM needs images of at least {window}×{window} pixels, got {a.shape[:2]}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    f = downsample_factor(a.shape[0], a.shape[1]) if downsample else 1
    if f > 1:
        a = np.stack([_downsample(a[..., c], f) for c in range(a.shape[2])], axis=-1)
        b = np.stack([_downsample(b[..., c], f) for c in range(b.shape[2])], axis=-1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = _gaussian_window(window, sigma)
    values = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
        var_x = _filter_valid(x * x, g) - mu_x**2
        var_y = _filter_valid(y * y, g) - mu_y**2
        cov = _filter_valid(x * y, g) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
            (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        )
        values.append(float(ssim_map.mean()))
    return float(np.mean(values))


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


class Reconstruction(Metric):
    """PSNR / SSIM of the paired frames (:attr:`~emo.eval.metrics.Video.paired_frames`), averaged."""

    entries = (Entry("psnr", "PSNR (dB)", "higher"), Entry("ssim", "SSIM", "higher"))

    def __init__(self, config, timed):
        super().__init__(config, timed)
        self.psnr_values, self.ssim_values = [], []  # per paired frame

    def update(self, video: Video, row: dict) -> None:
        pairs = video.paired_frames
        p = [self.timed("psnr", psnr, gen, ref) for gen, ref in pairs]
        try:
            s = [self.timed("ssim", ssim, gen, ref) for gen, ref in pairs]
        except ValueError as exc:  # frames under SSIM's 11×11 window
            raise EmoError(f"{video.pair.reference}: {exc}; evaluate videos of a usable size") from None
        row["psnr"], row["ssim"] = float(np.mean(p)), float(np.mean(s))
        self.psnr_values += p
        self.ssim_values += s

    def compute(self) -> list[tuple[float | None, str]]:
        return [
            (mean(self.psnr_values), "per frame, averaged"),
            (mean(self.ssim_values), "per frame, averaged"),
        ]
