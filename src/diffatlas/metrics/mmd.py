"""KID: the kernel inception distance, an unbiased MMD^2 with the cubic polynomial kernel
(Binkowski et al. 2018, eq. 3 & 4).

Random subsets bound memory at O(m^2) for a subset size m, whatever the number of samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .moments import as_float64, seeded_generator


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x (m, D) and y (n, D) with k(a, b) = (a.b / D + 1)^3.

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
                  - 2 sum_{i, j} k(x_i, y_j) / (m n)                       (Binkowski et al. 2018, eq. 3-4)
    """
    d = x.shape[1]
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise UserError("KID needs at least 2 samples on each side")
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kid(
    fake: Tensor | np.ndarray,
    real: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, sec. 3 & app. D).

    The unbiased MMD^2 of :func:`polynomial_mmd2_unbiased` is averaged over `subsets` random subsets
    of m = min(subset_size, N_fake, N_real) samples drawn without replacement from each side, which
    bounds memory at O(m^2) whatever N is.

    Args:
        fake, real: features (N_fake, D), (N_real, D).
    Returns:
        (mean, standard error) over subsets; the standard error is std(ddof=1) / sqrt(subsets)
        (0 when subsets == 1).  KID is unbiased, so it can be slightly negative for equal distributions.
    """
    x, y = as_float64(fake, "fake features"), as_float64(real, "real features")
    if x.shape[1] != y.shape[1]:
        raise UserError(f"fake features have dimension {x.shape[1]}, real ones {y.shape[1]}")
    if subsets < 1:
        raise UserError(f"KID subsets must be >= 1, got {subsets}")
    m = min(subset_size, x.shape[0], y.shape[0])
    g = seeded_generator(generator, seed)
    vals = np.empty(subsets)
    for s in range(subsets):
        ix = torch.randperm(x.shape[0], generator=g)[:m].numpy()
        iy = torch.randperm(y.shape[0], generator=g)[:m].numpy()
        vals[s] = polynomial_mmd2_unbiased(x[ix], y[iy])
    stderr = float(vals.std(ddof=1) / np.sqrt(subsets)) if subsets > 1 else 0.0
    return float(vals.mean()), stderr
