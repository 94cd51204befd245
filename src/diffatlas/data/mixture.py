"""Gaussian mixtures with an exact denoiser: the analytic oracle of the package.

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

This module depends on no dataset class, so data.base can name GaussianMixture (a dataset's
`mixture`) and data.toy can build datasets from it without either importing the other's users.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError

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
