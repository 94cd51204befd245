"""The dynamics interface: a forward process x_t = alpha(t) x0 + sigma(t) eps.

A subclass states alpha, sigma and their time derivatives. Everything else a
loss, sampler or metric needs is derived here, once:

    f(t)     = d log alpha / dt                      drift: dx = f x dt + g dw
    g2(t)    = d sigma^2/dt - 2 f sigma^2            squared diffusion (Song et al. 2021, eq. 5 / Karras et al. 2022, eq. 4)
    log_snr  = 2 log(alpha / sigma)
    sigma_hat = sigma / alpha                        noise level in the scaled ("variance-exploding") frame x / alpha

Time runs forward from data (t_min, tiny noise) to prior (t_max). Sampling
grids are decreasing tensors of times that end at t_min; a sampler's last
step is the denoising step from t_min to sigma = 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample tensor of shape (N,) (or a scalar) to broadcast over an ndim-D batch."""
    v = torch.as_tensor(v)
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


# Largest sigma_hat a denoiser resolves: the upper clamp of c_noise, so that the denoiser's clamped alpha
# (denoiser.py) and the network's noise level agree. Training can reach it (rectified flow draws t up to
# 1, where sigma_hat -> inf); sampling does not: grids stop at schedules.GRID_SIGMA_HAT_MAX = 1e4.
DENOISER_SIGMA_HAT_MAX = 1e5


class Dynamics:
    """Base class of every forward process. Subclasses implement alpha, sigma, d_alpha, d_sigma.

    All methods take t as a tensor of any shape and work elementwise; dtype and
    device follow t. Class attributes that describe the process:

    t_min, t_max   the time range sampled by training and by sampling grids
    steps          number of discrete steps for discrete processes (None for SDEs)
    classic_sampler  the sampler the process was published with (sampler "classic" in samplers.plan)
    """

    t_min: float = 1e-3
    t_max: float = 1.0
    steps: int | None = None
    classic_sampler: str = "heun"

    # ---- what a subclass states -------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    # ---- derived once -----------------------------------------------------------------------
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient: the forward SDE is dx = f(t) x dt + g(t) dw."""
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient g(t)^2 = d sigma^2/dt - 2 f sigma^2."""
        s = self.sigma(t)
        return 2 * s * self.d_sigma(t) - 2 * self.f(t) * s**2

    def log_snr(self, t: Tensor) -> Tensor:
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def sigma_hat(self, t: Tensor) -> Tensor:
        """Noise level of x / alpha, the frame in which every process is variance exploding."""
        return self.sigma(t) / self.alpha(t)

    def c_noise(self, t: Tensor) -> Tensor:
        """The noise conditioning value the network sees: log(sigma_hat) / 4 (Karras et al. 2022, Table 1)."""
        return 0.25 * torch.log(self.sigma_hat(t).clamp(1e-5, DENOISER_SIGMA_HAT_MAX))

    def noise(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps; t has shape (N,) for x0 of shape (N, ...)."""
        return append_dims(self.alpha(t), x0.ndim) * x0 + append_dims(self.sigma(t), x0.ndim) * eps

    def prior_std(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """A draw from the prior N(0, sigma(t_max)^2 I)."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return self.prior_std() * z

    def prior_logp(self, x: Tensor) -> Tensor:
        """Log-density of the prior, summed over all but the first dimension."""
        s = self.prior_std()
        d = x[0].numel()
        return -0.5 * x.flatten(1).pow(2).sum(1) / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def sample_training_t(self, n: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """Training noise levels: uniform in [t_min, t_max] by default; discrete processes pick a step;
        a process may state its own density (EDM: log-normal sigma, not clipped to the range)."""
        if self.steps is not None:
            i = torch.randint(0, self.steps, (n,), generator=generator, device=device)
            return self.discrete_times(device=device, dtype=dtype)[i]
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        return self.t_min + (self.t_max - self.t_min) * u

    def discrete_times(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Tensor:
        """The times of a discrete process's steps, increasing (t_1 = t_min, ..., t_T = t_max)."""
        if self.steps is None:
            raise ValueError(f"{type(self).__name__} is a continuous process: it has no discrete steps")
        return torch.linspace(self.t_min, self.t_max, self.steps, device=device, dtype=dtype)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Invert log_snr (decreasing in t) by bisection on [t_min, t_max]; subclasses may override."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too little noise: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def t_from_sigma_hat(self, s: Tensor) -> Tensor:
        s = torch.as_tensor(s, dtype=torch.float64)
        return self.t_from_log_snr(-2 * torch.log(s))

    def describe(self) -> dict:
        """The resolved constants of this process, for configs and reports."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
