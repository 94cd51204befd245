"""Noise schedules and sampling time grids, as pure functions.

Beta schedules return float64 tensors of T betas; sigma schedules return float64 sigma
tables; sampling grids map (dynamics, steps) to a decreasing float64 tensor of times that
starts at t_max and ends at t_min (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .registry import Registry

BETA_SCHEDULES: Registry = Registry("beta schedule")
GRIDS: Registry = Registry("time grid")

# Largest noise level a sampling grid starts from, in the scaled frame x / alpha: for data of scale ~1,
# x / alpha at sigma_hat = 1e4 is pure noise to within 1e-4, so higher levels (rectified flow reaches
# sigma_hat = inf at t = 1) add nothing but steps. It is below denoiser.DENOISER_SIGMA_HAT_MAX (1e5, the
# largest level a network can tell apart, where c_noise is clamped) on purpose: every level a grid
# visits is one the network sees unclamped. The two are different limits; neither may follow the other.
GRID_SIGMA_HAT_MAX = 1e4


@BETA_SCHEDULES.register("linear", "betas linear in i from beta_min to beta_max (Ho et al. 2020)")
def beta_linear(steps: int, beta_min: float = 1e-4, beta_max: float = 0.02, scale: float = 1.0) -> Tensor:
    # Both ends are multiplied by `scale`: the scale factor on the range used to compare schedules
    # at equal numbers of steps (Nichol & Dhariwal 2021 use scale = 1000 / T).
    return torch.linspace(scale * beta_min, scale * beta_max, steps, dtype=torch.float64)


@BETA_SCHEDULES.register("quadratic", "sqrt(beta) linear from sqrt(beta_min) to sqrt(beta_max)")
def beta_quadratic(steps: int, beta_min: float = 1e-4, beta_max: float = 0.02, scale: float = 1.0) -> Tensor:
    return torch.linspace(math.sqrt(scale * beta_min), math.sqrt(scale * beta_max), steps, dtype=torch.float64) ** 2


@BETA_SCHEDULES.register("sigmoid", "betas along a sigmoid over [-6, 6] between beta_min and beta_max")
def beta_sigmoid(steps: int, beta_min: float = 1e-4, beta_max: float = 0.02, scale: float = 1.0) -> Tensor:
    s = torch.sigmoid(torch.linspace(-6.0, 6.0, steps, dtype=torch.float64))
    return scale * (beta_min + (beta_max - beta_min) * s)


@BETA_SCHEDULES.register("cosine", "alpha_bar = cos^2 schedule with offset s=0.008 (Nichol & Dhariwal 2021, eq. 17)")
def beta_cosine(steps: int, beta_min: float = 1e-4, beta_max: float = 0.02, scale: float = 1.0, s: float = 0.008,
                max_beta: float = 0.999) -> Tensor:
    # alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2); beta_t = 1 - alpha_bar_t/alpha_bar_{t-1},
    # clipped at max_beta = 0.999 to avoid singularities near t = T (Nichol & Dhariwal 2021, eq. 17 and sec. 3.2).
    # The shape is fixed: beta_min, beta_max and scale are accepted for a uniform signature and unused
    # (clipping at the linear schedule's beta_max = 0.02 would break the closed form above).
    i = torch.arange(steps + 1, dtype=torch.float64)
    f = torch.cos((i / steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigma_geometric(levels: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Geometric sigmas, increasing from sigma_min to sigma_max (Song & Ermon 2019)."""
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), levels, dtype=torch.float64))


def sigma_karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Decreasing sigmas sigma_max -> sigma_min, uniform in sigma^(1/rho) (Karras et al. 2022, eq. 5)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


# ---- sampling time grids: (dynamics, steps) -> t_max = t_0 > ... > t_{steps-1} = t_min ----------

def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"a time grid needs at least 1 step, got {steps}")


@GRIDS.register("uniform", "uniform in t from t_max to t_min")
def grid_uniform(dynamics, steps: int) -> Tensor:
    _check_steps(steps)
    if steps == 1:
        return torch.tensor([dynamics.t_max], dtype=torch.float64)
    return torch.linspace(dynamics.t_max, dynamics.t_min, steps, dtype=torch.float64)


@GRIDS.register("quadratic", "uniform in sqrt(t): denser near the data (Song et al. 2021 DDIM 'quad')")
def grid_quadratic(dynamics, steps: int) -> Tensor:
    _check_steps(steps)
    if steps == 1:
        return torch.tensor([dynamics.t_max], dtype=torch.float64)
    r = torch.linspace(math.sqrt(dynamics.t_max), math.sqrt(dynamics.t_min), steps, dtype=torch.float64)
    return r**2


@GRIDS.register("karras", "uniform in sigma_hat^(1/7) (Karras et al. 2022, eq. 5), mapped to each process's time")
def grid_karras(dynamics, steps: int, rho: float = 7.0) -> Tensor:
    _check_steps(steps)
    t_ends = torch.tensor([dynamics.t_max, dynamics.t_min], dtype=torch.float64)
    # sigma_hat is infinite at t_max for processes that end in pure noise (rectified flow): clip it.
    s_max, s_min = (float(v) for v in dynamics.sigma_hat(t_ends).clamp(max=GRID_SIGMA_HAT_MAX))
    if steps == 1:
        return t_ends[:1]
    t = dynamics.t_from_sigma_hat(sigma_karras(steps, s_min, s_max, rho))
    t[0], t[-1] = dynamics.t_max, dynamics.t_min
    return t


@GRIDS.register("logsnr", "uniform in log-SNR over the process's range (as DPM-Solver uses)")
def grid_logsnr(dynamics, steps: int) -> Tensor:
    _check_steps(steps)
    t_ends = torch.tensor([dynamics.t_max, dynamics.t_min], dtype=torch.float64)
    lam_lo, lam_hi = (float(v) for v in dynamics.log_snr(t_ends).clamp(min=-2 * math.log(GRID_SIGMA_HAT_MAX)))
    if steps == 1:
        return t_ends[:1]
    t = dynamics.t_from_log_snr(torch.linspace(lam_lo, lam_hi, steps, dtype=torch.float64))
    t[0], t[-1] = dynamics.t_max, dynamics.t_min
    return t


@GRIDS.register("discrete", "a discrete process's own steps, evenly respaced to `steps` of them")
def grid_discrete(dynamics, steps: int) -> Tensor:
    _check_steps(steps)
    times = dynamics.discrete_times()  # increasing, t_1 .. t_T
    T = len(times)
    if steps > T:
        raise ValueError(f"asked for {steps} steps of a process with only {T} discrete steps")
    # Evenly spaced subsequence including both ends (respacing, Nichol & Dhariwal 2021, sec. 4).
    idx = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()
    return times[idx]


def snap_to_steps(dynamics, t: Tensor) -> Tensor:
    """A grid moved onto a discrete process's own steps, keeping its number of points.

    A network of a discrete process was trained at its T steps only, so every grid (log-SNR, Karras,
    uniform, ...) is mapped to the steps of nearest log-SNR: point k (counted from the data end) takes
    step index max(nearest_k, index_{k-1} + 1), capped so that the points after it still fit. The
    result has as many distinct steps as the grid, in order, from t_T = t_max to t_1 = t_min; a grid of
    T points is all T steps. Needs len(t) <= T (ValueError otherwise)."""
    times = dynamics.discrete_times()                      # increasing, t_1 .. t_T
    T, n = len(times), len(t)
    if n > T:
        raise ValueError(f"asked for {n} steps of a process with only {T} discrete steps")
    lam_steps = dynamics.log_snr(times)
    target = dynamics.log_snr(t.to(torch.float64)).flip(0)   # from the data end (largest log-SNR) upwards
    nearest = (target[:, None] - lam_steps[None, :]).abs().argmin(dim=1).tolist()
    idx: list[int] = []
    for k, j in enumerate(nearest):
        lo = idx[-1] + 1 if idx else 0
        idx.append(min(max(j, lo), T - n + k))
    return times[torch.tensor(idx[::-1], dtype=torch.long)]


def make_grid(name: str, dynamics, steps: int) -> Tensor:
    """The grid `name` with `steps` points; on a discrete process every grid lies on the process's own
    steps (:func:`snap_to_steps`)."""
    t = GRIDS.get(name)(dynamics, steps)
    if getattr(dynamics, "steps", None) is not None and name != "discrete":
        t = snap_to_steps(dynamics, t)
    return t
