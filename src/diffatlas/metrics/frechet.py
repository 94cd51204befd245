"""The Frechet distance between Gaussians fitted to features, and its extrapolation to infinitely many samples.

* :func:`frechet_distance`   -- ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})  (Heusel et al. 2017, eq. 6;
  Dowson & Landau 1982).  :class:`FrechetReference` caches the reference side.
* :func:`fid_infinity`       -- FID extrapolated to infinitely many samples (Chong & Forsyth 2020, sec. 3.2).

Statistics are O(D^2) in memory, whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .moments import as_float64, mean_cov, seeded_generator


# ------------------------------------------------------------------------------------------------
# Frechet distance
# ------------------------------------------------------------------------------------------------
def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix via eigh.

    Eigenvalues below the numerical-rank tolerance are set to 0 (see :func:`_clip_eigenvalues`)."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    w = _clip_eigenvalues(w)
    return (v * np.sqrt(w)) @ v.T


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are indistinguishable from 0 in float64.

    eigh computes eigenvalues to within about D * eps * max|w|; below that a value (possibly negative) is
    rounding noise of a zero eigenvalue.  Zeroing it keeps sqrt(w), whose slope is infinite at 0, from
    turning noise of 1e-16 into an error of 1e-8 per null direction (rank-deficient covariances are the rule
    for ReLU features with dead units, and for N <= D)."""
    if w.size == 0:
        return w
    tol = w.size * np.finfo(np.float64).eps * max(float(np.abs(w).max()), 0.0)
    return np.where(w > tol, w, 0.0)


class FrechetReference:
    """The reference side (mu_r, S_r) of a Frechet distance, with S_r^{1/2} computed once.

    Tr (S_r S)^{1/2} is computed as Tr (S_r^{1/2} S S_r^{1/2})^{1/2}: S_r S is similar to the
    symmetric PSD matrix S_r^{1/2} S S_r^{1/2} (multiply by S_r^{1/2} and its pseudo-inverse), so both have
    the same non-negative eigenvalues lambda_i and the trace of the square root is sum_i sqrt(lambda_i).
    One symmetric eigen-decomposition (eigvalsh) per distance, no complex arithmetic; eigenvalues below
    the float64 rounding level (including slightly negative ones) are set to 0.  Repeated distances to the same reference
    (bootstrap, sample-size sweeps) pay for sqrt(S_r) only once.
    """

    def __init__(self, mu: Tensor | np.ndarray, cov: Tensor | np.ndarray) -> None:
        self.mu = as_float64(mu, "reference mean", ndim=1)
        self.cov = as_float64(cov, "reference covariance", ndim=2)
        d = self.mu.shape[0]
        if self.cov.shape != (d, d):
            raise UserError(f"reference covariance has shape {self.cov.shape}, expected ({d}, {d})")
        self.cov_sqrt = _psd_sqrt(self.cov)
        self.trace = float(np.trace(self.cov))

    def distance(self, mu: Tensor | np.ndarray, cov: Tensor | np.ndarray) -> float:
        """Frechet distance between N(mu, cov) and the reference (Heusel et al. 2017, eq. 6)."""
        mu = as_float64(mu, "mean", ndim=1)
        cov = as_float64(cov, "covariance", ndim=2)
        if mu.shape != self.mu.shape or cov.shape != self.cov.shape:
            raise UserError(
                f"feature dimension {mu.shape[0]} does not match the reference's {self.mu.shape[0]};"
                " were both computed with the same extractor?"
            )
        m = self.cov_sqrt @ cov @ self.cov_sqrt
        lam = _clip_eigenvalues(np.linalg.eigvalsh(0.5 * (m + m.T)))
        tr_sqrt = float(np.sqrt(lam).sum())
        diff = mu - self.mu
        d2 = float(diff @ diff) + float(np.trace(cov)) + self.trace - 2.0 * tr_sqrt
        # d^2 >= 0 exactly; a tiny negative value is rounding of two equal distributions.
        return max(d2, 0.0)

    def distance_features(self, features: Tensor | np.ndarray) -> float:
        """Frechet distance between the Gaussian fitted to features (N, D) and the reference."""
        mu, cov = mean_cov(features)
        return self.distance(mu, cov)


def frechet_distance(
    mu1: Tensor | np.ndarray,
    cov1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    cov2: Tensor | np.ndarray,
    method: str = "eigh",
) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mu1, cov1) and N(mu2, cov2), in float64.

        d^2 = ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})      (Heusel et al. 2017, eq. 6)

    Args:
        mu1, mu2: means, shape (D,).
        cov1, cov2: covariances, shape (D, D), symmetric PSD.
        method: "eigh" (default): eigen-decomposition of the symmetric product
            cov2^{1/2} cov1 cov2^{1/2} (see :class:`FrechetReference`);
            "sqrtm": scipy.linalg.sqrtm of the non-symmetric product cov1 cov2, as in the reference
            TensorFlow/pytorch-fid code; a non-finite result is retried with 1e-6 added to both
            diagonals, and the imaginary part (rounding) is dropped.
    Returns:
        the distance squared (what papers call FID when the features are Inception pool3), >= 0.
    """
    if method == "eigh":
        return FrechetReference(mu2, cov2).distance(mu1, cov1)
    if method != "sqrtm":
        raise UserError(f"unknown matrix square root method {method!r}; choose 'eigh' or 'sqrtm'")
    import scipy.linalg

    mu1, mu2 = as_float64(mu1, "mean", 1), as_float64(mu2, "mean", 1)
    cov1, cov2 = as_float64(cov1, "covariance"), as_float64(cov2, "covariance")
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))
    return max(d2, 0.0)


# ------------------------------------------------------------------------------------------------
# FID infinity
# ------------------------------------------------------------------------------------------------
@dataclass
class ExtrapolationResult:
    """A metric extrapolated to N = infinity from values at several N.

    value: the intercept of the least-squares line metric(N) = value + slope / N.
    ns, values: the sample counts and the metric measured at each.
    """

    value: float
    slope: float
    ns: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def extrapolate_to_infinity(ns: Sequence[int], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit values = a + b / n; returns (a, b): the value at 1/n = 0 and the slope."""
    inv = 1.0 / np.asarray(ns, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if len(inv) < 2 or np.ptp(inv) == 0:
        raise UserError("extrapolation needs at least two different sample counts")
    design = np.stack([np.ones_like(inv), inv], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, v, rcond=None)
    return float(a), float(b)


def fid_infinity(
    fake: Tensor | np.ndarray,
    reference: FrechetReference,
    ns: Sequence[int] | None = None,
    num_points: int = 15,
    min_n: int | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> ExtrapolationResult:
    """FID_infinity (Chong & Forsyth 2020, sec. 3.2): FID is biased as FID_N = FID_inf + b / N + o(1/N).

    FID_N is measured on random subsets (without replacement, a fresh permutation per N) of the fake
    features at `num_points` evenly spaced N in [min_n, N_fake] (the paper: 5k..50k, 15 points), a line
    is fitted to FID_N against 1/N, and its intercept at 1/N = 0 is returned.

    Args:
        fake: fake features (N_fake, D).
        reference: the real side, see :class:`FrechetReference`.
        ns: explicit sample counts (overrides num_points/min_n).
    """
    x = as_float64(fake, "fake features")
    n = x.shape[0]
    if ns is None:
        lo = min_n if min_n is not None else max(2, n // 10)
        ns = sorted({int(v) for v in np.linspace(lo, n, num_points)})
    ns = [int(v) for v in ns]
    if any(v < 2 or v > n for v in ns):
        raise UserError(f"FID-infinity sample counts must lie in [2, {n}], got {ns}")
    g = seeded_generator(generator, seed)
    fids = []
    for m in ns:
        idx = torch.randperm(n, generator=g)[:m].numpy()
        fids.append(reference.distance_features(x[idx]))
    a, b = extrapolate_to_infinity(ns, fids)
    return ExtrapolationResult(value=a, slope=b, ns=list(ns), values=fids)
