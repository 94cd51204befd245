"""Feature arrays in float64 and their first two moments, the common ground of the feature statistics.

* :func:`as_float64`         -- a (N, D) tensor or array as a checked, C-contiguous float64 numpy array.
* :class:`StreamingMoments`  -- mean and unbiased covariance accumulated batch by batch.
* :func:`mean_cov`           -- the same for one array.
* :func:`seeded_generator`   -- the torch generator the resampling statistics (KID subsets, FID-infinity
  subsets, bootstrap) draw from: the caller's, or a fresh one seeded with `seed`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError


def as_float64(a: Tensor | np.ndarray, name: str = "features", ndim: int = 2) -> np.ndarray:
    """Return `a` as a C-contiguous float64 numpy array, checking its number of dimensions."""
    if isinstance(a, Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    if arr.ndim != ndim:
        raise UserError(f"{name} must be a {ndim}-D array, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{name} contain NaN or infinite values; check the generated images")
    return arr


def seeded_generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    """`generator` when given, else a new CPU generator seeded with `seed`."""
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


# ------------------------------------------------------------------------------------------------
# Streaming mean and covariance
# ------------------------------------------------------------------------------------------------
class StreamingMoments:
    """Mean and unbiased covariance of features seen batch by batch, accumulated in float64.

    The state is (n, mean, M2) with M2 = sum_i (x_i - mean)(x_i - mean)^T.  Batches are merged with
    the pairwise update of Chan, Golub & LeVeque (1979):

        delta = mean_b - mean_a,   n = n_a + n_b
        mean  = mean_a + delta * n_b / n
        M2    = M2_a + M2_b + delta delta^T * n_a n_b / n

    This is the same information as (n, sum x, sum x x^T) but does not lose digits to the cancellation
    in  sum x x^T - n mean mean^T  when features have a large mean.

    >>> m = StreamingMoments()
    >>> for batch in batches: m.update(batch)      # batch: (B, D)
    >>> m.mean, m.cov                              # (D,), (D, D)
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, features: Tensor | np.ndarray) -> StreamingMoments:
        """Add a batch of features, shape (B, D)."""
        x = as_float64(features)
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise UserError(f"feature batch has dimension {x.shape[1]}, expected {self.dim}")
        nb = x.shape[0]
        if nb == 0:
            return self
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        m2_b = xc.T @ xc
        self._merge(nb, mean_b, m2_b)
        return self

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """Fold another accumulator (e.g. from another process) into this one."""
        if other.n == 0:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise UserError(f"cannot merge moments of dimension {other.dim} into dimension {self.dim}")
        self.dim = other.dim
        self._merge(other.n, other._mean.copy(), other._m2.copy())  # type: ignore[union-attr]
        return self

    def _merge(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if self.n == 0:
            self.n, self._mean, self._m2 = nb, mean_b, m2_b
            return
        na = self.n
        n = na + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (na * nb / n)
        self.n = n

    @property
    def mean(self) -> np.ndarray:
        """Mean, shape (D,), float64."""
        if self.n == 0:
            raise UserError("no features were accumulated")
        return self._mean.copy()  # type: ignore[union-attr]

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance sum (x - mean)(x - mean)^T / (n - 1), shape (D, D), float64."""
        if self.n < 2:
            raise UserError(f"a covariance needs at least 2 samples, got {self.n}")
        return self._m2 / (self.n - 1)  # type: ignore[operator]


def mean_cov(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    m = StreamingMoments().update(features)
    return m.mean, m.cov
