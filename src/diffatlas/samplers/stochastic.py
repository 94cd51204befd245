"""Stochastic samplers and DDIM: ancestral, DDIM(eta), Euler-Maruyama, reverse diffusion,
predictor-corrector and annealed Langevin dynamics.

Notation for one step from grid time t = t_i to s = t_{i+1} < t (less noise), with
lambda = log-SNR = 2 log(alpha / sigma) and r = exp(lambda_t - lambda_s) in [0, 1):

    alpha_{t|s} = alpha_t / alpha_s,   sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = sigma_t^2 (1 - r)

(Kingma et al. 2021, eq. 10-11): the forward transition q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I).
Writing 1 - r = -expm1(lambda_t - lambda_s) keeps the variance accurate for tiny steps and exact
where alpha_t = 0 (rectified flow at t = 1: r = 0). No sampler here looks at the name or class of
the dynamics: only alpha, sigma, f, g^2 and log-SNR.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import UserError
from .base import (CountingDenoiser, GridCoefficients, SampleResult, all_finite, check_grid, finish, noise_like,
                   one_nfe_per_step, register_sampler, reject_unknown, variance_exploding)

Step = Callable[[CountingDenoiser, Tensor, GridCoefficients, int, "torch.Generator | None"], Tensor]


def prepare(denoiser: Any, x: Tensor, ts: Tensor, cond: Tensor | None) -> tuple[CountingDenoiser, GridCoefficients]:
    """Check the inputs and compute the grid's coefficients once (float64, host)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise UserError("a sampler's x must be a floating-point tensor (N, ...) of starting samples")
    model = CountingDenoiser(denoiser, cond)
    t = check_grid(model.dynamics, ts)
    return model, GridCoefficients.of(model.dynamics, t)


# ---- one step t_i -> t_{i+1} of each predictor ---------------------------------------------------

def ancestral_step(model: CountingDenoiser, x: Tensor, c: GridCoefficients, i: int,
                   generator: torch.Generator | None) -> Tensor:
    """Sample the Gaussian posterior q(x_s | x_t, x0 = D(x_t)) (Ho et al. 2020, eq. 6-7;
    Kingma et al. 2021, eq. 26-28):
        mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0
             = sqrt(r) sigma_s / sigma_t x_t + alpha_s (1 - r) x0,
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 = sigma_s^2 (1 - r)   (DDPM: beta-tilde_t)."""
    d = model(x, c.t[i])
    dl = c.lam[i] - c.lam[i + 1]                 # lambda_t - lambda_s <= 0
    one_minus_r = -math.expm1(dl)                # 1 - r
    coef_x = math.exp(0.5 * dl) * c.sigma[i + 1] / c.sigma[i]
    coef_d = c.alpha[i + 1] * one_minus_r
    std = c.sigma[i + 1] * math.sqrt(one_minus_r)
    return coef_x * x + coef_d * d + std * noise_like(x, generator)


def ddim_step(model: CountingDenoiser, x: Tensor, c: GridCoefficients, i: int,
              generator: torch.Generator | None, eta: float = 0.0) -> Tensor:
    """Song et al. 2021 (DDIM), eq. 12 with eq. 16's noise level, for any alpha/sigma:
        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,   eps = (x_t - alpha_t x0) / sigma_t,
        c = eta sigma_s sqrt(1 - r)   (= eta sqrt((1-a_s)/(1-a_t)) sqrt(1 - a_t/a_s) for DDPM).
    eta = 1 gives the ancestral step's mean and variance."""
    d = model(x, c.t[i])
    eps = (x - c.alpha[i] * d) / c.sigma[i]
    one_minus_r = -math.expm1(c.lam[i] - c.lam[i + 1])
    frac = eta * eta * one_minus_r               # c^2 / sigma_s^2
    out = c.alpha[i + 1] * d + c.sigma[i + 1] * math.sqrt(max(0.0, 1.0 - frac)) * eps
    if eta > 0:
        out = out + c.sigma[i + 1] * math.sqrt(frac) * noise_like(x, generator)
    return out


def euler_maruyama_step(model: CountingDenoiser, x: Tensor, c: GridCoefficients, i: int,
                        generator: torch.Generator | None) -> Tensor:
    """Euler-Maruyama on the reverse SDE dx = [f x - g^2 score] dt + g dw-bar (Song et al. 2021, eq. 6),
    stepping dt = s - t < 0 with the coefficients at t: x_s = x - (f x - g^2 score) h + sqrt(g^2 h) z, h = t - s."""
    d = model(x, c.t[i])
    score = (c.alpha[i] * d - x) / c.sigma[i] ** 2       # Tweedie: (alpha x0 - x) / sigma^2
    h = c.t[i] - c.t[i + 1]
    drift = c.f[i] * x - c.g2[i] * score
    return x - h * drift + math.sqrt(c.g2[i] * h) * noise_like(x, generator)


def reverse_diffusion_step(model: CountingDenoiser, x: Tensor, c: GridCoefficients, i: int,
                           generator: torch.Generator | None) -> Tensor:
    """Song et al. 2021, eq. 46-47 (App. E): the process's own discretization x_t = x_s + f_s(x_s) + G_s z with
    f_s(x) = (alpha_{t|s} - 1) x and G_s^2 = sigma_{t|s}^2 is reversed as
        x_s = x_t - f(x_t) + G^2 score + G z = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score + sigma_{t|s} z.
    VE: x_s = x_t + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z (SMLD's ancestral predictor);
    DDPM: x_s = (2 - sqrt(1 - beta)) x_t + beta score + sqrt(beta) z."""
    d = model(x, c.t[i])
    score = (c.alpha[i] * d - x) / c.sigma[i] ** 2
    a = c.alpha[i] / c.alpha[i + 1]
    g2 = c.sigma[i] ** 2 * -math.expm1(c.lam[i] - c.lam[i + 1])     # sigma_{t|s}^2
    return (2 - a) * x + g2 * score + math.sqrt(g2) * noise_like(x, generator)


def langevin_corrector(model: CountingDenoiser, x: Tensor, c: GridCoefficients, i: int,
                       generator: torch.Generator | None, snr: float, steps: int) -> Tensor:
    """Langevin corrector at t_i (Song et al. 2021, Algorithm 4): for each step
        z ~ N(0, I);  e = 2 (r ||z|| / ||score||)^2;  x = x + e score + sqrt(2 e) z,
    with ||.|| the per-sample norm averaged over the batch, as in the reference code (a per-sample
    ratio is heavy-tailed in low dimension: a sample at a mode has score ~ 0 and an unbounded step).
    One step size for the batch makes a sample depend on its batch. The rule is frame-invariant: in
    x / alpha it gives the same update. The VP variant's extra factor alpha_i = 1 - beta_i
    (Algorithm 5, ~1 for N = 1000) is not applied."""
    for _ in range(steps):
        d = model(x, c.t[i])
        score = (c.alpha[i] * d - x) / c.sigma[i] ** 2
        z = noise_like(x, generator)
        z_norm = z.flatten(1).norm(dim=1).mean()
        s_norm = score.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(x.dtype).tiny)
        e = 2 * (snr * z_norm / s_norm) ** 2
        x = x + e * score + torch.sqrt(2 * e) * z
    return x


def _check_sde_coefficients(c: GridCoefficients, name: str) -> None:
    n = len(c.t) - 1
    if not (all_finite(c.f[:n]) and all_finite(c.g2[:n])):
        bad = next(c.t[j] for j in range(n) if not (math.isfinite(c.f[j]) and math.isfinite(c.g2[j])))
        raise UserError(f"{name} evaluates the reverse SDE's f(t) and g(t)^2, which are infinite at t = {bad:g} for "
                        "this process (alpha(t) = 0); use ancestral, ddim, reverse-diffusion or an ODE sampler")


# ---- samplers ---------------------------------------------------------------------------------------

def _walk(step: Step, denoiser: Any, x: Tensor, ts: Tensor, generator: torch.Generator | None, cond: Tensor | None,
          denoise_final: bool) -> SampleResult:
    model, c = prepare(denoiser, x, ts, cond)
    for i in range(len(c.t) - 1):
        x = step(model, x, c, i, generator)
    return finish(model, x, c.t[-1], denoise_final)


@register_sampler("ancestral", "DDPM ancestral sampling through the Gaussian posterior, any grid (Ho et al. 2020, Alg. 2)",
                  one_nfe_per_step, kind="stochastic (ancestral)")
def ancestral(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
              cond: Tensor | None = None, denoise_final: bool = True, **options: Any) -> SampleResult:
    """Ancestral sampling: x_{t_{i+1}} ~ q(x_{t_{i+1}} | x_{t_i}, x0 = D(x_{t_i})).

    On a discrete DDPM with the "discrete" grid of all T steps this is Ho et al. (2020) Algorithm 2
    with sigma_t^2 = beta-tilde_t (the last step, without noise, is the final denoise); a shorter
    "discrete" grid gives the respaced sampler (Nichol & Dhariwal 2021); on a VE process it is the
    ancestral sampler of SMLD. x: (N, ...) drawn from the prior at ts[0]; ts: decreasing (steps,).
    NFE = steps (steps - 1 without the final denoise).
    """
    reject_unknown("ancestral", options, "no options")
    return _walk(ancestral_step, denoiser, x, ts, generator, cond, denoise_final)


def _ddim_kind(options: dict) -> str:
    eta = float(options.get("eta", 0.0))
    return f"stochastic (DDIM eta={eta:g})" if eta > 0 else "ODE"


@register_sampler("ddim", "DDIM, option eta (0 = deterministic, 1 = ancestral variance) (Song et al. 2021a)",
                  one_nfe_per_step, kind=_ddim_kind)
def ddim(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
         cond: Tensor | None = None, denoise_final: bool = True, eta: float = 0.0, **options: Any) -> SampleResult:
    """DDIM (Song, Meng & Ermon 2021, eq. 12 and 16) on any grid. eta in [0, 1]: 0 is the deterministic
    DDIM (noise is not drawn), 1 has the ancestral sampler's variance. NFE = steps."""
    reject_unknown("ddim", options, "eta")
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"ddim's eta must be in [0, 1] (0 = deterministic, 1 = ancestral variance), got {eta}")

    def step(model, x, c, i, g):
        return ddim_step(model, x, c, i, g, eta)

    return _walk(step, denoiser, x, ts, generator, cond, denoise_final)


@register_sampler("euler-maruyama", "Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6)", one_nfe_per_step,
                  kind="stochastic (SDE)")
def euler_maruyama(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
                   cond: Tensor | None = None, denoise_final: bool = True, **options: Any) -> SampleResult:
    """Euler-Maruyama on dx = [f x - g^2 score] dt + g dw-bar, score = (alpha D - x) / sigma^2.
    Refused (UserError) where f or g^2 is infinite on the grid (rectified flow at t = 1). NFE = steps."""
    reject_unknown("euler-maruyama", options, "no options")

    def step(model, x, c, i, g):
        if i == 0:
            _check_sde_coefficients(c, "euler-maruyama")
        return euler_maruyama_step(model, x, c, i, g)

    return _walk(step, denoiser, x, ts, generator, cond, denoise_final)


@register_sampler("reverse-diffusion", "reverse-diffusion predictor of the process's discretization (Song et al. 2021, eq. 47)",
                  one_nfe_per_step, kind="stochastic (SDE)")
def reverse_diffusion(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
                      cond: Tensor | None = None, denoise_final: bool = True, **options: Any) -> SampleResult:
    """The reverse-diffusion predictor alone (Song et al. 2021, eq. 47), built from alpha and sigma at the
    two grid points of each step; the final denoise replaces the reference code's noise-free last mean. NFE = steps."""
    reject_unknown("reverse-diffusion", options, "no options")
    return _walk(reverse_diffusion_step, denoiser, x, ts, generator, cond, denoise_final)


PREDICTORS: dict[str, Step] = {
    "reverse-diffusion": reverse_diffusion_step,
    "euler-maruyama": euler_maruyama_step,
    "ancestral": ancestral_step,
}


# Below this many predictor steps a corrector step costs more than it corrects: a budget that small
# goes to the predictor alone (Song et al. 2021 use 1000 predictor steps; at 10-20 NFE, halving the
# predictor's steps to pay for a corrector makes every process worse on exact denoisers: at 20 NFE
# pc with 10 + 10 gives sliced W2 0.12 on DDPM where the predictor alone gives 0.05).
PC_MIN_PREDICTOR_STEPS = 20


def _pc_plan(nfe: int, options: dict, max_steps: int | None = None) -> tuple[int, dict]:
    # pc costs (1 + corrector_steps) NFE per grid point: corrector at each point, then a predictor step or
    # the denoise. A process with fewer steps than the budget's predictor steps spends the rest on correctors.
    opts = dict(options)
    per = 1 + int(opts.get("corrector_steps", 1))
    steps = int(nfe) // per
    if steps < PC_MIN_PREDICTOR_STEPS and (max_steps is None or steps < max_steps):
        opts["corrector_steps"] = 0
        return max(1, min(int(nfe), max_steps or int(nfe))), opts
    if max_steps is not None and steps > max_steps:
        steps = max_steps
        opts.setdefault("corrector_steps", int(nfe) // steps - 1)
    return steps, opts


def _pc_snr(alpha: list[float]) -> float:
    # Song et al. (2021)'s values: 0.16 for VE, 0.01 for VP.
    return 0.16 if variance_exploding(alpha) else 0.01


def _pc_resolve(dynamics: Any, ts: Tensor, options: dict) -> dict:
    out = {"predictor": "reverse-diffusion", "corrector_steps": 1, **options}
    if out.get("snr") is None:
        out["snr"] = _pc_snr(GridCoefficients.of(dynamics, check_grid(dynamics, ts)).alpha)
    return out


@register_sampler("pc", "predictor-corrector with the Langevin corrector (Song et al. 2021, Alg. 1-5)", _pc_plan,
                  resolve=_pc_resolve, kind="stochastic (SDE + Langevin)")
def pc(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None, cond: Tensor | None = None,
       denoise_final: bool = True, predictor: str = "reverse-diffusion", snr: float | None = None,
       corrector_steps: int = 1, **options: Any) -> SampleResult:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1 order): at every grid point t_i,
    `corrector_steps` Langevin corrector steps with target signal-to-noise ratio `snr`, then one predictor
    step to t_{i+1} (or the final denoise at t_N).

    predictor: reverse-diffusion (default), euler-maruyama or ancestral.
    snr: default 0.16 where alpha = 1 on the whole grid (variance exploding: VE, NCSN, EDM) and 0.01
    otherwise (VP, sub-VP, DDPM, flow), Song et al. (2021)'s values for VE and VP.
    NFE = steps * (1 + corrector_steps) (one fewer without the final denoise). Its NFE plan drops the
    corrector when a budget leaves fewer than PC_MIN_PREDICTOR_STEPS predictor steps.
    """
    reject_unknown("pc", options, "predictor, snr, corrector_steps")
    if predictor not in PREDICTORS:
        raise UserError(f"pc's predictor {predictor!r} is unknown; choose one of: {', '.join(sorted(PREDICTORS))}")
    corrector_steps = int(corrector_steps)
    if corrector_steps < 0:
        raise UserError(f"pc's corrector_steps must be >= 0, got {corrector_steps}")
    model, c = prepare(denoiser, x, ts, cond)
    if predictor == "euler-maruyama":
        _check_sde_coefficients(c, "pc with the euler-maruyama predictor")
    if snr is None:
        snr = _pc_snr(c.alpha)
    snr = float(snr)
    if not snr > 0:
        raise UserError(f"pc's snr must be > 0, got {snr}")
    step = PREDICTORS[predictor]
    n = len(c.t) - 1
    for i in range(n + 1):
        x = langevin_corrector(model, x, c, i, generator, snr, corrector_steps)
        if i < n:
            x = step(model, x, c, i, generator)
    return finish(model, x, c.t[-1], denoise_final)


# The most noise levels a budget is spread over; the rest of the budget goes to steps per level.
LANGEVIN_MAX_LEVELS = 100


def _langevin_plan(nfe: int, options: dict, max_steps: int | None = None) -> tuple[int, dict]:
    # levels * n_steps_each + 1 <= nfe. A budget goes to levels first (up to LANGEVIN_MAX_LEVELS, or the
    # process's own levels), then to steps per level: with exact denoisers on a 2-D mixture, 19 levels of
    # one step each reach sliced W2 0.04-0.17 on every process at 20 NFE, where 4 levels of 4 steps reach
    # 0.1-13 (the jump between far-apart levels is what diverges, not the few steps per level).
    opts = dict(options)
    usable = int(nfe) - 1
    if usable < 1:
        opts["n_steps_each"] = 0  # the denoise alone
        return 1, opts
    levels = min(usable, LANGEVIN_MAX_LEVELS, max_steps or usable)
    opts["n_steps_each"] = usable // levels
    return levels, opts


def langevin_relative_step(n_steps_each: int) -> float:
    """The default step a_i / s_i^2: NCSN's 0.2 with its 100 steps per level (Song & Ermon 2019), larger
    with fewer steps so that a level still mixes (20 / n_steps_each), at most 1: a step of a_i = s_i^2
    moves x to D(x) plus fresh noise, and larger ones overshoot (2 diverges)."""
    return min(1.0, 20.0 / max(1, int(n_steps_each)))


def _langevin_resolve(dynamics: Any, ts: Tensor, options: dict) -> dict:
    out = dict(options)
    if out.get("step_lr") is None:
        s_last = GridCoefficients.of(dynamics, check_grid(dynamics, ts)).s[-1]
        out["step_lr"] = langevin_relative_step(out.get("n_steps_each", 100)) * s_last**2
    return out


@register_sampler("langevin", "annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1)", _langevin_plan,
                  resolve=_langevin_resolve, kind="stochastic (Langevin)")
def langevin(denoiser: Any, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
             cond: Tensor | None = None, denoise_final: bool = True, n_steps_each: int = 100,
             step_lr: float | None = None, **options: Any) -> SampleResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over the grid's noise levels.

    Runs in the scaled frame x_hat = x / alpha with noise levels s_i = sigma_hat(t_i), so it is defined
    for every dynamics; the score there is (D - x_hat) / s_i^2. At each level i, `n_steps_each` steps
        x_hat <- x_hat + a_i score + sqrt(2 a_i) z,   a_i = step_lr * s_i^2 / s_L^2   (s_L = last level).
    step_lr: NCSN uses 2e-5 with s_L = 0.01 and n_steps_each = 100 (a relative step a_i / s_i^2 = 0.2);
    the default None takes the relative step `langevin_relative_step(n_steps_each)`: 0.2 s_L^2 with 100
    steps (exactly 2e-5 for NCSN), larger for fewer steps per level (at most s_L^2).
    NCSNv2 (Song & Ermon 2020) uses n_steps_each = 5 with step_lr = 6.2e-6 on CIFAR-10 (s_L = 0.01)
    and a final denoising step, as here. step_lr / s_L^2 >= 2 makes every step overshoot: refused.
    Levels above GRID_SIGMA_HAT_MAX (rectified flow at t = 1) are clipped to it. Use geometric levels
    (the "logsnr" grid, the default): on grids dense only near t_min the steps at the smallest levels
    are too short to re-equilibrate. NFE = steps * n_steps_each + 1 (the final denoise).
    """
    reject_unknown("langevin", options, "n_steps_each, step_lr")
    n_steps_each = int(n_steps_each)
    if n_steps_each < 0:
        raise UserError(f"langevin's n_steps_each must be >= 0, got {n_steps_each}")
    model, c = prepare(denoiser, x, ts, cond)
    s_last = c.s[-1]
    if step_lr is None:
        step_lr = langevin_relative_step(n_steps_each) * s_last**2
    step_lr = float(step_lr)
    if not 0 < step_lr < 2 * s_last**2:
        raise UserError(f"langevin's step_lr must be in (0, 2 s_L^2) = (0, {2 * s_last**2:.3g}) for the last noise "
                        f"level s_L = {s_last:.3g} (larger steps diverge), got {step_lr:g}")
    x_hat = c.to_hat[0] * x
    for i in range(len(c.t)):
        a = step_lr * (c.s[i] / s_last) ** 2
        for _ in range(n_steps_each):
            d = model(c.alpha_s[i] * x_hat, c.t_s[i])
            score = (d - x_hat) / c.s[i] ** 2
            x_hat = x_hat + a * score + math.sqrt(2 * a) * noise_like(x, generator)
    return finish(model, c.alpha_s[-1] * x_hat, c.t_s[-1], denoise_final)
