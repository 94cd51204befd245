"""Toy datasets with known structure: Gaussian(-mixture) data with an exact denoiser, and 2-D point sets.

The mixtures themselves and their exact denoiser live in data.mixture (re-exported here, where
users import them from: `from diffatlas.data.toy import ExactDenoiser, standard_mixture`).

The 2-D sets (moons, swiss roll, checkerboard) have samplers only. They are standardized with
fixed constants (the exact mean and standard deviation of the noiseless shape), so the
distribution does not depend on n or the seed.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor

from ..errors import UserError
from .base import ImageDataset
from .mixture import ExactDenoiser, GaussianMixture, gaussian, standard_mixture

__all__ = [
    "ExactDenoiser", "GaussianMixture", "gaussian", "standard_mixture", "TOY2D_KINDS", "sample_toy2d",
    "load_toy2d", "load_gaussian",
]


# ---- 2-D point sets --------------------------------------------------------------------------------
TOY2D_KINDS = ("gaussian-mixture", "moons", "swiss-roll", "checkerboard")
_DEFAULT_NOISE = {"moons": 0.05, "swiss-roll": 0.05, "checkerboard": 0.0}


def _moons_raw(n: int, g: torch.Generator) -> Tensor:
    # two interleaved half circles (as in scikit-learn make_moons), component chosen i.i.d.
    theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    inner = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    x = torch.where(inner, 1 - torch.cos(theta), torch.cos(theta))
    y = torch.where(inner, 0.5 - torch.sin(theta), torch.sin(theta))
    return torch.stack([x, y], 1)


def _moons_moments() -> tuple[Tensor, Tensor]:
    # theta ~ U[0, pi]: E cos = 0, E cos^2 = 1/2, E sin = 2/pi, E sin^2 = 1/2; components equally likely
    mean = torch.tensor([0.5, 0.25], dtype=torch.float64)
    var_x = 0.5 + 0.25  # within (1/2) + between ((1-0)/2)^2
    var_y = (0.5 - 4 / math.pi**2) + ((2 / math.pi - (0.5 - 2 / math.pi)) / 2) ** 2
    return mean, torch.tensor([var_x, var_y], dtype=torch.float64).sqrt()


def _swiss_roll_raw(n: int, g: torch.Generator) -> Tensor:
    # 2-D swiss roll: t ~ U[1.5 pi, 4.5 pi], (t cos t, t sin t) (as in scikit-learn make_swiss_roll)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)


@cache
def _swiss_roll_moments() -> tuple[Tensor, Tensor]:
    # exact moments by composite Simpson quadrature over t ~ U[1.5 pi, 4.5 pi] (smooth integrand)
    m = 200_000
    t = torch.linspace(1.5 * math.pi, 4.5 * math.pi, m + 1, dtype=torch.float64)
    w = torch.ones(m + 1, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    w = w / w.sum()
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
    mean = w @ pts
    std = (w @ (pts - mean) ** 2).sqrt()
    return mean, std


def _checkerboard_raw(n: int, g: torch.Generator) -> Tensor:
    # 4x4 board on [-2, 2]^2 with 8 filled cells: column floor(x1); rows alternate with the column parity
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    row = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(0, 2, (n,), generator=g)
    x2 = row + torch.remainder(torch.floor(x1), 2)
    return torch.stack([x1, x2], 1)


def _checkerboard_moments() -> tuple[Tensor, Tensor]:
    # both marginals are U[-2, 2]: mean 0, variance 16/12
    return torch.zeros(2, dtype=torch.float64), torch.full((2,), math.sqrt(4 / 3), dtype=torch.float64)


_SHAPES = {
    "moons": (_moons_raw, _moons_moments),
    "swiss-roll": (_swiss_roll_raw, _swiss_roll_moments),
    "checkerboard": (_checkerboard_raw, _checkerboard_moments),
}


def sample_toy2d(
    kind: str, n: int, generator: torch.Generator | None = None, noise: float | None = None
) -> Tensor:
    """n points (n, 2) float64 of a 2-D toy set, standardized to mean 0 and unit std per coordinate.

    kind: gaussian-mixture (`standard_mixture(2)`, not re-standardized: its exact denoiser stays
    valid), moons, swiss-roll, checkerboard. noise: std of Gaussian noise added after
    standardization (default 0.05 for moons and swiss-roll, 0 for checkerboard).
    """
    if kind not in TOY2D_KINDS:
        raise UserError(f"unknown toy2d kind {kind!r}; choose one of: {', '.join(TOY2D_KINDS)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if kind == "gaussian-mixture":
        if noise is not None:
            raise UserError(
                "toy2d kind 'gaussian-mixture' takes no noise option (set the mixture stds instead)"
            )
        return standard_mixture(2).sample(n, g)
    raw, moments = _SHAPES[kind]
    mean, std = moments()
    x = (raw(int(n), g) - mean) / std
    eps = _DEFAULT_NOISE[kind] if noise is None else float(noise)
    if eps < 0:
        raise UserError(f"noise must be >= 0, got {noise}")
    if eps > 0:
        x = x + eps * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x


def _split_generator(seed: int, split: str) -> torch.Generator:
    # train and test are independent draws: seeds 2*seed and 2*seed + 1
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r} for synthetic data; choose one of: train, test")
    return torch.Generator().manual_seed(2 * int(seed) + (split == "test"))


def _no_files(name: str, root: str | None, resolution: int | None) -> None:
    if root is not None:
        raise UserError(f"{name} is synthetic: it takes no root")
    if resolution is not None:
        raise UserError(f"{name} is made of points, not images: it takes no resolution")


def load_toy2d(
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    kind: str = "gaussian-mixture",
    n: int = 10000,
    seed: int = 0,
    noise: float | None = None,
) -> ImageDataset:
    """n 2-D points of a toy set (see `sample_toy2d`), shape (2,); unlabelled.

    The train split is drawn with seed 2*seed, the test split with 2*seed + 1. For
    kind='gaussian-mixture', `dataset.mixture` is the exact distribution (for `ExactDenoiser`).
    """
    _no_files("toy2d", root, resolution)
    if int(n) < 1:
        raise UserError(f"n must be >= 1, got {n}")
    pts = sample_toy2d(kind, int(n), _split_generator(seed, split), noise)
    mixture = standard_mixture(2) if kind == "gaussian-mixture" else None
    return ImageDataset(pts, None, name="toy2d", split=split, mixture=mixture)


def load_gaussian(
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    dim: int = 2,
    n: int = 10000,
    seed: int = 0,
    mean: float = 0.0,
    std: float | list[float] = 1.0,
) -> ImageDataset:
    """n draws of N(mean, diag(std^2)) in `dim` dimensions, shape (dim,); `dataset.mixture` is the law.

    std may be a list of `dim` values (diagonal). Split seeds as in `load_toy2d`.
    """
    _no_files("gaussian", root, resolution)
    if int(n) < 1:
        raise UserError(f"n must be >= 1, got {n}")
    try:
        law = gaussian(int(dim), mean, torch.as_tensor(std, dtype=torch.float64))
    except (RuntimeError, ValueError) as e:
        raise UserError(
            f"gaussian: std must be a positive number or a list of {dim} positive numbers ({e})"
        ) from None
    pts = law.sample(int(n), _split_generator(seed, split))
    return ImageDataset(pts, None, name="gaussian", split=split, mixture=law)
