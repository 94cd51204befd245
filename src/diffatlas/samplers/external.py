"""Bring your own denoiser: wrap models trained elsewhere as denoisers every sampler accepts.

A sampler needs a callable D(x, t, cond) -> x0 estimate with `.dynamics`. Two wrappers:

- `from_x0_fn(fn)`: any D(x, sigma[, cond]) in the EDM frame (alpha = 1, sigma = noise std), as
  Karras et al. (2022) define the denoiser. With another `dynamics` it is re-timed: x_t is mapped to
  the scaled frame x_t / alpha(t) at sigma_hat(t), where the EDM-frame denoiser applies unchanged.
- `from_eps_model(eps_model, alphas_cumprod)`: an epsilon network eps(x_t, step_index[, cond]) of a
  discrete DDPM with its own cumulative-alpha table (e.g. a diffusers UNet2DModel and its scheduler's
  `alphas_cumprod`), as the discrete DDPM of that table.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor

from ..dynamics.base import Dynamics, append_dims
from ..dynamics.discrete import DDPM
from ..dynamics.sde import EDM
from ..errors import UserError


def _takes_cond(fn: Callable) -> bool:
    """Whether fn accepts a third positional argument (cond)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


class X0FnDenoiser:
    """D(x, t, cond) = fn(x / alpha(t), sigma_hat(t)[, cond]) for fn an EDM-frame denoiser.

    x: (N, ...); t: scalar or (N,); fn receives (N, ...) and sigma as (N,) in x's dtype.
    """

    def __init__(self, fn: Callable[..., Tensor], dynamics: Dynamics | None = None) -> None:
        if not callable(fn):
            raise UserError("from_x0_fn needs a callable D(x, sigma[, cond]) -> x0")
        self.fn = fn
        self.dynamics = dynamics if dynamics is not None else EDM()
        self._cond = _takes_cond(fn)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])
        alpha = self.dynamics.alpha(t)
        sigma_hat = self.dynamics.sigma_hat(t)
        x_hat = x / append_dims(alpha, x.ndim)
        if cond is not None:
            if not self._cond:
                raise UserError("a condition was given but the wrapped denoiser takes only (x, sigma)")
            return self.fn(x_hat, sigma_hat, cond)
        return self.fn(x_hat, sigma_hat)


def from_x0_fn(fn: Callable[..., Tensor], dynamics: Dynamics | None = None) -> X0FnDenoiser:
    """Wrap fn(x, sigma[, cond]) -> x0, a denoiser in the EDM frame (x = x0 + sigma n), as a sampler's denoiser.

    dynamics: EDM() by default (t = sigma); any other process re-times it (see module docstring).
    """
    return X0FnDenoiser(fn, dynamics)


class TabulatedDDPM(DDPM):
    """A discrete DDPM defined by its cumulative-alpha table alpha_bar_1 > ... > alpha_bar_T (Ho et al. 2020, eq. 4):
    the knots of log alpha_bar are [0, log alpha_bar_1, ..., log alpha_bar_T] at t = 0, 1/T, ..., 1."""

    def __init__(self, alphas_cumprod: Tensor | Any) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        if ac.numel() < 2:
            raise UserError(f"alphas_cumprod needs at least 2 entries, got {ac.numel()}")
        if not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise UserError("alphas_cumprod must be strictly decreasing values in (0, 1) (alpha_bar_1 > ... > alpha_bar_T)")
        super().__init__(steps=ac.numel())
        self.schedule = "table"
        self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(ac)])

    def describe(self) -> dict:
        return {"steps": self.steps, "schedule": "table"}


class EpsModelDenoiser:
    """D(x, t, cond) = (x - sigma_k eps(x, k[, cond])) / alpha_k with k the step index nearest to t.

    Step i = 1..T of the process sits at t = i / T; the model sees the zero-based index k = i - 1 as a
    long tensor (N,), as diffusers' models and schedulers number their timesteps. Off-grid t (adaptive or
    scaled-frame samplers) is rounded to the nearest step, and alpha_k, sigma_k of that step are used.
    """

    def __init__(self, eps_model: Callable[..., Tensor], alphas_cumprod: Tensor | Any) -> None:
        if not callable(eps_model):
            raise UserError("from_eps_model needs a callable eps(x_t, step_index[, cond]) -> eps")
        self.eps_model = eps_model
        self.dynamics = TabulatedDDPM(alphas_cumprod)
        self._cond = _takes_cond(eps_model)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        T = self.dynamics.steps
        t = torch.as_tensor(t, device=x.device).to(torch.float64).expand(x.shape[0])
        k = (t * T).round().long().clamp(1, T) - 1                      # zero-based step index
        t_k = (k + 1).to(torch.float64) / T
        alpha = append_dims(self.dynamics.alpha(t_k), x.ndim).to(x.dtype)
        sigma = append_dims(self.dynamics.sigma(t_k), x.ndim).to(x.dtype)
        if cond is not None:
            if not self._cond:
                raise UserError("a condition was given but the wrapped eps model takes only (x, step_index)")
            eps = self.eps_model(x, k, cond)
        else:
            eps = self.eps_model(x, k)
        return (x - sigma * eps) / alpha                                # x0 = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)


def from_eps_model(eps_model: Callable[..., Tensor], alphas_cumprod: Tensor | Any) -> EpsModelDenoiser:
    """Wrap eps_model(x_t, step_index[, cond]) -> eps with its table alphas_cumprod (T,) as a denoiser whose
    `.dynamics` is the discrete DDPM of that table (`TabulatedDDPM`); use the "discrete" grid to sample on its steps."""
    return EpsModelDenoiser(eps_model, alphas_cumprod)
