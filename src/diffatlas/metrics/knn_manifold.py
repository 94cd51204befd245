"""Improved precision and recall: k-NN manifolds of real and fake features (Kynkaanniemi et al. 2019, eq. 1-3).

Pairwise distances are computed in row blocks of at most ``_BLOCK_ELEMENTS`` entries, so that no (N, N)
matrix is ever held for large N.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .moments import as_float64

# Elements of one pairwise-distance block (rows x cols); 2^24 float64 = 128 MiB.
_BLOCK_ELEMENTS = 1 << 24


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (rows of a) x (rows of b), via |a|^2 + |b|^2 - 2 a.b, clipped at 0."""
    d = (a * a).sum(1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def _chunk_rows(n_cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_cols))


def knn_radii(features: Tensor | np.ndarray, k: int = 3, device: str | torch.device = "cpu") -> Tensor:
    """Squared distance from each sample to its k-th nearest other sample, shape (N,), float64.

    Computed in row chunks: memory O(chunk * N), never O(N^2) at once."""
    x = torch.from_numpy(as_float64(features)).to(device)
    n = x.shape[0]
    if not 1 <= k < n:
        raise UserError(f"k-NN radius needs 1 <= k < number of samples ({n}), got k={k}")
    x_sq = (x * x).sum(1)
    out = torch.empty(n, dtype=torch.float64, device=device)
    step = _chunk_rows(n)
    for i in range(0, n, step):
        d = _sq_dists(x[i : i + step], x, x_sq)
        # the k+1 smallest include the sample itself at distance 0
        out[i : i + step] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out.cpu()


def manifold_membership(
    queries: Tensor, support: Tensor, radii_sq: Tensor, device: str | torch.device = "cpu"
) -> np.ndarray:
    """For each query point, whether it lies in at least one ball B(support_j, radius_j), shape (N_q,) bool.

    f(q) = 1 iff ||q - s_j|| <= NND_k(s_j) for some j   (Kynkaanniemi et al. 2019, eq. 1)."""
    q = queries.to(device)
    s = support.to(device)
    r = radii_sq.to(device)
    s_sq = (s * s).sum(1)
    out = np.empty(q.shape[0], dtype=bool)
    step = _chunk_rows(s.shape[0])
    for i in range(0, q.shape[0], step):
        d = _sq_dists(q[i : i + step], s, s_sq)
        # relative slack absorbs the rounding of the |a|^2 + |b|^2 - 2ab expansion for coincident points
        out[i : i + step] = (d <= r[None, :] * (1 + 1e-9) + 1e-12).any(dim=1).cpu().numpy()
    return out


def precision_recall_indicators(
    fake: Tensor | np.ndarray, real: Tensor | np.ndarray, k: int = 3, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample indicators behind :func:`precision_recall`: (fake in real manifold (N_fake,),
    real in fake manifold (N_real,)); precision and recall are their means (Kynkaanniemi et al. 2019, eq. 2-3)."""
    x = torch.from_numpy(as_float64(fake, "fake features"))
    y = torch.from_numpy(as_float64(real, "real features"))
    if x.shape[1] != y.shape[1]:
        raise UserError(f"fake features have dimension {x.shape[1]}, real ones {y.shape[1]}")
    in_real = manifold_membership(x, y, knn_radii(y, k, device), device)
    in_fake = manifold_membership(y, x, knn_radii(x, k, device), device)
    return in_real, in_fake


def precision_recall(
    fake: Tensor | np.ndarray, real: Tensor | np.ndarray, k: int = 3, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """Improved precision and recall with k-NN manifolds (Kynkaanniemi et al. 2019, sec. 2, eq. 1-3).

    The real manifold is the union of balls around each real feature with radius the distance to its
    k-th nearest real neighbour; precision = fraction of fake samples inside it.  Recall swaps the roles.

    Args:
        fake, real: features (N_fake, D), (N_real, D).
        k: neighbourhood size (the paper uses k = 3).
    Returns:
        (precision, recall), each in [0, 1].
    """
    in_real, in_fake = precision_recall_indicators(fake, real, k, device)
    return float(in_real.mean()), float(in_fake.mean())
