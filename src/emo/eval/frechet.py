"""Fréchet distance between two feature sets, each summarised by a Gaussian (mean, covariance).

    d² = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½)

Heusel et al. 2017 (FID); the same formula gives FVD (I3D features) and E-FID (3DMM expression
coefficients, EMO paper Sec. 4.3). Computed like pytorch-fid's ``calculate_frechet_distance``: scipy's
``sqrtm`` in float64, an ε·I offset if the product is singular, and the imaginary round-off dropped.
Non-finite inputs (NaN / inf features) give NaN, which ``emo evaluate`` reports as unavailable.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of a feature set."""

    mean: np.ndarray  # (D,)
    cov: np.ndarray  # (D, D), unbiased (N - 1) like np.cov
    count: int  # number of feature vectors it summarises


def fit_gaussian(features: np.ndarray) -> Gaussian:
    """(N, D) features -> Gaussian. N must be at least 2 (a covariance needs two samples)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {features.shape}")
    return Gaussian(features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False)), len(features))


def frechet_distance(a: Gaussian, b: Gaussian, eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians (not its square root, as FID reports it); NaN if either
    holds non-finite values."""
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(a.mean), np.atleast_1d(b.mean)
    s1, s2 = np.atleast_2d(a.cov), np.atleast_2d(b.cov)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}")
    if not all(np.isfinite(x).all() for x in (mu1, mu2, s1, s2)):
        # sqrtm would fail with an internal LinAlgError; NaN says "no value" to the caller instead.
        logger.warning("Fréchet distance: the features hold NaN or inf values; the distance is NaN")
        return float("nan")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # A singular product (fewer samples than dimensions) is expected and handled just below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        # Singular product (fewer samples than dimensions): offset both diagonals, as pytorch-fid does.
        logger.info("Fréchet distance: singular covariance product, adding %g to the diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        # Round-off can leave tiny imaginary parts; large ones mean the inputs are not covariances.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the covariance root")
        covmean = covmean.real
    value = float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    if not np.isfinite(value):
        return float("nan")  # overflowing features; max() below would let NaN through or turn -inf into 0
    return max(value, 0.0)  # round-off can give -1e-12 for identical sets


def feature_frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between two (N, D) feature sets."""
    return frechet_distance(fit_gaussian(x), fit_gaussian(y))
