"""The original discrete processes: DDPM (Ho et al. 2020) and NCSN (Song & Ermon 2019, 2020).

Both are embedded in continuous time so that every sampler and loss uses one interface: step i
of T sits at t_i = i / T (DDPM) or at the i-th of L geometric noise levels (NCSN); between steps
log alpha_bar (DDPM) or log sigma (NCSN) is linear in t. With `steps` set, training draws only
the steps' times and the "discrete" grid samples exactly on them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..schedules import BETA_SCHEDULES, sigma_geometric
from .base import Dynamics


class DDPM(Dynamics):
    """Discrete variance-preserving process: q(x_i | x0) = N(sqrt(alpha_bar_i) x0, (1 - alpha_bar_i) I),
    alpha_bar_i = prod_{j<=i} (1 - beta_j) (Ho et al. 2020, eq. 4). Defaults: T = 1000, linear betas 1e-4..0.02."""

    classic_sampler = "ancestral"  # Ho et al. 2020, Algorithm 2

    def __init__(self, steps: int = 1000, schedule: str = "linear", beta_min: float = 1e-4,
                 beta_max: float = 0.02, scale: float = 1.0) -> None:
        if steps < 2:
            raise ValueError(f"DDPM needs at least 2 steps, got {steps}")
        self.steps = steps
        self.schedule, self.beta_min, self.beta_max, self.scale = schedule, beta_min, beta_max, scale
        betas = BETA_SCHEDULES.get(schedule)(steps, beta_min=beta_min, beta_max=beta_max, scale=scale)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"the {schedule} beta schedule with scale {scale} leaves (0, 1): {float(betas.min())}..{float(betas.max())}")
        # knots of log alpha_bar at t = 0, 1/T, ..., 1 (log alpha_bar(0) = 0)
        self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self.t_min, self.t_max = 1.0 / steps, 1.0

    @property
    def betas(self) -> Tensor:
        return -torch.expm1(self._log_ab[1:] - self._log_ab[:-1])

    @property
    def alphas_cumprod(self) -> Tensor:
        return self._log_ab[1:].exp()

    def _log_alpha_bar(self, t: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._log_ab.to(device=t.device, dtype=t.dtype)
        pos = t * self.steps
        k = pos.floor().clamp(0, self.steps - 1)
        w = pos - k
        k = k.long()
        slope = knots[k + 1] - knots[k]
        return knots[k] + w * slope, slope * self.steps

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._log_alpha_bar(t)[0])

    def d_alpha(self, t: Tensor) -> Tensor:
        la, dla = self._log_alpha_bar(t)
        return 0.5 * dla * torch.exp(0.5 * la)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self._log_alpha_bar(t)[0]))

    def d_sigma(self, t: Tensor) -> Tensor:
        la, dla = self._log_alpha_bar(t)
        # sigma^2 = 1 - alpha_bar  =>  d sigma = -alpha_bar * dla / (2 sigma)
        return -0.5 * torch.exp(la) * dla / self.sigma(t)

    def describe(self) -> dict:
        return {"steps": self.steps, "schedule": self.schedule, "beta_min": self.beta_min,
                "beta_max": self.beta_max, "scale": self.scale}


class NCSN(Dynamics):
    """Discrete variance-exploding process with L geometric noise levels sigma_1 > ... > sigma_L
    (Song & Ermon 2019: sigma_1 = 1, sigma_L = 0.01, L = 10). x_i = x0 + sigma_i eps; alpha = 1."""

    classic_sampler = "langevin"  # annealed Langevin dynamics, Song & Ermon 2019, Algorithm 1

    def __init__(self, levels: int = 10, sigma_min: float = 0.01, sigma_max: float = 1.0) -> None:
        if levels < 2 or not 0 < sigma_min < sigma_max:
            raise ValueError(f"NCSN needs levels >= 2 and 0 < sigma_min < sigma_max, got {levels}, {sigma_min}, {sigma_max}")
        self.steps = levels
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = 0.0, 1.0
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @property
    def sigmas(self) -> Tensor:
        """The noise levels in the paper's order, decreasing."""
        return sigma_geometric(self.steps, self.sigma_min, self.sigma_max).flip(0)

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

    @classmethod
    def from_data(cls, x: Tensor, sigma_min: float = 0.01) -> "NCSN":
        """NCSNv2's techniques 1 and 2 (Song & Ermon 2020): sigma_max = the largest pairwise
        Euclidean distance in the data; L chosen so that the ratio gamma = sigma_{i-1}/sigma_i meets
        Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) ~= 0.5."""
        sigma_max = max_pairwise_distance(x)
        gamma = ncsnv2_ratio(x[0].numel())
        levels = max(2, math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1)
        return cls(levels=levels, sigma_min=sigma_min, sigma_max=sigma_max)

    def describe(self) -> dict:
        return {"levels": self.steps, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def max_pairwise_distance(x: Tensor, chunk: int = 1024) -> float:
    """Largest Euclidean distance between two rows of x (flattened), computed in chunks."""
    flat = x.flatten(1).to(torch.float64)
    best = 0.0
    for i in range(0, len(flat), chunk):
        d = torch.cdist(flat[i:i + chunk], flat)
        best = max(best, float(d.max()))
    return best


def ncsnv2_ratio(dim: int) -> float:
    """Solve Phi(sqrt(2D)(g-1) + 3g) - Phi(sqrt(2D)(g-1) - 3g) = 0.5 for g > 1 by bisection
    (Song & Ermon 2020, Technique 2)."""
    def phi(z: float) -> float:
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def gap(g: float) -> float:
        a = math.sqrt(2 * dim) * (g - 1)
        return phi(a + 3 * g) - phi(a - 3 * g) - 0.5

    # For large g the gap tends to Phi(inf) - Phi((sqrt(2D) - 3) g) - 0.5, which is negative only if
    # sqrt(2D) > 3: in D <= 4 dimensions no ratio meets the rule.
    if math.sqrt(2 * dim) <= 3:
        raise ValueError(f"NCSNv2's ratio rule has no solution in D = {dim} <= 4 dimensions; set the levels explicitly")
    lo, hi = 1.0 + 1e-9, 2.0  # gap ~ +0.5 near g = 1; widen until it is negative
    while gap(hi) > 0:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)
