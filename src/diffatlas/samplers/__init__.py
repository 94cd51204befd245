"""The sampler axis: plain functions with one signature over a denoiser and a decreasing time grid.

    fn(denoiser, x, ts, *, generator=None, cond=None, denoise_final=True, **options) -> SampleResult(x, nfe)

Registered in SAMPLERS: ancestral, ddim, langevin, euler-maruyama, reverse-diffusion, pc, euler, heun,
rk45, edm, dpm-solver++. `sample(...)` is the one-call API; `plan_sampling` resolves defaults and NFE budgets for every caller;
`clip` holds x0 clipping, a sampling-time option of the denoiser; `from_x0_fn` / `from_eps_model` wrap
denoisers trained elsewhere; `oracle` holds the distances used to check samplers against exact data.
"""

from __future__ import annotations

from .base import (SAMPLERS, GridCoefficients, SampleResult, check_grid, default_grid, register_sampler,
                   steps_for_nfe)
from . import stochastic as _stochastic  # noqa: F401  (registers its samplers)
from . import ode as _ode  # noqa: F401
from .stochastic import ancestral, ddim, euler_maruyama, langevin, pc, reverse_diffusion
from .ode import dpm_solver_pp, edm, euler, heun, rk45
from .external import EpsModelDenoiser, TabulatedDDPM, X0FnDenoiser, from_eps_model, from_x0_fn
from .api import prior_from_seeds, sample
from .clip import CLIP_MODES, ClippedDenoiser, clip_denoiser, parse_clip, resolve_clip
from .plan import DEFAULT_CONTINUOUS_STEPS, SAMPLER_RULES, Plan, auto_sampler, plan_sampling, resolve_sampler


def get_sampler(name: str):
    """The registered sampler function called `name` (UnknownNameError lists the choices)."""
    return SAMPLERS.get(name)


__all__ = ["SAMPLERS", "SampleResult", "GridCoefficients", "check_grid", "default_grid", "register_sampler",
           "steps_for_nfe", "get_sampler", "ancestral", "ddim", "euler_maruyama", "langevin", "pc",
           "reverse_diffusion", "dpm_solver_pp", "edm", "euler", "heun", "rk45", "from_eps_model", "from_x0_fn",
           "EpsModelDenoiser", "TabulatedDDPM", "X0FnDenoiser", "prior_from_seeds", "sample", "CLIP_MODES",
           "ClippedDenoiser", "clip_denoiser", "parse_clip", "resolve_clip", "DEFAULT_CONTINUOUS_STEPS", "Plan",
           "SAMPLER_RULES", "auto_sampler", "plan_sampling", "resolve_sampler"]
