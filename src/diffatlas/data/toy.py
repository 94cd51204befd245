"""Toy data with known structure: Gaussian mixtures with an exact denoiser, and 2-D point sets.

For data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) and the forward process x_t = alpha x0 + sigma eps,
everything a sampler needs is known in closed form (Bishop 2006, eqs. 2.113-2.117, per component):

    p_t(x)              = sum_k w_k N(x; alpha mu_k, diag(v_k)),   v_k = alpha^2 s_k^2 + sigma^2
    r_k(x)              = w_k N(x; alpha mu_k, v_k) / p_t(x)        responsibilities
    E[x0 | x_t = x, k]  = mu_k + alpha s_k^2 / v_k * (x - alpha mu_k)
    E[x0 | x_t = x]     = sum_k r_k E[x0 | x, k]                     the ideal denoiser
    grad log p_t(x)     = sum_k r_k (alpha mu_k - x) / v_k           the score

and Tweedie's formula (Efron 2011, eq. 2.8) ties them: alpha E[x0 | x] = x + sigma^2 grad log p_t(x).
`ExactDenoiser` wraps this as the denoiser D(x, t) that samplers see, the analytic oracle
against which every dynamics x sampler pair is tested.

The 2-D sets (moons, swiss roll, checkerboard) have samplers only. They are standardized with
fixed constants (the exact mean and standard deviation of the noiseless shape), so the
distribution does not depend on n or the seed.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from .base import ImageDataset

_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """A mixture of K diagonal Gaussians in D dimensions; parameters kept in float64.

    Args:
        means: (K, D) component means mu_k.
        stds: (K,) isotropic or (K, D) diagonal standard deviations s_k (> 0); a scalar is shared.
        weights: (K,) positive mixture weights (normalized here); None = uniform.
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64, device=means.device)
        if stds.ndim == 0:
            stds = stds.expand(k)
        if stds.ndim == 1:
            if stds.shape != (k,):
                raise ValueError(f"stds must be (K,) = ({k},) or (K, D), got shape {tuple(stds.shape)}")
            stds = stds[:, None].expand(k, d)
        if stds.shape != (k, d):
            raise ValueError(f"stds must be (K,) or (K, D) = ({k}, {d}), got shape {tuple(stds.shape)}")
        if weights is None:
            weights = torch.ones(k, dtype=torch.float64, device=means.device)
        weights = torch.as_tensor(weights, dtype=torch.float64, device=means.device)
        if weights.shape != (k,):
            raise ValueError(f"weights must be (K,) = ({k},), got shape {tuple(weights.shape)}")
        if not bool((stds > 0).all()) or not bool((weights > 0).all()):
            raise ValueError("stds and weights of a Gaussian mixture must be positive")
        self.means = means
        self.stds = stds.contiguous()
        self.weights = weights / weights.sum()

    # ---- facts -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def mean(self) -> Tensor:
        """(D,) mean of the mixture: sum_k w_k mu_k."""
        return self.weights @ self.means

    @property
    def covariance(self) -> Tensor:
        """(D, D) covariance: sum_k w_k (diag(s_k^2) + mu_k mu_k^T) - m m^T."""
        m = self.mean
        second = torch.diag(self.weights @ self.stds**2) + (self.means.T * self.weights) @ self.means
        return second - torch.outer(m, m)

    def to(self, device: torch.device | str) -> GaussianMixture:
        return GaussianMixture(self.means.to(device), self.stds.to(device), self.weights.to(device))

    def noised(self, alpha: float, sigma: float) -> GaussianMixture:
        """The law of x_t = alpha x0 + sigma eps: means alpha mu_k, stds sqrt(alpha^2 s_k^2 + sigma^2)."""
        return GaussianMixture(
            alpha * self.means, torch.sqrt(alpha**2 * self.stds**2 + sigma**2), self.weights
        )

    # ---- sampling ----------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """n draws -> (n, D); components and noise from `generator` (on the parameters' device)."""
        dev = self.means.device
        comp = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        eps = torch.randn(int(n), self.dim, generator=generator, dtype=torch.float64, device=dev)
        x = self.means[comp] + self.stds[comp] * eps
        return x.to(dtype=dtype, device=device if device is not None else dev)

    # ---- the noised marginal and its posterior -------------------------------------------------
    def _terms(
        self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """float64 pieces for x (*B, D): a (*B,1,1), v (*B,K,D), x - a mu (*B,K,D), log w_k N_k (*B,K)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"points must be (..., {self.dim}), got shape {tuple(x.shape)}")
        x64 = x.to(torch.float64)
        batch = x64.shape[:-1]
        dev = x64.device

        def per_sample(v: Tensor | float) -> Tensor:
            v = torch.as_tensor(v, dtype=torch.float64, device=dev)
            return torch.broadcast_to(v, batch)[..., None, None]

        a, s = per_sample(alpha), per_sample(sigma)
        means, s2 = self.means.to(dev), self.stds.to(dev) ** 2
        var = a**2 * s2 + s**2  # v_k = alpha^2 s_k^2 + sigma^2
        diff = x64[..., None, :] - a * means  # x - alpha mu_k
        log_n = -0.5 * (diff**2 / var + torch.log(var) + _LOG_2PI).sum(-1)
        log_wn = torch.log(self.weights.to(dev)) + log_n  # log w_k N(x; alpha mu_k, v_k)
        return a, var, diff, log_wn

    def log_prob(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_t(x) for x (*B, D) -> (*B,), with p_t the law of alpha x0 + sigma eps (default: the data)."""
        _, _, _, log_wn = self._terms(x, alpha, sigma)
        return torch.logsumexp(log_wn, dim=-1).to(x.dtype)

    def denoise(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """The exact posterior mean E[x0 | x_t = x] for x (*B, D); alpha, sigma scalars or (*B,) -> (*B, D).

        Computed in float64 with responsibilities from a softmax (logsumexp-stable); returned in x's dtype.
        """
        a, var, diff, log_wn = self._terms(x, alpha, sigma)
        resp = torch.softmax(log_wn, dim=-1)[..., None]  # r_k (*B, K, 1)
        post = self.means.to(x.device) + a * self.stds.to(x.device) ** 2 / var * diff  # E[x0 | x, k]
        return (resp * post).sum(-2).to(x.dtype)

    def score(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """grad_x log p_t(x) for x (*B, D) -> (*B, D): sum_k r_k (alpha mu_k - x) / v_k."""
        _, var, diff, log_wn = self._terms(x, alpha, sigma)
        resp = torch.softmax(log_wn, dim=-1)[..., None]
        return (resp * (-diff / var)).sum(-2).to(x.dtype)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"


class ExactDenoiser:
    """The ideal denoiser of Gaussian-mixture data under a dynamics: D(x, t) = E[x0 | x_t = x].

    `__call__(x, t, cond=None)`: x (N, D) or (N, *event) with prod(event) = D; t scalar or (N,).
    Has `.dynamics`, like the network denoiser, so samplers use it unchanged.
    """

    def __init__(self, mixture: GaussianMixture, dynamics: Any) -> None:
        self.mixture = mixture
        self.dynamics = dynamics

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        alpha, sigma = self.dynamics.alpha(t), self.dynamics.sigma(t)
        d = self.mixture.dim
        if x.ndim > 2 and x.shape[-1] != d and x[0].numel() == d:  # image-shaped event: flatten and back
            return self.mixture.denoise(x.flatten(1), alpha, sigma).reshape(x.shape)
        return self.mixture.denoise(x, alpha, sigma)


# ---- presets ---------------------------------------------------------------------------------------
def standard_mixture(
    dim: int = 2, num_modes: int = 8, radius: float = 1.3, std: float = 0.2
) -> GaussianMixture:
    """`num_modes` equal-weight modes spaced on a circle of `radius` in the first two coordinates.

    Per-coordinate variance in the plane is radius^2 / 2 + std^2 (about 0.88 by default), i.e. roughly
    unit scale. Other coordinates (dim > 2) have mean 0 and std `std`. dim = 1: two modes at +-radius.
    """
    if dim < 1:
        raise UserError(f"dim must be >= 1, got {dim}")
    if dim == 1:
        means = torch.tensor([[-radius], [radius]], dtype=torch.float64)
    else:
        theta = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
        means = torch.zeros(num_modes, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * torch.cos(theta), radius * torch.sin(theta)
    return GaussianMixture(means, std)


def gaussian(dim: int, mean: float | Tensor = 0.0, std: float | Tensor = 1.0) -> GaussianMixture:
    """A single Gaussian N(mean, diag(std^2)) in `dim` dimensions (K = 1); std scalar or (dim,)."""
    if dim < 1:
        raise UserError(f"dim must be >= 1, got {dim}")
    mu = torch.broadcast_to(torch.as_tensor(mean, dtype=torch.float64), (dim,)).reshape(1, dim)
    s = torch.broadcast_to(torch.as_tensor(std, dtype=torch.float64), (dim,)).reshape(1, dim)
    return GaussianMixture(mu.clone(), s.clone())


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
