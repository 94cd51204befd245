"""How a sampling request becomes a plan: sampler, grid, grid points, options and NFE budget.

One function decides for every caller (the sample and evaluate commands, study settings, the oracle
experiment, configs), so a default is the same wherever it applies:

- sampler "auto": ancestral on a discrete process (Ho et al. 2020's own sampler), heun otherwise;
  sampler "classic": the process's own published sampler (Dynamics.classic_sampler: ancestral for
  DDPM, annealed Langevin for NCSN, predictor-corrector for the VP, sub-VP and VE SDEs, heun for
  EDM, euler for rectified flow), so that "each process with its own sampler" is one setting;
- grid "auto": the sampler's default grid, "logsnr" for every sampler and process (samplers.base);
- steps: explicit grid points; or from an NFE budget by the sampler's own plan (`steps_for_nfe`), so
  that NFE-matched comparisons give every process the same budget; or by default the process's own
  T steps (discrete) or DEFAULT_CONTINUOUS_STEPS. A discrete process never gets more grid points
  than it has steps: an explicit request for more is refused, a budget is capped (the plan records
  the budget, the result the NFE actually used);
- options: the sampler's defaults that depend on the process or the grid (heun's frame, pc's snr,
  langevin's step) made explicit, so a saved config or result states what ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..errors import UserError
from ..registry import UnknownNameError
from ..schedules import make_grid
from .base import SAMPLERS, default_grid, steps_for_nfe

DEFAULT_CONTINUOUS_STEPS = 50


@dataclass(frozen=True)
class Plan:
    sampler: str
    grid: str
    steps: int
    options: dict = field(default_factory=dict)
    nfe_budget: int | None = None
    ts: Tensor | None = field(default=None, compare=False, repr=False)  # the grid, as planned

    def times(self, dynamics: Any) -> Tensor:
        return self.ts if self.ts is not None else grid_times(self.grid, dynamics, self.steps)


def grid_times(grid: str, dynamics: Any, steps: int) -> Tensor:
    """make_grid with its errors as one-line UserErrors."""
    try:
        return make_grid(grid, dynamics, int(steps))
    except UnknownNameError:
        raise
    except ValueError as e:  # the discrete grid of a continuous process, too many steps, ...
        raise UserError(f"grid {grid!r} with {steps} steps: {e}") from None


# Sampler names that are rules resolved per process rather than registry entries.
SAMPLER_RULES = {"auto": "the default: ancestral on a discrete process, heun otherwise",
                 "classic": "the process's own published sampler (ancestral, langevin, pc, heun or euler)"}


def auto_sampler(dynamics: Any) -> str:
    return "ancestral" if dynamics.steps is not None else "heun"


def resolve_sampler(dynamics: Any, name: str | None) -> str:
    """A sampler name or rule (SAMPLER_RULES) as the SAMPLERS name it means for `dynamics`."""
    if name in (None, "auto"):
        return auto_sampler(dynamics)
    if name == "classic":
        return str(getattr(dynamics, "classic_sampler", None) or auto_sampler(dynamics))
    return str(name)


def check_sampler_name(name: str) -> str:
    """`name` if it is a SAMPLERS name or a rule (auto, classic); else the registry's error listing both."""
    if name in SAMPLER_RULES:
        return name
    try:
        SAMPLERS.get(name)
    except UnknownNameError:
        choices = ", ".join([*SAMPLERS.names(), *SAMPLER_RULES])
        raise UnknownNameError(f"unknown sampler {name!r}; choose one of: {choices}") from None
    return name


def plan_sampling(dynamics: Any, sampler: str | None = "auto", steps: int | None = None, grid: str | None = "auto",
                  options: dict | None = None, nfe: int | None = None) -> Plan:
    """Resolve a sampling request (None / "auto" / 0 mean: the default) into a Plan."""
    sampler = resolve_sampler(dynamics, sampler)
    fn = SAMPLERS.get(sampler)
    opts = dict(options or {})
    steps = int(steps or 0)
    nfe = int(nfe or 0)
    T = dynamics.steps
    if steps and nfe:
        raise UserError(f"give either steps ({steps}) or an NFE budget ({nfe}), not both")
    if nfe:
        steps, opts = steps_for_nfe(sampler, nfe, max_steps=T, **opts)
    elif steps:
        if T is not None and steps > T:
            raise UserError(f"{steps} steps asked of a discrete process with {T} steps; ask for at most {T} "
                            "(or give an NFE budget)")
    else:
        steps = T if T is not None else DEFAULT_CONTINUOUS_STEPS
    grid = default_grid(dynamics, sampler) if grid in (None, "auto") else grid
    ts = grid_times(grid, dynamics, steps)
    if fn.resolve is not None:
        opts = fn.resolve(dynamics, ts, opts)
    return Plan(sampler, grid, steps, opts, nfe or None, ts)


def request_label(sampler: str | None = None, steps: int | None = None, nfe: int | None = None,
                  grid: str | None = None, options: dict | None = None, clip: str | None = None) -> str:
    """A request as the user stated it, before any default: 'ddim x10', 'heun nfe20 clip=none',
    'default'. Results carry it, so that settings pair across processes whatever their plans became
    (an NFE budget may give a discrete process fewer steps than a continuous one)."""
    if sampler in (None, "auto") and not steps and not nfe:
        label = "default" if sampler is None else "auto"
    else:
        label = sampler or "auto"
    if nfe:
        label += f" nfe{int(nfe)}"
    elif steps:
        label += f" x{int(steps)}"
    if grid not in (None, "auto"):
        label += f" {grid}"
    if options:
        label += " " + ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    if clip is not None:
        label += f" clip={clip}"
    return label
