"""One denoising loss and its weightings.

Every weighting is a lambda(t) on the x0-space squared error E ||D(x_t, t) - x0||^2, so that
losses stated on eps, score or v map onto one form:

    simple  : lambda = 1 / sigma_hat^2 = SNR   <=> ||eps_hat - eps||^2        (Ho et al. 2020, eq. 14)
    sigma2  : lambda(sigma) = sigma^2 on the score error <=> the same as simple   (Song & Ermon 2019, eq. 6)
    likelihood : lambda = g^2 on the score error of x_t: g^2 alpha^2 / sigma^4     (Song et al. 2021b, eq. 7)
    edm     : lambda = (s^2 + sd^2) / (s sd)^2                                 (Karras et al. 2022, Table 1)
    min-snr : lambda = min(SNR, gamma), gamma = 5                              (Hang et al. 2023)
    x0      : lambda = 1
The loss is evaluated as lambda c_out^2 ||F - (x0 - c_skip x_hat) / c_out||^2 (Karras et al. 2022,
eq. 8), which equals the x0 form without its cancellation at small noise.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .denoiser import Denoiser
from .dynamics.base import Dynamics, append_dims
from .registry import Registry

Weighting = Callable[[Dynamics, Tensor, float], Tensor]
WEIGHTINGS: Registry = Registry("loss weighting")


def _simple(dyn: Dynamics, t: Tensor, sd: float) -> Tensor:
    return dyn.sigma_hat(t) ** -2


WEIGHTINGS.register("simple", "||eps_hat - eps||^2, the DDPM simple loss (Ho et al. 2020)")(_simple)
WEIGHTINGS.register("sigma2", "NCSN's lambda(sigma) = sigma^2 on the score error; equal to simple (Song & Ermon 2019)")(_simple)


@WEIGHTINGS.register("likelihood", "lambda = g(t)^2 on the score error: maximum-likelihood weighting (Song et al. 2021)")
def _likelihood(dyn: Dynamics, t: Tensor, sd: float) -> Tensor:
    return dyn.g2(t) * dyn.alpha(t) ** 2 / dyn.sigma(t) ** 4


@WEIGHTINGS.register("edm", "lambda = (s^2 + sd^2) / (s sd)^2 (Karras et al. 2022)")
def _edm(dyn: Dynamics, t: Tensor, sd: float) -> Tensor:
    s = dyn.sigma_hat(t)
    return (s**2 + sd**2) / (s * sd) ** 2


@WEIGHTINGS.register("min-snr", "lambda = min(SNR, 5) (Hang et al. 2023)")
def _min_snr(dyn: Dynamics, t: Tensor, sd: float, gamma: float = 5.0) -> Tensor:
    return (dyn.sigma_hat(t) ** -2).clamp(max=gamma)


@WEIGHTINGS.register("x0", "lambda = 1: plain squared error on x0")
def _x0(dyn: Dynamics, t: Tensor, sd: float) -> Tensor:
    return torch.ones_like(t)


def denoising_loss(denoiser: Denoiser, x0: Tensor, *, weighting: str = "simple", cond: Tensor | None = None,
                   generator: torch.Generator | None = None, t: Tensor | None = None,
                   eps: Tensor | None = None) -> Tensor:
    """Per-sample weighted denoising loss, shape (N,), mean over data dimensions.

    t defaults to the dynamics' training distribution, eps to standard normal noise, both drawn
    from `generator` (which must live on x0's device).
    """
    dyn = denoiser.dynamics
    n = x0.shape[0]
    if t is None:
        t = dyn.sample_training_t(n, generator=generator, device=x0.device, dtype=torch.float32)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = dyn.noise(x0, t.to(x0.dtype), eps)
    out, x_hat, c_skip, c_out = denoiser.network_output(x_t, t, cond)
    target = (x0.to(out.dtype) - c_skip * x_hat) / c_out
    lam = WEIGHTINGS.get(weighting)(dyn, t.to(out.dtype), denoiser.sigma_data)
    per_dim = append_dims(lam, x0.ndim) * c_out**2 * (out - target) ** 2
    return per_dim.flatten(1).mean(1)
