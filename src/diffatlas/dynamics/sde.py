"""Continuous processes: the VP, sub-VP and VE SDEs (Song et al. 2021), EDM (Karras et al.
2022) and rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Dynamics


class _LinearBeta:
    """alpha(t) = exp(-1/2 int_0^t beta(s) ds) with beta(t) = beta_min + t (beta_max - beta_min)."""

    beta_min: float
    beta_max: float

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_alpha(t))

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta(t) * self.alpha(t)


class VPSDE(_LinearBeta, Dynamics):
    """dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (Song et al. 2021, eq. 11): sigma^2 = 1 - alpha^2."""

    classic_sampler = "pc"  # predictor-corrector, Song et al. 2021, Algorithms 2-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> None:
        self.beta_min, self.beta_max, self.t_min, self.t_max = float(beta_min), float(beta_max), float(t_min), 1.0

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def d_sigma(self, t: Tensor) -> Tensor:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha^2 / (1 - alpha^2) = e^lam  =>  log alpha = -1/2 log(1 + e^-lam); solve the quadratic in t.
        lam = torch.as_tensor(lam, dtype=torch.float64)
        log_alpha = -0.5 * torch.nn.functional.softplus(-lam)
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return (-b + torch.sqrt(b * b - 4 * a * log_alpha)) / (2 * a)

    def describe(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class SubVPSDE(_LinearBeta, Dynamics):
    """dx = -1/2 beta x dt + sqrt(beta(t)(1 - e^{-2 int beta})) dw (Song et al. 2021, eq. 12): sigma = 1 - alpha^2."""

    classic_sampler = "pc"  # predictor-corrector, Song et al. 2021

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> None:
        self.beta_min, self.beta_max, self.t_min, self.t_max = float(beta_min), float(beta_max), float(t_min), 1.0

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self._log_alpha(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return -2 * self.alpha(t) * self.d_alpha(t)

    def describe(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class VESDE(Dynamics):
    """dx = sqrt(d sigma^2/dt) dw with sigma(t) = sigma_min (sigma_max/sigma_min)^t (Song et al. 2021, eq. 9)."""

    classic_sampler = "pc"  # predictor-corrector, Song et al. 2021, Algorithm 2

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE-SDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = float(sigma_min), float(sigma_max), float(t_min), 1.0
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(self._log_ratio * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self._log_ratio * self.sigma(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        s = torch.exp(-0.5 * torch.as_tensor(lam, dtype=torch.float64))
        return torch.log(s / self.sigma_min) / self._log_ratio

    def describe(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}


class EDM(Dynamics):
    """sigma(t) = t, alpha = 1 (Karras et al. 2022, Table 1); training sigma ~ log-normal(P_mean, P_std)."""

    classic_sampler = "heun"  # Karras et al. 2022, Algorithm 1

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, p_mean: float = -1.2,
                 p_std: float = 1.2) -> None:
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-0.5 * torch.as_tensor(lam, dtype=torch.float64))

    def sample_training_t(self, n, generator=None, device="cpu", dtype=torch.float32) -> Tensor:
        # ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, sec. 5); not clipped to [sigma_min, sigma_max].
        z = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.exp(self.p_mean + self.p_std * z)

    def describe(self) -> dict:
        return {"sigma_min": self.t_min, "sigma_max": self.t_max, "p_mean": self.p_mean, "p_std": self.p_std}


class RectifiedFlow(Dynamics):
    """x_t = (1 - t) x0 + t eps: the straight path of rectified flow / flow matching."""

    classic_sampler = "euler"  # Euler on the flow ODE, Liu et al. 2022

    def __init__(self, t_min: float = 1e-3) -> None:
        self.t_min, self.t_max = float(t_min), 1.0

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha/sigma = e^{lam/2}  =>  t = 1 / (1 + e^{lam/2})
        return torch.sigmoid(-0.5 * torch.as_tensor(lam, dtype=torch.float64))

    def describe(self) -> dict:
        return {"t_min": self.t_min}
