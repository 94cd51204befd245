"""A diffusers scheduler config: its training process, its sampling conventions, its timesteps as a grid.

A DDPM-family scheduler config holds two different things:

- the **process** the UNet was trained on: num_train_timesteps T, the beta schedule, prediction_type.
  It becomes the run's dynamics (diffatlas's discrete DDPM of the same betas; step k of diffusers,
  k = 0..T-1, is step k + 1 of Ho et al. 2020, at time t = (k + 1) / T) and parameterization
  (epsilon -> eps, v_prediction -> v, sample -> x0; sigma_data = 1, so the network input is x_t);
- **sampling conventions**: timestep_spacing, steps_offset, set_alpha_to_one, clip_sample,
  thresholding, variance_type. They are stated in the run (source.json), not applied: diffatlas's
  samplers do not clip, and `diffusers_grid` turns a scheduler's timesteps into the time grid on
  which diffatlas's ddim (DDIMScheduler) or ancestral (DDPMScheduler) sampler takes the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..dynamics.discrete import DDPM
from ..errors import UserError

# diffusers beta_schedule -> diffatlas BETA_SCHEDULES name (same betas: linear; scaled_linear = sqrt(beta)
# linear; squaredcos_cap_v2 = Nichol & Dhariwal's cosine with max_beta 0.999; sigmoid over [-6, 6]).
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# Schedulers whose config states a discrete DDPM training process (betas, T, prediction_type).
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                     "EulerDiscreteScheduler")
CONVENTION_KEYS = ("timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample", "clip_sample_range",
                   "thresholding", "variance_type")


@dataclass(frozen=True)
class SchedulerProcess:
    """What a diffusers scheduler config says about a model.

    scheduler: its class name; dynamics: keyword arguments of diffatlas's DDPM for the training
    process; parameterization: eps, v or x0; conventions: how diffusers samples with it (stated, not
    applied); notes: sentences about what diffatlas does differently.
    """

    scheduler: str
    dynamics: dict[str, Any]
    parameterization: str
    conventions: dict[str, Any]
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_scheduler(config: dict[str, Any]) -> SchedulerProcess:
    """The training process of a DDPM/DDIM-family scheduler config; UserError for what diffatlas cannot take."""
    name = str(config.get("_class_name", "DDPMScheduler"))
    if name not in SCHEDULER_CLASSES:
        raise UserError(f"scheduler {name} is not a DDPM/DDIM-family scheduler; diffatlas imports models of "
                        f"{', '.join(SCHEDULER_CLASSES)}")
    if config.get("trained_betas") is not None:
        raise UserError("the scheduler gives an explicit beta table (trained_betas); diffatlas's DDPM takes a named "
                        f"schedule ({', '.join(BETA_SCHEDULES)})")
    if config.get("rescale_betas_zero_snr"):
        raise UserError("the scheduler rescales its betas to zero terminal SNR (rescale_betas_zero_snr): alpha_bar_T = 0, "
                        "which diffatlas's discrete DDPM (alpha_bar > 0 at every step) does not represent")
    schedule = config.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise UserError(f"beta_schedule {schedule!r} is not supported; supported: {', '.join(BETA_SCHEDULES)}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise UserError(f"prediction_type {prediction!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}")
    variance = config.get("variance_type")
    if variance in ("learned", "learned_range"):
        raise UserError(f"variance_type={variance}: the UNet predicts its variance as well; diffatlas imports "
                        "models with a fixed variance")
    dynamics = {"steps": int(config.get("num_train_timesteps", 1000)), "schedule": BETA_SCHEDULES[schedule],
                "beta_min": float(config.get("beta_start", 1e-4)), "beta_max": float(config.get("beta_end", 0.02)),
                "scale": 1.0}
    try:
        DDPM(**dynamics)
    except ValueError as e:
        raise UserError(f"the scheduler's process: {e}") from None
    conventions = {k: config[k] for k in CONVENTION_KEYS if k in config}
    notes = []
    if config.get("thresholding"):
        notes.append("diffusers thresholds every x0 estimate while sampling (thresholding=true); diffatlas's samplers "
                     "do not")
    elif config.get("clip_sample"):
        notes.append(f"diffusers clips every x0 estimate to [-{config.get('clip_sample_range', 1.0)}, "
                     f"{config.get('clip_sample_range', 1.0)}] while sampling (clip_sample=true); diffatlas's samplers do "
                     "not, so they reproduce this scheduler with clip_sample=false")
    if name == "DDPMScheduler" and variance not in (None, "fixed_small", "fixed_small_log"):
        notes.append(f"DDPMScheduler samples with variance_type={variance}; diffatlas's ancestral sampler uses the "
                     "posterior variance (fixed_small)")
    return SchedulerProcess(name, dynamics, PREDICTION_TYPES[prediction], conventions, tuple(notes))


def diffusers_timesteps(config: dict[str, Any], num_inference_steps: int) -> list[int]:
    """The timesteps diffusers' DDPMScheduler / DDIMScheduler `set_timesteps` choose, in sampling order
    (timestep_spacing "linspace", "leading" (+ steps_offset) or "trailing"; Lin et al. 2024, Table 2)."""
    T, n = int(config.get("num_train_timesteps", 1000)), int(num_inference_steps)
    if not 1 <= n <= T:
        raise UserError(f"a diffusers schedule takes 1..{T} inference steps, got {n}")
    spacing = config.get("timestep_spacing", "leading")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + int(config.get("steps_offset", 0))
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    else:
        raise UserError(f"timestep_spacing {spacing!r} is not supported; supported: linspace, leading, trailing")
    return [int(t) for t in ts]


def diffusers_grid(config: dict[str, Any], num_inference_steps: int, dynamics: Any,
                   scheduler: str | None = None) -> tuple[Tensor, bool]:
    """(ts, denoise_final) on which diffatlas's samplers take the steps of a diffusers scheduler.

    DDIMScheduler: `samplers.ddim` (same eta) on ts with `denoise_final` reproduces DDIMScheduler.step
    from the same starting noise: each step goes from timestep k to k - T // n, and the last one to
    alpha_bar = 1 (set_alpha_to_one, the final denoise) or to alpha_bar_0. DDPMScheduler: `samplers.ancestral`
    with the same generator reproduces DDPMScheduler.step (fixed_small variance; the noise is drawn in
    the same order). Times are those of `dynamics` with the scheduler's noise levels sigma_hat_k
    (for the run's own DDPM, t = (k + 1) / T).

    Refused (UserError): clipping or thresholding (diffatlas does not clip), a DDIM chain whose step
    lands off the next timestep (linspace or trailing spacing with a step count that does not divide T:
    diffusers then evaluates the model at a timestep the sample is not at), a DDPM variance other
    than the posterior's, and noise levels outside the dynamics' time range.
    """
    name = scheduler or str(config.get("_class_name", "DDIMScheduler"))
    if name not in ("DDIMScheduler", "DDPMScheduler"):
        raise UserError(f"diffatlas reproduces DDIMScheduler (ddim) and DDPMScheduler (ancestral), not {name}")
    process = read_scheduler({**config, "_class_name": name})
    if config.get("thresholding") or config.get("clip_sample", True):
        raise UserError("the scheduler clips or thresholds x0 estimates (clip_sample/thresholding); diffatlas's samplers "
                        "do not: compare with clip_sample=false")
    T = process.dynamics["steps"]
    steps = diffusers_timesteps(config, num_inference_steps)
    denoise_final = True
    if name == "DDIMScheduler":
        ratio = T // int(num_inference_steps)
        for a, b in zip(steps, steps[1:]):
            if a - ratio != b:
                raise UserError(f"DDIMScheduler with timestep_spacing={config.get('timestep_spacing', 'leading')} and "
                                f"{num_inference_steps} of {T} steps moves the sample from timestep {a} to the noise level of "
                                f"{a - ratio} but evaluates the model next at {b}; diffatlas keeps level and time together "
                                f"(use leading spacing, or a step count that divides {T})")
        last = steps[-1] - ratio
        if last >= 0:
            steps, denoise_final = steps + [last], False
        elif not config.get("set_alpha_to_one", True):
            steps, denoise_final = steps + ([0] if steps[-1] != 0 else []), False
    elif config.get("variance_type", "fixed_small") not in ("fixed_small", "fixed_small_log"):
        raise UserError(f"DDPMScheduler with variance_type={config.get('variance_type')}: diffatlas's ancestral sampler "
                        "uses the posterior variance (fixed_small)")
    table = DDPM(**process.dynamics).alphas_cumprod[torch.tensor(steps)]
    sigma_hat = torch.sqrt((1 - table) / table)
    ts = dynamics.t_from_sigma_hat(sigma_hat).to(torch.float64)
    lo, hi = float(dynamics.t_min), float(dynamics.t_max)
    if float(ts.min()) < lo - 1e-9 or float(ts.max()) > hi + 1e-9 or not bool(torch.isfinite(ts).all()):
        raise UserError(f"timesteps {steps[0]}..{steps[-1]} have noise levels sigma_hat {float(sigma_hat.min()):.4g}.."
                        f"{float(sigma_hat.max()):.4g} outside the process's time range [{lo:g}, {hi:g}]")
    return ts.clamp(lo, hi), denoise_final

