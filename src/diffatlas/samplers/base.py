"""What every sampler shares: the result type, the registry, grid checks and per-grid coefficients.

A sampler is a plain function with one signature,

    fn(denoiser, x, ts, *, generator=None, cond=None, denoise_final=True, **options) -> SampleResult

over a denoiser D(x, t, cond) -> x0 estimate (with `D.dynamics`) and a decreasing time grid
ts = (t_0 > t_1 > ... > t_N). It walks the grid t_0 -> t_N and, unless `denoise_final=False`,
ends with the denoising step x = D(x, t_N) (one more NFE), which is the Euler step to sigma = 0 of
every ODE solver and exactly the last step of Ho et al. (2020, Algorithm 2).

Per-grid coefficients (alpha, sigma, log-SNR, ...) are computed once, in float64 on the host, before
the step loop; inside the loop they are Python floats, so no step causes a device synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from torch import Tensor

from ..dynamics.base import Dynamics
from ..errors import UserError
from ..registry import Registry
from ..schedules import GRID_SIGMA_HAT_MAX


@dataclass(frozen=True)
class SampleResult:
    """x: the samples, shaped like the starting tensor; nfe: denoiser evaluations used."""

    x: Tensor
    nfe: int


Sampler = Callable[..., SampleResult]
# steps_for_nfe(nfe, options, max_steps) -> (grid points, options): how a sampler spends an NFE budget
# on at most max_steps grid points (a discrete process's step count; None: no limit).
StepPlan = Callable[[int, dict, "int | None"], tuple[int, dict]]
# resolve(dynamics, ts, options) -> options: the defaults the sampler would pick on this grid, made
# explicit so that a saved config or result record states them (no change in behaviour).
Resolve = Callable[[Dynamics, Tensor, dict], dict]

# Every sampler's default grid, on every process: uniform in log-SNR (as DPM-Solver uses; for VE and
# NCSN these are the geometric noise levels of Song & Ermon 2019), on a discrete process moved onto its
# own steps (schedules.snap_to_steps). One rule for all processes, so that no process starts a
# comparison behind because of its grid.
DEFAULT_GRID = "logsnr"


# What a sampler is, for reports: "ODE" (integrates the probability-flow ODE), "stochastic (...)"
# (fresh noise at every step), or a function of its options for samplers that are either (DDIM, EDM).
Kind = Union[str, Callable[[dict], str]]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: the function (its keyword arguments beyond SAMPLER_CALL_ARGS are its
    options, with their defaults), how it spends an NFE budget (`steps_for_nfe`), its preferred grid
    (None: DEFAULT_GRID), the resolver that makes its grid-dependent defaults explicit (None: none)
    and its kind for reports. Calling the spec calls the function."""

    name: str
    fn: Sampler
    steps_for_nfe: StepPlan
    grid: str | None = None
    resolve: Resolve | None = None
    kind: Kind = "unknown"

    def __call__(self, *args: Any, **kwargs: Any) -> SampleResult:
        return self.fn(*args, **kwargs)


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")


def register_sampler(name: str, description: str, steps_for_nfe: StepPlan,
                     grid: str | None = None, resolve: Resolve | None = None,
                     kind: Kind = "unknown") -> Callable[[Sampler], Sampler]:
    """Register the decorated sampler function as `name` (a :class:`SamplerSpec` with these fields);
    the function itself is returned unchanged."""
    def add(fn: Sampler) -> Sampler:
        SAMPLERS.register(name, description)(SamplerSpec(name, fn, steps_for_nfe, grid, resolve, kind))
        return fn
    return add


def sampler_kind(name: Any, options: dict | None) -> str:
    """The kind of a registered sampler with these options (None: not recorded); 'unknown' for a name
    not registered, or options not recorded for a sampler whose kind depends on them."""
    try:
        kind = SAMPLERS.get(str(name)).kind
    except Exception:  # noqa: BLE001 - an unregistered name (e.g. from an old or foreign record)
        return "unknown"
    if not callable(kind):
        return kind
    if options is None:
        return "unknown"
    try:
        return kind(options)
    except (TypeError, ValueError):
        return "unknown"


def _cap(steps: int, max_steps: int | None) -> int:
    return steps if max_steps is None else min(steps, int(max_steps))


def one_nfe_per_step(nfe: int, options: dict, max_steps: int | None = None) -> tuple[int, dict]:
    """First-order samplers: a grid of `steps` points costs steps - 1 steps + 1 final denoise = steps NFE."""
    return _cap(max(1, int(nfe)), max_steps), dict(options)


def two_nfe_per_step(nfe: int, options: dict, max_steps: int | None = None) -> tuple[int, dict]:
    """Heun-type samplers: steps - 1 steps of 2 NFE + 1 final denoise = 2 steps - 1 NFE."""
    return _cap(max(1, (int(nfe) + 1) // 2), max_steps), dict(options)


def steps_for_nfe(sampler: str, nfe: int, max_steps: int | None = None, **options: Any) -> tuple[int, dict]:
    """Grid size and options with which `sampler` uses at most `nfe` evaluations (with the final
    denoise) on at most `max_steps` grid points. rk45 is adaptive: its tolerance is set from the
    budget and the NFE it reports is what it used."""
    if int(nfe) < 1:
        raise UserError(f"an NFE budget must be >= 1, got {nfe}")
    return SAMPLERS.get(sampler).steps_for_nfe(int(nfe), options, max_steps)


def reject_unknown(name: str, unknown: dict, accepted: str) -> None:
    """One-line UserError for options a sampler does not take."""
    if unknown:
        raise UserError(f"sampler {name!r} got unknown option(s) {', '.join(sorted(unknown))}; it accepts: {accepted}")


# ---- grids -----------------------------------------------------------------------------------------

def check_grid(dynamics: Dynamics, ts: Tensor | Any) -> Tensor:
    """The grid as a float64 CPU tensor after checking it: 1-D, at least one time, finite, strictly
    decreasing and inside [t_min, t_max] of the dynamics. Anything else raises UserError."""
    try:
        t = torch.as_tensor(ts).detach().to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"a time grid must be a 1-D tensor of times, got {type(ts).__name__}") from None
    if t.ndim != 1 or t.numel() < 1:
        raise UserError(f"a time grid must be a 1-D tensor with at least one time, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise UserError("a time grid must contain finite times only")
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise UserError("a time grid must be strictly decreasing (t_max -> t_min): each step goes from more to "
                        "less noise, otherwise the reverse transition has negative variance")
    lo, hi = float(dynamics.t_min), float(dynamics.t_max)
    tol = 1e-9 * max(1.0, abs(hi))
    if float(t.max()) > hi + tol or float(t.min()) < lo - tol:
        raise UserError(f"a time grid must lie in [t_min, t_max] = [{lo:g}, {hi:g}] of the dynamics, "
                        f"got [{float(t.min()):g}, {float(t.max()):g}]")
    return t


def default_grid(dynamics: Dynamics | None = None, sampler: str | None = None) -> str:
    """The grid a sampler uses when none is named: its registered preference, else DEFAULT_GRID
    ("logsnr") for every process."""
    if sampler is not None and SAMPLERS.get(sampler).grid is not None:
        return SAMPLERS.get(sampler).grid
    return DEFAULT_GRID


def variance_exploding(alpha: list[float]) -> bool:
    """True where alpha = 1 on the whole grid (VE, NCSN, EDM): x itself is the scaled frame."""
    return all(a == 1.0 for a in alpha)


@dataclass
class GridCoefficients:
    """float64 coefficients of the dynamics at each grid time, as Python lists (host-side).

    t, alpha, sigma, d_alpha, d_sigma, f, g2: as in Dynamics; lam = log-SNR = 2 log(alpha / sigma).
    Scaled frame, clipped at GRID_SIGMA_HAT_MAX (the largest level the grids resolve; rectified flow has
    sigma_hat = inf at t = 1): s = min(sigma_hat, GRID_SIGMA_HAT_MAX), t_s = the time with sigma_hat = s
    (= t where not clipped), alpha_s = alpha(t_s), and to_hat = s / sigma, the factor with
    x_hat = to_hat * x (= x / alpha where not clipped; a rescaled pure-noise state where clipped).
    """

    t: list[float]
    alpha: list[float]
    sigma: list[float]
    d_alpha: list[float]
    d_sigma: list[float]
    f: list[float]
    g2: list[float]
    lam: list[float]
    s: list[float]
    t_s: list[float]
    alpha_s: list[float]
    to_hat: list[float]

    @classmethod
    def of(cls, dynamics: Dynamics, t: Tensor) -> "GridCoefficients":
        with torch.no_grad():
            alpha, sigma = dynamics.alpha(t), dynamics.sigma(t)
            d_alpha, d_sigma = dynamics.d_alpha(t), dynamics.d_sigma(t)
            f = dynamics.f(t)
            g2 = dynamics.g2(t)
            lam = 2 * (torch.log(alpha) - torch.log(sigma))
            s_hat = sigma / alpha
            clipped = ~(s_hat <= GRID_SIGMA_HAT_MAX)  # also catches inf / nan from alpha = 0
            s = torch.where(clipped, torch.full_like(s_hat, GRID_SIGMA_HAT_MAX), s_hat)
            t_s = t.clone()
            if bool(clipped.any()):
                t_s[clipped] = dynamics.t_from_sigma_hat(s[clipped]).to(torch.float64)
            alpha_s = dynamics.alpha(t_s)
            to_hat = s / sigma
        tl = lambda v: [float(u) for u in v]  # noqa: E731
        return cls(tl(t), tl(alpha), tl(sigma), tl(d_alpha), tl(d_sigma), tl(f), tl(g2), tl(lam), tl(s), tl(t_s),
                   tl(alpha_s), tl(to_hat))


def coefficients_at(dynamics: Dynamics, t: float) -> tuple[float, float, float, float]:
    """(alpha, sigma, d_alpha, d_sigma) at one time, as floats (for adaptive solvers)."""
    tt = torch.tensor([t], dtype=torch.float64)
    with torch.no_grad():
        return (float(dynamics.alpha(tt)), float(dynamics.sigma(tt)), float(dynamics.d_alpha(tt)),
                float(dynamics.d_sigma(tt)))


# ---- the denoiser as a sampler sees it -------------------------------------------------------------

class CountingDenoiser:
    """Calls D(x, t, cond) with t a (N,) tensor in x's dtype and counts the calls (NFE).

    Lives for one sampler call only: samplers keep no state between calls.
    """

    def __init__(self, denoiser: Any, cond: Tensor | None) -> None:
        if not callable(denoiser) or not hasattr(denoiser, "dynamics"):
            raise UserError("a sampler needs a denoiser: a callable D(x, t, cond) -> x0 with a .dynamics attribute "
                            "(see diffatlas.samplers.from_x0_fn / from_eps_model to wrap other models)")
        self.denoiser = denoiser
        self.dynamics: Dynamics = denoiser.dynamics
        self.cond = cond
        self.nfe = 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        self.nfe += 1
        dtype = x.dtype if x.is_floating_point() else torch.float64
        tt = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)
        if self.cond is None:
            return self.denoiser(x, tt)
        return self.denoiser(x, tt, self.cond)


# The seeding rule of every sampling call that is given seeds (samplers.sample, sampling.generate):
# sample i has one stream, torch.Generator().manual_seed(seeds[i]) on the CPU, which draws its prior
# first and then, continuing, its sampler noise; so a sample is a function of its own seed: not of the
# batch it is drawn in, the other seeds, or the device. (A second generator seeded seeds[i] + an offset
# would not do: the CPU generator keeps only the low 32 bits of a seed, so an offset of 2**32 or more
# gives the prior's own numbers back as the first step's noise.) One exception is the algorithm's own:
# pc's Langevin corrector takes one step size for the batch (a batch average, as in the reference
# code), so a pc sample with correctors depends on its batch.


class SeedNoise:
    """Per-sample streams of a seeded sampling call, passed to a stochastic sampler as its `generator`:
    stream i is torch.Generator().manual_seed(seeds[i]); `prior` draws row i of the prior from it, and
    every later draw (`randn`) continues it, on the CPU, then moves to the device. `chunk(a, b)`
    continues rows a..b-1's streams."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def chunk(self, start: int, stop: int) -> SeedNoise:
        part = SeedNoise(())
        part.generators = self.generators[start:stop]
        return part

    def prior(self, dynamics: Any, sample_shape: Sequence[int], dtype: torch.dtype,
              device: torch.device | str) -> Tensor:
        """(N, *sample_shape) prior draws, row i the first draw of stream i (in float64, then cast)."""
        rows = [dynamics.prior_sample((1, *sample_shape), generator=g, dtype=torch.float64) for g in self.generators]
        return torch.cat(rows).to(dtype=dtype, device=device)

    def randn(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"noise for {shape[0]} samples asked of {len(self.generators)} per-sample streams")
        rows = [torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in self.generators]
        return torch.cat(rows).to(device)


def noise_like(x: Tensor, generator: torch.Generator | SeedNoise | None) -> Tensor:
    """Standard normal noise shaped like x, drawn from `generator` (the global RNG if None; per
    sample for a SeedNoise)."""
    if isinstance(generator, SeedNoise):
        return generator.randn(x.shape, x.dtype, x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def finish(model: CountingDenoiser, x: Tensor, t_last: float, denoise_final: bool) -> SampleResult:
    """The convention's last step: the denoising step D(x, t_N) (Ho et al. 2020, Algorithm 2, t = 1)."""
    if denoise_final:
        x = model(x, t_last)
    return SampleResult(x, model.nfe)


def all_finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)
