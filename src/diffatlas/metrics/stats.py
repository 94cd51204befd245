"""Sample statistics and distances between feature distributions, in float64.

Everything here works on feature arrays, never on images: an extractor (``extractors.py``)
turns images into features ``(N, D)`` and logits ``(N, K)``; these functions turn those into numbers.
This module holds the Inception score and the bootstrap, and re-exports the statistics of its siblings,
so that every name below can be imported from here:

* :class:`StreamingMoments`  -- mean and unbiased covariance accumulated batch by batch (``moments.py``).
* :func:`frechet_distance`   -- ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})  (Heusel et al. 2017, eq. 6;
  Dowson & Landau 1982).  :class:`FrechetReference` caches the reference side (``frechet.py``).
* :func:`inception_score`    -- exp(E_x KL(p(y|x) || p(y)))  (Salimans et al. 2016, sec. 4).
* :func:`kid`                -- unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018, eq. 3 & 4;
  ``mmd.py``).
* :func:`precision_recall`   -- k-NN manifold precision and recall (Kynkaanniemi et al. 2019, eq. 1-3;
  ``knn_manifold.py``).
* :func:`fid_infinity`       -- FID extrapolated to infinitely many samples (Chong & Forsyth 2020, sec. 3.2;
  ``frechet.py``).
* :func:`bootstrap_ci`       -- percentile bootstrap interval of any of the above (Efron & Tibshirani 1993).

Memory: statistics are O(D^2); pairwise computations (KID, precision/recall) run in chunks so that
no (N, N) matrix is ever held for large N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .frechet import (
    ExtrapolationResult,
    FrechetReference,
    extrapolate_to_infinity,
    fid_infinity,
    frechet_distance,
)
from .knn_manifold import knn_radii, manifold_membership, precision_recall, precision_recall_indicators
from .mmd import kid, polynomial_mmd2_unbiased
from .moments import StreamingMoments, as_float64, mean_cov, seeded_generator

__all__ = [
    "BootstrapResult", "ExtrapolationResult", "FrechetReference", "StreamingMoments", "as_float64", "bootstrap_ci",
    "extrapolate_to_infinity", "fid_infinity", "frechet_distance", "inception_score", "kid", "knn_radii",
    "manifold_membership", "mean_cov", "polynomial_mmd2_unbiased", "precision_recall",
    "precision_recall_indicators", "seeded_generator",
]


# ------------------------------------------------------------------------------------------------
# Inception score
# ------------------------------------------------------------------------------------------------
def inception_score(
    logits: Tensor | np.ndarray, splits: int = 10, from_logits: bool = True
) -> tuple[float, float]:
    """Inception score IS = exp(E_x KL(p(y|x) || p(y)))  (Salimans et al. 2016, sec. 4).

    The N samples are cut into `splits` consecutive groups; p(y) is the mean of p(y|x) within a
    group, and the score is reported as mean and (population) standard deviation over groups, as in
    the reference implementation.

    Args:
        logits: (N, K) class logits, or probabilities when from_logits=False.
        splits: number of groups, 1 <= splits <= N.
    Returns:
        (mean, std) over splits; 1 <= IS <= K.
    """
    a = as_float64(logits, "logits")
    n = a.shape[0]
    if not 1 <= splits <= n:
        raise UserError(f"inception score splits must be between 1 and the sample count {n}, got {splits}")
    if from_logits:
        # log p(y|x) = log_softmax(logits), computed stably in float64
        logp = a - a.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    else:
        if np.any(a < 0) or not np.allclose(a.sum(axis=1), 1.0, atol=1e-4):
            raise UserError("probabilities must be non-negative and sum to 1 over classes")
        logp = np.log(np.clip(a, 1e-300, None))
    p = np.exp(logp)
    scores = []
    for idx in np.array_split(np.arange(n), splits):
        py = p[idx].mean(axis=0)  # marginal p(y) of the group
        # KL(p(y|x) || p(y)) = sum_y p(y|x) (log p(y|x) - log p(y))
        kl = (p[idx] * (logp[idx] - np.log(np.clip(py, 1e-300, None)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


# ------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------
@dataclass
class BootstrapResult:
    """A statistic with its percentile bootstrap interval.

    value: fn on the original data; low, high: the alpha/2 and 1 - alpha/2 quantiles of fn over
    n_boot resamples; samples: the bootstrap values themselves."""

    value: float
    low: float
    high: float
    alpha: float
    n_boot: int
    samples: np.ndarray


def bootstrap_ci(
    fn: Callable[..., float],
    *features: Tensor | np.ndarray,
    n_boot: int = 100,
    seed: int = 0,
    alpha: float = 0.05,
    generator: torch.Generator | None = None,
    paired: bool = False,
) -> BootstrapResult:
    """Percentile bootstrap interval of fn(*features) (Efron & Tibshirani 1993, ch. 13).

    Each array in `features` (rows = samples) is resampled with replacement n_boot times, and fn is
    evaluated on every resample.  Arrays are resampled independently (two samples, e.g. fake and real),
    or with the same row indices when paired=True (several views of one sample, e.g. features and logits).

    Args:
        fn: a statistic of one or more arrays, e.g. ``lambda f: ref.distance_features(f)``.
        features: arrays (N_i, ...) passed to fn in order.
    """
    if n_boot < 1:
        raise UserError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    arrays = [f.detach().cpu().numpy() if isinstance(f, Tensor) else np.asarray(f) for f in features]
    g = seeded_generator(generator, seed)
    value = float(fn(*arrays))
    samples = np.empty(n_boot)
    if paired and len({a.shape[0] for a in arrays}) > 1:
        raise UserError("paired bootstrap needs arrays with the same number of rows")
    for b in range(n_boot):
        if paired:
            idx = torch.randint(0, arrays[0].shape[0], (arrays[0].shape[0],), generator=g).numpy()
            resampled = [a[idx] for a in arrays]
        else:
            resampled = [a[torch.randint(0, a.shape[0], (a.shape[0],), generator=g).numpy()] for a in arrays]
        samples[b] = fn(*resampled)
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(value, float(low), float(high), alpha, n_boot, samples)
