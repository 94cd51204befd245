"""When does quality stop improving? Plateau detection on metric-vs-kimg curves.

The plateau of a curve is the median of its last k points (robust to one noisy evaluation).
The convergence point is the first kimg from which the curve stays within a relative
tolerance of the plateau: |m(kimg_j) - plateau| <= tol * |plateau| for every later point j.
This is the "stable quality" point of the paper's second claim (arXiv 2402.13369, Sec. 5:
configurations reach a stable FID at a similar point in training). Across seeds, the mean
convergence point gets a percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .statistics import bootstrap_ci


@dataclass(frozen=True)
class Convergence:
    """kimg: first kimg within the band for good (None if even the last point is outside it);
    plateau: the plateau value; band: the half-width tol * |plateau| (at least abs_tol);
    settled: True if the last k points all lie in the band (the curve really flattened)."""

    kimg: float | None
    plateau: float
    band: float
    settled: bool
    points: int


def _sorted_curve(kimg: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(kimg, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if k.shape != v.shape or k.ndim != 1:
        raise ValueError(f"kimg and values must be 1-D of equal length, got {k.shape} and {v.shape}")
    keep = np.isfinite(k) & np.isfinite(v)
    k, v = k[keep], v[keep]
    order = np.argsort(k, kind="stable")
    return k[order], v[order]


def plateau_value(kimg: Sequence[float], values: Sequence[float], k: int = 3) -> float:
    """Median of the last k points (by kimg) of a curve."""
    _, v = _sorted_curve(kimg, values)
    if len(v) == 0:
        raise ValueError("an empty curve has no plateau")
    return float(np.median(v[-min(k, len(v)):]))


def convergence_point(kimg: Sequence[float], values: Sequence[float], *, rel_tol: float = 0.05, k: int = 3,
                      abs_tol: float = 0.0) -> Convergence:
    """The kimg at which the curve first comes within rel_tol of its plateau and stays there.

    Args:
        kimg: (P,) training progress of each evaluation.
        values: (P,) metric values (any direction: closeness to the plateau is symmetric).
        rel_tol: relative tolerance (0.05 = within 5% of the plateau).
        k: number of final points whose median is the plateau.
        abs_tol: lower bound on the band, for metrics whose plateau is near 0.
    """
    ks, vs = _sorted_curve(kimg, values)
    if len(vs) == 0:
        raise ValueError("an empty curve has no convergence point")
    plateau = float(np.median(vs[-min(k, len(vs)):]))
    band = max(rel_tol * abs(plateau), abs_tol)
    inside = np.abs(vs - plateau) <= band + 1e-12 * max(1.0, abs(plateau))
    settled = bool(inside[-min(k, len(vs)):].all())
    # first index from which every later point is inside: scan from the end
    first = None
    for i in range(len(vs) - 1, -1, -1):
        if not inside[i]:
            break
        first = i
    return Convergence(None if first is None else float(ks[first]), plateau, band, settled, len(vs))


def bootstrap_mean_ci(values: Sequence[float], *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the finite ones among `values` (e.g. one per seed; None and nan are left out):
    their mean and the percentile bootstrap interval of it (:func:`statistics.bootstrap_ci`)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return (float("nan"), float("nan"), float("nan"))
    low, high = bootstrap_ci(x, level=level, n_boot=n_boot, seed=seed)
    return (float(x.mean()), low, high)


def convergence_across_seeds(curves: Sequence[tuple[Sequence[float], Sequence[float]]], *, rel_tol: float = 0.05, k: int = 3,
                             level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per-seed convergence points of several curves (one per seed) and the bootstrap interval of their mean.

    Returns {"kimg": [per-seed kimg or None], "mean", "low", "high", "n": seeds with a convergence point}.
    """
    points = [convergence_point(k_, v_, rel_tol=rel_tol, k=k).kimg for k_, v_ in curves]
    found = [p for p in points if p is not None]
    mean, lo, hi = bootstrap_mean_ci(found, level=level, n_boot=n_boot, seed=seed)
    return {"kimg": points, "mean": mean, "low": lo, "high": hi, "n": len(found)}
