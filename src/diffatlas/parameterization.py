"""Parameterizations: what the network predicts, as scalings in the scaled frame x_hat = x_t / alpha.

Every parameterization is D(x_hat; s) = c_skip(s) x_hat + c_out(s) F(c_in(s) x_hat, c_noise),
with s = sigma_hat = sigma / alpha (Karras et al. 2022, eq. 7 and Table 1). In that frame

    eps   : D = x_hat - s F                 (F ~ eps;   Ho et al. 2020)
    x0    : D = F                           (F ~ x0)
    v     : D = sd^2/(s^2+sd^2) x_hat - s sd/sqrt(s^2+sd^2) F
                                            (F ~ v = alpha eps - sigma x0 for sd = 1; Salimans & Ho 2022)
    score : D = x_hat + s^2 F               (F ~ grad log p(x_hat); Song & Ermon 2019)
    edm   : D = sd^2/(s^2+sd^2) x_hat + s sd/sqrt(s^2+sd^2) F   (Karras et al. 2022, sd = 0.5)

and c_in = 1 / sqrt(s^2 + sd^2) gives the network unit-variance input (for a VP process with
sd = 1 this is exactly alpha: the network sees x_t itself, as in DDPM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .registry import Registry

Scalings = tuple[Tensor, Tensor, Tensor]  # c_skip, c_out, c_in
PARAMETERIZATIONS: Registry = Registry("parameterization")


@dataclass(frozen=True)
class Parameterization:
    name: str
    scalings: Callable[[Tensor, float], Scalings]
    default_sigma_data: float

    def __call__(self, s: Tensor, sigma_data: float | None = None) -> Scalings:
        return self.scalings(s, self.default_sigma_data if sigma_data is None else sigma_data)


def _c_in(s: Tensor, sd: float) -> Tensor:
    return torch.rsqrt(s**2 + sd**2)


def _eps(s: Tensor, sd: float) -> Scalings:
    return torch.ones_like(s), -s, _c_in(s, sd)


def _x0(s: Tensor, sd: float) -> Scalings:
    return torch.zeros_like(s), torch.ones_like(s), _c_in(s, sd)


def _v(s: Tensor, sd: float) -> Scalings:
    return sd**2 / (s**2 + sd**2), -s * sd * _c_in(s, sd), _c_in(s, sd)


def _score(s: Tensor, sd: float) -> Scalings:
    return torch.ones_like(s), s**2, _c_in(s, sd)


def _edm(s: Tensor, sd: float) -> Scalings:
    return sd**2 / (s**2 + sd**2), s * sd * _c_in(s, sd), _c_in(s, sd)


for _p, _doc in [
    (Parameterization("eps", _eps, 1.0), "predict the noise eps (Ho et al. 2020)"),
    (Parameterization("x0", _x0, 1.0), "predict the clean data x0"),
    (Parameterization("v", _v, 1.0), "predict v = alpha eps - sigma x0 (Salimans & Ho 2022)"),
    (Parameterization("score", _score, 1.0), "predict the score of x / alpha (Song & Ermon 2019)"),
    (Parameterization("edm", _edm, 0.5), "EDM preconditioning, sigma_data = 0.5 (Karras et al. 2022)"),
]:
    PARAMETERIZATIONS.register(_p.name, _doc)(_p)


def get_parameterization(name: str) -> Parameterization:
    return PARAMETERIZATIONS.get(name)
