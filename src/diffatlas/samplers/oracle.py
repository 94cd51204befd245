"""Distances between two sample sets, for checking samplers against data with a known law.

- sliced Wasserstein SW_p (Rabin et al. 2011; Bonneel et al. 2015): the W_p distance of 1-D
  projections on random unit directions, averaged as (mean_theta W_p^p)^(1/p); in 1-D, W_p between
  equal-size sets is the L_p distance of the sorted values.
- MMD with an RBF kernel (Gretton et al. 2012, eq. 5, the biased V-statistic, which is >= 0):
  MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y), k(a, b) = exp(-|a - b|^2 / (2 h^2)).

Both are computed in float64 and fully vectorized; `noise_floor` gives the value two independent
draws of the true law reach at the same size, below which no sampler can be told apart.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import UserError


def _flat64(x: Tensor) -> Tensor:
    return x.detach().flatten(1).to(torch.float64)


def random_directions(dim: int, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """(n, dim) unit vectors, uniform on the sphere."""
    v = torch.randn(n, dim, generator=generator, dtype=torch.float64, device=device)
    return v / v.norm(dim=1, keepdim=True)


def sliced_wasserstein(x: Tensor, y: Tensor, p: int = 2, projections: int = 256,
                       generator: torch.Generator | None = None, directions: Tensor | None = None) -> float:
    """SW_p between x (N, ...) and y (M, ...): (mean over directions of W_p^p of the projections)^(1/p).

    Unequal sizes are compared through min(N, M) quantiles (midpoint levels). Pass the same `directions`
    (P, D) or a generator with the same seed to compare several sets on the same projections.
    """
    a, b = _flat64(x), _flat64(y)
    if a.shape[1] != b.shape[1]:
        raise UserError(f"sample sets of different dimension: {a.shape[1]} and {b.shape[1]}")
    if directions is None:
        directions = random_directions(a.shape[1], projections, generator, a.device)
    pa, pb = torch.sort(a @ directions.T, dim=0)[0], torch.sort(b @ directions.T, dim=0)[0]   # (N, P), (M, P)
    m = min(len(pa), len(pb))
    if len(pa) != m or len(pb) != m:
        q = (torch.arange(m, dtype=torch.float64, device=a.device) + 0.5) / m
        pa = torch.quantile(pa, q, dim=0)
        pb = torch.quantile(pb, q, dim=0)
    wpp = (pa - pb).abs().pow(p).mean(0)                                                   # W_p^p per direction
    return float(wpp.mean() ** (1.0 / p))


def median_bandwidth(x: Tensor, max_points: int = 2000) -> float:
    """The median heuristic: median pairwise Euclidean distance among (up to) the first max_points rows."""
    a = _flat64(x)[:max_points]
    d = torch.cdist(a, a)
    iu = torch.triu_indices(len(a), len(a), 1)
    return float(d[iu[0], iu[1]].median())


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """sqrt of the biased MMD^2 with k(a, b) = exp(-|a-b|^2 / (2 h^2)); h = median heuristic on y if None.

    x: (N, ...), y: (M, ...). Memory O(N^2 + M^2 + NM).
    """
    a, b = _flat64(x), _flat64(y)
    h = median_bandwidth(b) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise UserError(f"MMD bandwidth must be > 0, got {h}")
    g = -0.5 / h**2

    def kmean(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(g * torch.cdist(u, v).pow(2)).mean()

    mmd2 = kmean(a, a) + kmean(b, b) - 2 * kmean(a, b)
    return math.sqrt(max(0.0, float(mmd2)))


def noise_floor(draw: Callable[[int, torch.Generator], Tensor], n: int, distance: Callable[[Tensor, Tensor], float],
                seed: int = 12345) -> float:
    """distance(A, B) between two independent true sets of size n: draw(n, generator) -> (n, ...)."""
    g = torch.Generator().manual_seed(seed)
    return distance(draw(n, g), draw(n, g))
