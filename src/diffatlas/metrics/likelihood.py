"""Negative log-likelihood in bits per dimension through the probability-flow ODE (the ``bpd`` metric).

The ODE dx/dt = v(x, t) = d_alpha(t) D(x, t) + d_sigma(t) eps, eps = (x - alpha D) / sigma (the
velocity every ODE sampler integrates, samplers/ode.py) carries the prior at t_max into the model's
density at t_min. By the instantaneous change of variables (Chen et al. 2018, thm. 1; Song et al.
2021, app. D.2, eq. 39)

    log p_{t_min}(x) = log p_prior(x(t_max)) + int_{t_min}^{t_max} div_x v(x(t), t) dt,

where x(t) solves the ODE forward from x(t_min) = x. Both are integrated together, data -> prior,
as one augmented state (x, int div v). It uses the denoiser only, so it holds for every dynamics;
the prior is N(0, sigma(t_max)^2 I) (``Dynamics.prior_logp``), as for sampling.

Divergence: exact (one vector-Jacobian product per coordinate) where the dimension D is small
(``divergence="auto"``: D <= EXACT_MAX_DIM), else Hutchinson's estimator div v = E[e^T (dv/dx) e]
(Hutchinson 1989; Grathwohl et al. 2019, FFJORD, sec. 3.1) with a fixed number of probes e per
sample (Rademacher or Gaussian), drawn once and held fixed along the whole solve, as FFJORD and
Song et al. do: the integral of an unbiased integrand is then an unbiased estimate of log p.

Discrete data. Images are 8-bit: pixel level k in {0..255} sits at x = k / 127.5 - 1. With uniform
dequantisation (Song et al. 2021, app. D.2; Theis et al. 2016) x = (k + u) / 128 - 1, u ~ U[0, 1)^D,
the model's probability of the bin of k (width 2/256 per dimension) is bounded by Jensen's inequality:

    -log2 P(k) <= E_u[-log2 p_{t_min}(x)] + D log2(128),

so bits/dim = E_u[-log2 p_{t_min}(x)] / D + 7, an upper bound on the discrete NLL. The decoder term,
stated: there is no separate decoder here; the bins' probabilities are the flow density's own, so
the discrete part is the constant 7 bits/dim (``discretization_bits``), where Ho et al. (2020, sec.
3.3) instead end their variational bound with a discretised Gaussian decoder L_0 = -log p(x_0 | x_1).
Points (toy or Gaussian data) are continuous: no dequantisation, bits/dim = -log2 p(x) / D.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..samplers import default_grid
from ..samplers.base import coefficients_at
from ..samplers.ode import dormand_prince
from ..schedules import make_grid
from .spec import higher_is_better
from .stats import bootstrap_ci

SOLVERS = ("rk45", "heun")
DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
DEQUANTIZATIONS = ("auto", "uniform", "none")
EXACT_MAX_DIM = 16      # divergence="auto": exact up to this many dimensions, Hutchinson above
LEVELS = 256            # 8-bit images
DISCRETIZATION_BITS = math.log2(LEVELS / 2)  # bin width 2/256 in [-1, 1]: -log2(2/256) = 7 bits per dimension


@dataclass(frozen=True)
class LikelihoodSettings:
    """How the ODE likelihood is estimated; every field is logged with the metric.

    solver: "rk45" (adaptive Dormand-Prince, rtol/atol; Song et al. use rtol = atol = 1e-5) or "heun"
        (fixed grid of `steps` points on `grid`, 2 (steps - 1) evaluations).
    divergence: "exact", "hutchinson" or "auto" (exact for D <= EXACT_MAX_DIM).
    probes: Hutchinson probes per sample (each costs one vector-Jacobian product per evaluation);
        probe: their distribution, "rademacher" or "gaussian".
    dequantization: "uniform" (8-bit images, +7 bits/dim), "none" (continuous data) or "auto"
        (uniform for images (C, H, W), none for points).
    max_nfe: the most denoiser evaluations one rk45 solve may use.
    """

    solver: str = "rk45"
    rtol: float = 1e-5
    atol: float = 1e-5
    grid: str = "auto"
    steps: int = 64
    divergence: str = "auto"
    probes: int = 1
    probe: str = "rademacher"
    dequantization: str = "auto"
    max_nfe: int = 20_000

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> LikelihoodSettings:
        """Settings from KEY=VALUE options (e.g. ``{"probes": 4, "solver": "heun"}``); UserError on a bad one."""
        names = [f.name for f in fields(cls)]
        options = dict(options or {})
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise UserError(f"unknown bpd option(s) {', '.join(unknown)}; accepted: {', '.join(names)}")
        kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        values = {}
        for k, v in options.items():
            try:
                if kinds[k] is int and (isinstance(v, bool) or float(v) != int(float(v))):
                    raise ValueError
                values[k] = kinds[k](float(v)) if kinds[k] is int else kinds[k](v)
            except (TypeError, ValueError):
                what = {int: "an integer", float: "a number", str: "a name"}[kinds[k]]
                raise UserError(f"bpd option {k} must be {what}, got {v!r}") from None
        return cls(**values).checked()

    def checked(self) -> LikelihoodSettings:
        for name, allowed in (("solver", SOLVERS), ("divergence", DIVERGENCES), ("probe", PROBES),
                              ("dequantization", DEQUANTIZATIONS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"bpd option {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (self.rtol > 0 and self.atol > 0):
            raise UserError(f"bpd needs rtol > 0 and atol > 0, got rtol={self.rtol}, atol={self.atol}")
        if self.steps < 2 or self.probes < 1 or self.max_nfe < 1:
            raise UserError(f"bpd needs steps >= 2, probes >= 1 and max_nfe >= 1, got steps={self.steps}, "
                            f"probes={self.probes}, max_nfe={self.max_nfe}")
        return self

    def resolved(self, shape: tuple[int, ...], dynamics: Any) -> LikelihoodSettings:
        """The 'auto' choices made for data of per-sample `shape` under `dynamics`."""
        dim = int(np.prod(shape))
        out = self.checked()
        if out.divergence == "auto":
            out = replace(out, divergence="exact" if dim <= EXACT_MAX_DIM else "hutchinson")
        if out.dequantization == "auto":
            out = replace(out, dequantization="uniform" if len(shape) == 3 else "none")
        if out.solver == "heun" and out.grid == "auto":
            out = replace(out, grid=default_grid(dynamics, "heun"))
        return out

    def describe(self) -> dict[str, Any]:
        """The fields that matter for these settings (rk45: tolerances; heun: grid and steps; probes only
        for Hutchinson), for the metric record and its key."""
        d = asdict(self)
        drop = {"grid", "steps"} if self.solver == "rk45" else {"rtol", "atol", "max_nfe"}
        if self.divergence == "exact":
            drop |= {"probes", "probe"}
        return {k: v for k, v in d.items() if k not in drop}


@dataclass
class LikelihoodResult:
    """bpd (N,): bits per dimension of each sample (with the discretisation term); logp (N,): log density
    in nats of the (dequantised) points at t_min; nfe: denoiser evaluations of the solve; settings: resolved."""

    bpd: Tensor
    logp: Tensor
    nfe: int
    settings: LikelihoodSettings


def _probes(settings: LikelihoodSettings, n: int, dim: int, generator: torch.Generator | None) -> Tensor:
    """(K, N, D) float64 probes with E[e e^T] = I: Rademacher signs or standard normals."""
    shape = (settings.probes, n, dim)
    if settings.probe == "rademacher":
        return torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def log_likelihood(denoiser: Any, x: Tensor, *, settings: LikelihoodSettings | None = None,
                   generator: torch.Generator | None = None, cond: Tensor | None = None) -> tuple[Tensor, int]:
    """log p_{t_min}(x) in nats of points x (N, *shape) under the model's probability-flow ODE.

    Integrates (x, int div v) from t_min to t_max in float64 (the network runs in its own dtype) and
    adds the prior's log density at the end point. The divergence uses vector-Jacobian products of the
    batch's summed outputs, which is per-sample exact for a denoiser that treats samples independently
    (every network here does: group norm and attention act within a sample).

    Returns:
        (logp (N,) float64 on x's device, denoiser evaluations used).
    """
    dyn = denoiser.dynamics
    shape = tuple(x.shape[1:])
    s = (settings or LikelihoodSettings()).resolved(shape, dyn)
    n, dim = x.shape[0], int(np.prod(shape))
    exact = s.divergence == "exact"
    eps = None if exact else _probes(s, n, dim, generator).to(x.device)

    def velocity_and_divergence(y: Tensor, t: float) -> Tensor:
        """d/dt of the augmented state y = [x (N, D), int div v (N, 1)]: [v, div v]."""
        a, sig, da, ds = coefficients_at(dyn, t)
        with torch.enable_grad():
            xi = y[:, :dim].detach().requires_grad_(True)
            tt = torch.full((n,), t, dtype=xi.dtype, device=xi.device)
            args = (xi.reshape(n, *shape), tt) if cond is None else (xi.reshape(n, *shape), tt, cond)
            d = denoiser(*args).reshape(n, dim).to(xi.dtype)
            v = da * d + ds * (xi - a * d) / sig                       # dx/dt = d_alpha D + d_sigma eps
            if exact:                                                  # tr(dv/dx) = sum_i dv_i/dx_i
                div = sum(torch.autograd.grad(v[:, i].sum(), xi, retain_graph=i < dim - 1)[0][:, i]
                          for i in range(dim))
            else:                                                      # mean_k e_k^T (dv/dx) e_k
                div = sum((torch.autograd.grad(v, xi, grad_outputs=e, retain_graph=k < s.probes - 1)[0] * e).sum(1)
                          for k, e in enumerate(eps)) / s.probes
        return torch.cat([v.detach(), div.detach()[:, None]], 1)

    y = torch.cat([x.reshape(n, dim).to(torch.float64), x.new_zeros(n, 1, dtype=torch.float64)], 1)
    t_min, t_max = float(dyn.t_min), float(dyn.t_max)
    if s.solver == "rk45":
        y, nfe = dormand_prince(velocity_and_divergence, y, t_min, t_max, rtol=s.rtol, atol=s.atol,
                                max_evals=s.max_nfe, what="bpd (rk45)")
    else:  # Heun's method on the grid, run from t_min up to t_max
        ts = [float(t) for t in make_grid(s.grid, dyn, s.steps).flip(0)]
        for t0, t1 in pairwise(ts):
            k1 = velocity_and_divergence(y, t0)
            k2 = velocity_and_divergence(y + (t1 - t0) * k1, t1)
            y = y + (t1 - t0) * 0.5 * (k1 + k2)
        nfe = 2 * (len(ts) - 1)
    x_end, integral = y[:, :dim], y[:, dim]
    return dyn.prior_logp(x_end.reshape(n, *shape)) + integral, int(nfe)


def bits_per_dim(denoiser: Any, x: Tensor, *, settings: LikelihoodSettings | None = None,
                 generator: torch.Generator | None = None, cond: Tensor | None = None) -> LikelihoodResult:
    """Bits per dimension of data x (N, *shape) in [-1, 1] under the model (see the module docstring).

    With uniform dequantisation x is read as 8-bit levels k = round((x + 1) 127.5), moved to
    (k + u) / 128 - 1 with u ~ U[0, 1) from `generator` (drawn before the Hutchinson probes), and
    7 bits/dim are added; without, x is used as it is.
    """
    s = (settings or LikelihoodSettings()).resolved(tuple(x.shape[1:]), denoiser.dynamics)
    dim = int(np.prod(x.shape[1:]))
    if s.dequantization == "uniform":
        k = ((x.to(torch.float64) + 1) * 127.5).round().clamp(0, LEVELS - 1)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        points, extra_bits = (k + u) / (LEVELS / 2) - 1, DISCRETIZATION_BITS
    else:
        points, extra_bits = x.to(torch.float64), 0.0
    logp, nfe = log_likelihood(denoiser, points, settings=s, generator=generator, cond=cond)
    return LikelihoodResult(-logp / (dim * math.log(2)) + extra_bits, logp, nfe, s)


def evaluate_bpd(denoiser: Any, x: Tensor, labels: Tensor | None = None, *, settings: LikelihoodSettings | None = None,
                 seed: int = 0, n_boot: int = 0, alpha: float = 0.05, batch: int = 256,
                 device: str | torch.device = "cpu", log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The ``bpd`` metric record of data x (n, *shape) in [-1, 1]: the mean bits/dim over the n samples.

    Batches of `batch` samples are solved one after another (rk45 takes one step size per batch, so
    the batch size is part of the setting); dequantisation noise and probes come from one generator
    seeded with `seed`. labels (n,): the classes a class-conditional denoiser is given (then the
    likelihood is p(x | y)). The record says what was estimated and how: solver, tolerances or grid,
    divergence and probes, dequantisation and its discretisation bits, NFE, vector-Jacobian products
    per evaluation, the time range and the prior; with n_boot > 0 a percentile bootstrap interval over
    samples.
    """
    n = int(x.shape[0])
    if n < 1:
        raise UserError("bpd needs at least one data point")
    shape = tuple(x.shape[1:])
    dyn = denoiser.dynamics
    s = (settings or LikelihoodSettings()).resolved(shape, dyn)
    g = torch.Generator().manual_seed(int(seed))
    dev = torch.device(device)
    values, nfes = [], []
    start = time.perf_counter()
    for i in range(0, n, batch):
        xb = x[i:i + batch].to(dev)
        cb = labels[i:i + batch].to(dev) if labels is not None else None
        res = bits_per_dim(denoiser, xb, settings=s, generator=g, cond=cb)
        values.append(res.bpd.cpu())
        nfes.append(res.nfe)
        if log is not None and n > batch:
            log(f"bpd: {min(i + batch, n)}/{n} samples ({time.perf_counter() - start:.1f} s)")
    bpd = torch.cat(values).numpy()
    dim = int(np.prod(shape))
    rec: dict[str, Any] = {
        "metric": "bpd",
        "value": float(bpd.mean()),
        "interval": None,
        "confidence": None,
        "stderr": float(bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "n": n,
        "higher_is_better": higher_is_better("bpd"),
        "what": ("negative log-likelihood in bits per dimension through the probability-flow ODE (Song et al. 2021, "
                 "app. D.2), " + ("an upper bound on the 8-bit discrete NLL by uniform dequantisation (+7 bits/dim "
                                  "discretisation, no decoder term)" if s.dequantization == "uniform"
                                  else "continuous density, no dequantisation")),
        "solver": s.solver,
        "likelihood": s.describe(),
        "discretization_bits": DISCRETIZATION_BITS if s.dequantization == "uniform" else 0.0,
        "vjps_per_nfe": dim if s.divergence == "exact" else s.probes,
        "nfe": round(float(np.mean(nfes))),
        "batch": int(batch),
        "dims": dim,
        "t_range": [float(dyn.t_min), float(dyn.t_max)],
        "prior": f"N(0, {dyn.prior_std():.6g}^2 I) at t_max",
        "conditional": labels is not None,
    }
    if n_boot and n > 1:
        boot = bootstrap_ci(lambda v: float(v.mean()), bpd, n_boot=n_boot, seed=seed, alpha=alpha)
        rec.update(interval=[boot.low, boot.high], confidence=1.0 - boot.alpha, n_boot=boot.n_boot)
    return rec
