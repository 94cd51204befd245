"""Deterministic samplers of the probability-flow ODE (Euler, Heun, adaptive Dormand-Prince 5(4),
DPM-Solver++(2M)) and EDM's stochastic sampler.

Frames. rk45, and euler and heun with frame="time", integrate the ODE in the dynamics' own (t, x)
frame with the velocity

    dx/dt = d_alpha(t) D(x, t) + d_sigma(t) eps,   eps = (x - alpha D) / sigma

(= f x - g^2/2 score, Song et al. 2021, eq. 13), which stays finite where f does not (rectified flow
at t = 1). For EDM (alpha = 1, sigma = t) this is Karras et al. (2022)'s ODE dx/dsigma = (x - D)/sigma;
for other processes it is a different discretization of the same ODE than Karras's scaled frame.
The `edm` sampler, and euler and heun with frame="sigma", work in that scaled frame (x_hat = x / alpha,
s = sigma_hat, dx_hat/ds = (x_hat - D)/s), mapped to each process's time by `t_from_sigma_hat`; their
default frame="auto" takes it where alpha = 1 (VE, NCSN, EDM), where the process's time is exponential
in sigma and an Euler step in t overshoots. dpm-solver++ works in log-SNR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from .base import (CountingDenoiser, GridCoefficients, SampleResult, check_grid, coefficients_at, finish,
                   noise_like, one_nfe_per_step, register_sampler, reject_unknown, two_nfe_per_step,
                   variance_exploding)
from .stochastic import prepare


FRAMES = ("auto", "time", "sigma")


def _velocity(model: CountingDenoiser, x: Tensor, c: GridCoefficients, i: int) -> Tensor:
    """dx/dt = d_alpha D + d_sigma (x - alpha D) / sigma at grid point i."""
    d = model(x, c.t[i])
    return c.d_alpha[i] * d + c.d_sigma[i] * (x - c.alpha[i] * d) / c.sigma[i]


def _slope_hat(model: CountingDenoiser, x_hat: Tensor, s: float, t: float, alpha: float) -> Tensor:
    """dx_hat/ds = (x_hat - D(x; s)) / s in the scaled frame (Karras et al. 2022, eq. 4 with alpha = 1)."""
    return (x_hat - model(alpha * x_hat, t)) / s


def _heun_step_hat(model: CountingDenoiser, x_hat: Tensor, c: GridCoefficients, i: int, s_from: float,
                   t_from: float, a_from: float) -> Tensor:
    """One Heun step in the scaled frame from level s_from (time t_from, alpha a_from) to s_{i+1}
    (Karras et al. 2022, Alg. 2, lines 7-11)."""
    d = _slope_hat(model, x_hat, s_from, t_from, a_from)
    h = c.s[i + 1] - s_from
    x_next = x_hat + h * d
    d2 = _slope_hat(model, x_next, c.s[i + 1], c.t_s[i + 1], c.alpha_s[i + 1])
    return x_hat + h * 0.5 * (d + d2)


def _frame(name: str, frame: str, c: GridCoefficients) -> str:
    if frame not in FRAMES:
        raise UserError(f"{name}'s frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    if frame == "auto":
        return "sigma" if variance_exploding(c.alpha) else "time"
    return frame


def _resolve_frame(dynamics: Any, ts: Tensor, options: dict) -> dict:
    out = dict(options)
    if out.get("frame", "auto") == "auto":
        out["frame"] = _frame("", "auto", GridCoefficients.of(dynamics, check_grid(dynamics, ts)))
    return out


@register_sampler("euler", "Euler steps on the probability-flow ODE, in the process's time or in sigma",
                  one_nfe_per_step, resolve=_resolve_frame, kind="ODE")
def euler(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
          cond: Tensor | None = None, denoise_final: bool = True, frame: str = "auto", **options: Any) -> SampleResult:
    """Euler's method on the probability-flow ODE. NFE = steps (the final denoise is the Euler step to
    sigma = 0). Uses no noise.

    frame "time": x <- x + (t_{i+1} - t_i) v(x, t_i) with v = d_alpha D + d_sigma eps (the process's own time).
    frame "sigma": x_hat <- x_hat + (s_{i+1} - s_i) (x_hat - D) / s_i in the scaled frame x_hat = x / alpha,
    s = sigma_hat (Karras et al. 2022, eq. 4); on DDPM-type processes this is deterministic DDIM
    (Song et al. 2021a, eq. 14). "auto": sigma where alpha = 1 on the grid (VE, NCSN, EDM: the ODE is
    nearly linear in sigma, not in the exponential time of VE), time otherwise.
    """
    reject_unknown("euler", options, "frame (auto, time, sigma)")
    model, c = prepare(denoiser, x, ts, cond)
    if _frame("euler", frame, c) == "time":
        for i in range(len(c.t) - 1):
            x = x + (c.t[i + 1] - c.t[i]) * _velocity(model, x, c, i)
        return finish(model, x, c.t[-1], denoise_final)
    x_hat = c.to_hat[0] * x
    for i in range(len(c.t) - 1):
        x_hat = x_hat + (c.s[i + 1] - c.s[i]) * _slope_hat(model, x_hat, c.s[i], c.t_s[i], c.alpha_s[i])
    return finish(model, c.alpha_s[-1] * x_hat, c.t_s[-1], denoise_final)


@register_sampler("heun", "Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1)",
                  two_nfe_per_step, resolve=_resolve_frame, kind="ODE")
def heun(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
         cond: Tensor | None = None, denoise_final: bool = True, frame: str = "auto", **options: Any) -> SampleResult:
    """Karras et al. (2022) Algorithm 1: every step between two grid points (all with sigma > 0) gets
    the second-order correction; the step to sigma = 0 is the final denoise (Algorithm 1's last,
    uncorrected Euler step). NFE = 2 (steps - 1) + 1; 18 steps = 35 NFE as in EDM.

    frame: as for `euler`. "sigma" is Karras et al.'s own frame and equals `edm` with S_churn = 0;
    "time" integrates dx/dt in the process's time; "auto" picks sigma where alpha = 1 on the grid.
    """
    reject_unknown("heun", options, "frame (auto, time, sigma)")
    model, c = prepare(denoiser, x, ts, cond)
    if _frame("heun", frame, c) == "time":
        for i in range(len(c.t) - 1):
            h = c.t[i + 1] - c.t[i]
            d = _velocity(model, x, c, i)                   # Alg. 1, line 4: d_i = dx/dt at t_i
            x_euler = x + h * d                             # line 5: Euler step
            d2 = _velocity(model, x_euler, c, i + 1)        # line 7: slope at t_{i+1}
            x = x + h * 0.5 * (d + d2)                      # line 8: trapezoidal rule
        return finish(model, x, c.t[-1], denoise_final)
    x_hat = c.to_hat[0] * x
    for i in range(len(c.t) - 1):
        x_hat = _heun_step_hat(model, x_hat, c, i, c.s[i], c.t_s[i], c.alpha_s[i])
    return finish(model, c.alpha_s[-1] * x_hat, c.t_s[-1], denoise_final)


def _edm_kind(options: dict) -> str:
    churn = float(options.get("S_churn", 0.0))
    return f"stochastic (EDM S_churn={churn:g})" if churn > 0 else "ODE"


@register_sampler("edm", "EDM stochastic sampler, S_churn/S_min/S_max/S_noise (Karras et al. 2022, Alg. 2)",
                  two_nfe_per_step, kind=_edm_kind)
def edm(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None, cond: Tensor | None = None,
        denoise_final: bool = True, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"),
        S_noise: float = 1.0, **options: Any) -> SampleResult:
    """Karras et al. (2022) Algorithm 2 in the scaled frame x_hat = x / alpha, s_i = sigma_hat(t_i).

    gamma_i = min(S_churn / N, sqrt(2) - 1) where S_min <= s_i <= S_max (N = grid points), else 0;
    the raised level s_i (1 + gamma_i) is capped at the grid's top level so that the denoiser is never
    asked about a time outside the grid's range. With S_churn = 0 this is Heun in the scaled frame (on
    EDM's dynamics it equals `heun`). Levels above GRID_SIGMA_HAT_MAX (flow at t = 1) are clipped to it.
    NFE = 2 (steps - 1) + 1. Karras et al.'s ImageNet-64 setting: S_churn=80, S_min=0.05, S_max=50, S_noise=1.003.
    """
    reject_unknown("edm", options, "S_churn, S_min, S_max, S_noise")
    S_churn, S_min, S_max, S_noise = float(S_churn), float(S_min), float(S_max), float(S_noise)
    if S_churn < 0 or S_noise <= 0 or S_min > S_max:
        raise UserError(f"edm needs S_churn >= 0, S_noise > 0 and S_min <= S_max; got S_churn={S_churn}, "
                        f"S_noise={S_noise}, S_min={S_min}, S_max={S_max}")
    model, c = prepare(denoiser, x, ts, cond)
    n = len(c.t) - 1
    dyn = model.dynamics
    # Alg. 2, line 4 (deterministic part): gamma_i and the raised levels s_up, with their times, before the loop.
    g_max = min(S_churn / len(c.t), math.sqrt(2) - 1)
    s_up = [min(c.s[i] * (1 + (g_max if S_min <= c.s[i] <= S_max else 0.0)), c.s[0]) for i in range(n)]
    raised = [i for i in range(n) if s_up[i] > c.s[i]]
    t_up, a_up = list(c.t_s[:n]), list(c.alpha_s[:n])
    if raised:
        with torch.no_grad():
            tt = dyn.t_from_sigma_hat(torch.tensor([s_up[i] for i in raised], dtype=torch.float64)).to(torch.float64)
            tt = tt.clamp(float(dyn.t_min), float(dyn.t_max))
            aa = dyn.alpha(tt)
        for j, i in enumerate(raised):
            t_up[i], a_up[i] = float(tt[j]), float(aa[j])
    x_hat = c.to_hat[0] * x
    for i in range(n):
        if s_up[i] > c.s[i]:                                                   # line 5: x_hat_i = x_i + sqrt(s_up^2 - s_i^2) eps
            x_hat = x_hat + math.sqrt(s_up[i] ** 2 - c.s[i] ** 2) * S_noise * noise_like(x, generator)
        x_hat = _heun_step_hat(model, x_hat, c, i, s_up[i], t_up[i], a_up[i])  # lines 7-11 from the raised level
    return finish(model, c.alpha_s[-1] * x_hat, c.t_s[-1], denoise_final)


@register_sampler("dpm-solver++", "DPM-Solver++(2M): multistep 2nd order in log-SNR, data prediction (Lu et al. 2022b)",
                  one_nfe_per_step, kind="ODE")
def dpm_solver_pp(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
                  cond: Tensor | None = None, denoise_final: bool = True, **options: Any) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) with lambda = log(alpha / sigma) (half the log-SNR):

        h_i = lambda_{i+1} - lambda_i,  r_i = h_{i-1} / h_i,
        D_i' = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1}          (D_i' = D_i on the first step)
        x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) D_i'.

    Guards: a step whose h_{i-1} or h_i is not finite and positive (alpha = 0 at t_max gives h = inf;
    equal log-SNRs give h = 0) falls back to the first-order update, so no grid of 1..1000 steps
    produces NaN/Inf. The step to sigma = 0 is the final denoise (the first-order update with h = inf).
    NFE = steps.
    """
    reject_unknown("dpm-solver++", options, "no options")
    model, c = prepare(denoiser, x, ts, cond)
    d_prev: Tensor | None = None
    h_prev = math.nan
    for i in range(len(c.t) - 1):
        d = model(x, c.t[i])
        h = 0.5 * (c.lam[i + 1] - c.lam[i])
        d_use = d
        if d_prev is not None and math.isfinite(h_prev) and math.isfinite(h) and h_prev > 0 and h > 0:
            r = h_prev / h
            d_use = (1 + 0.5 / r) * d - (0.5 / r) * d_prev                     # Alg. 2, line 6
        x = (c.sigma[i + 1] / c.sigma[i]) * x - (c.alpha[i + 1] * math.expm1(-h)) * d_use  # line 7
        d_prev, h_prev = d, h
    return finish(model, x, c.t[-1], denoise_final)


# ---- adaptive Dormand-Prince 5(4) ------------------------------------------------------------------
# Butcher tableau of Dormand & Prince (1980) (Hairer, Norsett & Wanner, Table II.5.2); 5th-order weights B
# (also the last row of A: first same as last) and E = B - B*, B* the embedded 4th-order weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def dormand_prince(f: Callable[[Tensor, float], Tensor], y: Tensor, t0: float, t1: float, *, rtol: float,
                   atol: float, max_evals: int = 100_000, what: str = "the ODE solver") -> tuple[Tensor, int]:
    """Adaptive Dormand-Prince 5(4) (Dormand & Prince 1980) for dy/dt = f(y, t) from t0 to t1 (either direction).

    The whole tensor is one system: one step size, error measured as the RMS over all elements of
    err / (atol + rtol max(|y|, |y_new|)); step factor 0.9 err^(-1/5) clipped to [0.2, 10] (no growth
    right after a rejection); first step by Hairer et al. (1993, II.4). Returns (y(t1), evaluations of f):
    6 per accepted or rejected step, +2 to start. Raises UserError past `max_evals` evaluations.
    """
    rtol, atol = float(rtol), float(atol)
    if not (rtol > 0 and atol > 0):
        raise UserError(f"{what} needs rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}")
    if t0 == t1:
        return y, 0
    sgn = 1.0 if t1 > t0 else -1.0                                            # direction of time
    span = abs(t1 - t0)
    evals = 0

    def fe(v: Tensor, t: float) -> Tensor:
        nonlocal evals
        evals += 1
        return f(v, t)

    def rms(v: Tensor) -> float:
        return float(v.detach().pow(2).mean().sqrt())

    fy = fe(y, t0)
    # Initial step size (Hairer, Norsett & Wanner 1993, II.4, "starting step size").
    scale = atol + rtol * y.abs()
    d0, d1 = rms(y / scale), rms(fy / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = fe(y + sgn * h0 * fy, t0 + sgn * h0)
    d2 = rms((f1 - fy) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
    h_abs = min(100 * h0, h1, span)
    t, rejected = t0, False
    while sgn * (t1 - t) > 0:
        if evals > max_evals:
            raise UserError(f"{what} used more than max_nfe = {max_evals} evaluations before reaching t = {t1:g}; "
                            "loosen rtol/atol or raise max_nfe")
        t_new = t + sgn * h_abs
        if sgn * (t1 - t_new) <= 1e-12 * max(1.0, abs(t1)):
            t_new = t1
        dt = t_new - t
        k = [fy]
        for j in range(1, 7):                                                 # stages 2..7 (7 = FSAL, at t_new)
            y_j = y + dt * sum(a * kk for a, kk in zip(_A[j], k) if a != 0.0)
            k.append(fe(y_j, t + _C[j] * dt))
        y_new = y_j                                                           # stage 7 point = 5th-order solution
        err = dt * sum(e * kk for e, kk in zip(_E, k) if e != 0.0)
        en = rms(err / (atol + rtol * torch.maximum(y.abs(), y_new.abs())))
        if en <= 1.0:
            t, y, fy = t_new, y_new, k[6]
            factor = 10.0 if en == 0 else min(10.0, 0.9 * en ** -0.2)
            h_abs *= min(1.0, factor) if rejected else factor
            rejected = False
        else:
            h_abs *= max(0.2, 0.9 * en ** -0.2)
            rejected = True
    return y, evals


def _rk45_plan(nfe: int, options: dict, max_steps: int | None = None) -> tuple[int, dict]:
    # Adaptive: only the grid's ends matter; the budget sets rtol = atol = 1 / nfe^2 (10 -> 1e-2, 20 -> 2.5e-3,
    # 1000 -> 1e-6). Looser tolerances let EDM's ODE (sigma from 80) end far from the data (sliced W2 ~ 3 on a
    # unit-scale mixture at 2.5e-2). The NFE it reports is what it used, which may exceed the budget.
    tol = min(1e-2, max(1e-8, float(max(int(nfe), 2)) ** -2))
    opts = dict(options)
    opts.setdefault("rtol", tol)
    opts.setdefault("atol", tol)
    return 2, opts


@register_sampler("rk45", "adaptive Dormand-Prince 5(4) on the probability-flow ODE (as Song et al. 2021 use)",
                  _rk45_plan, kind="ODE")
def rk45(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
         cond: Tensor | None = None, denoise_final: bool = True, rtol: float = 1e-5, atol: float = 1e-5,
         max_nfe: int = 100_000, **options: Any) -> SampleResult:
    """Adaptive Dormand-Prince 5(4) (:func:`dormand_prince`) on dx/dt = d_alpha D + d_sigma eps from ts[0] to
    ts[-1] (the inner grid points are ignored), rtol = atol = 1e-5 as in Song et al. (2021).

    The whole batch is one ODE system (as Song et al. solve it with scipy): one step size for all samples.
    NFE counts every evaluation (6 per accepted or rejected step, +2 to start, +1 final denoise).
    """
    reject_unknown("rk45", options, "rtol, atol, max_nfe")
    model, c = prepare(denoiser, x, ts, cond)
    dyn = model.dynamics
    t1 = c.t[-1]

    def vel(y: Tensor, t: float) -> Tensor:
        a, s, da, ds = coefficients_at(dyn, t)
        d = model(y, t)
        return da * d + ds * (y - a * d) / s

    x, _ = dormand_prince(vel, x, c.t[0], t1, rtol=rtol, atol=atol, max_evals=max_nfe, what="rk45")
    return finish(model, x, t1, denoise_final)
