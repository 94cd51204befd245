"""diffusers folders as diffatlas runs, and diffatlas runs as diffusers folders.

A diffusers DDPM-family model folder (as `DDPMPipeline.save_pretrained` writes it) is a UNet2DModel
plus a scheduler config. The scheduler config holds two different things:

- the **process** the UNet was trained on: num_train_timesteps T, the beta schedule, prediction_type.
  It becomes the run's dynamics (diffatlas's discrete DDPM of the same betas; step k of diffusers,
  k = 0..T-1, is step k + 1 of Ho et al. 2020, at time t = (k + 1) / T) and parameterization
  (epsilon -> eps, v_prediction -> v, sample -> x0; sigma_data = 1, so the network input is x_t);
- **sampling conventions**: timestep_spacing, steps_offset, set_alpha_to_one, clip_sample,
  thresholding, variance_type. They are stated in the run (source.json), not applied: diffatlas's
  samplers do not clip, and `diffusers_grid` turns a scheduler's timesteps into the time grid on
  which diffatlas's ddim (DDIMScheduler) or ancestral (DDPMScheduler) sampler takes the same steps.

The UNet becomes the `diffusers-unet` network (networks/diffusers_unet.py), which maps c_noise
back to the UNet's timestep. Export goes the other way: a run on a DDPM or VP process with the
DDPM U-Net (or an imported UNet2DModel) becomes a DDPMPipeline folder. diffatlas's U-Net embeds
c_noise with Fourier features, which no sinusoid of the integer timestep reproduces; the exported
UNet2DModel therefore uses diffusers' learned timestep table (time_embedding_type="learned"),
filled with diffatlas's Fourier features of c_noise at each of the scheduler's T noise levels, so
the exported model at timestep k computes exactly the diffatlas network at that noise level.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..io import atomic_dir
from ..networks.diffusers_unet import clean_unet_config, require_diffusers, unet_state_dict

# diffusers beta_schedule -> diffatlas BETA_SCHEDULES name (same betas: linear; scaled_linear = sqrt(beta)
# linear; squaredcos_cap_v2 = Nichol & Dhariwal's cosine with max_beta 0.999; sigmoid over [-6, 6]).
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# Schedulers whose config states a discrete DDPM training process (betas, T, prediction_type).
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                     "EulerDiscreteScheduler")
CONVENTION_KEYS = ("timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample", "clip_sample_range",
                   "thresholding", "variance_type")
EXPORT_INFO = "diffatlas_export.json"
SOURCE_INFO = "source.json"
LogFn = Callable[[str], Any]


# ------------------------------------------------------------------------------------------------
# the scheduler: process, parameterization, conventions
# ------------------------------------------------------------------------------------------------
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
    from ..dynamics.discrete import DDPM

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
    from ..dynamics.discrete import DDPM

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


# ------------------------------------------------------------------------------------------------
# diffatlas's U-Net as a UNet2DModel
# ------------------------------------------------------------------------------------------------
def _copy(sd: dict[str, Tensor], out: dict[str, Tensor], used: set[str], src: str, dst: str) -> None:
    for p in ("weight", "bias"):
        if f"{src}.{p}" in sd:
            out[f"{dst}.{p}"] = sd[f"{src}.{p}"]
            used.add(f"{src}.{p}")


def _resblock(sd, out, used, src: str, dst: str) -> None:
    for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("emb", "time_emb_proj"), ("norm2", "norm2"), ("conv2", "conv2")):
        _copy(sd, out, used, f"{src}.{a}", f"{dst}.{b}")
    if f"{src}.skip.weight" in sd:  # ChannelLinear (C_out, C_in) -> 1x1 convolution (C_out, C_in, 1, 1)
        out[f"{dst}.conv_shortcut.weight"] = sd[f"{src}.skip.weight"][:, :, None, None]
        out[f"{dst}.conv_shortcut.bias"] = sd[f"{src}.skip.bias"]
        used.update({f"{src}.skip.weight", f"{src}.skip.bias"})


def _attention(sd, out, used, src: str, dst: str) -> None:
    _copy(sd, out, used, f"{src}.norm", f"{dst}.group_norm")
    for p in ("weight", "bias"):
        q, k, v = sd[f"{src}.qkv.{p}"].chunk(3, dim=0)  # q, k, v are the first, second and third C outputs
        out[f"{dst}.to_q.{p}"], out[f"{dst}.to_k.{p}"], out[f"{dst}.to_v.{p}"] = q, k, v
        used.add(f"{src}.qkv.{p}")
    _copy(sd, out, used, f"{src}.proj", f"{dst}.to_out.0")


def unet_to_diffusers(net: nn.Module, c_noise: Tensor) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The UNet2DModel config and state_dict that compute `net` (a diffatlas `UNet`) at timestep k with
    noise level c_noise[k] (T values). Raises UserError where UNet2DModel cannot represent the network."""
    cfg = net.config
    mult, R, L = tuple(cfg["channel_mult"]), int(cfg["num_res_blocks"]), len(cfg["channel_mult"])
    if cfg["num_classes"]:
        raise UserError("a class-conditional network is not exported: DDPMPipeline samples unconditionally")
    if mult[0] != 1:
        raise UserError(f"UNet2DModel's first level has the width of its input convolution; this U-Net's channel_mult "
                        f"starts at {mult[0]}")
    groups = sorted({m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)})
    if len(groups) != 1:
        raise UserError(f"UNet2DModel uses one GroupNorm group count (norm_num_groups); this U-Net uses {groups} "
                        "(widths of different group counts); train with network.norm_groups=N to export")
    res = [cfg["resolution"] // 2**i for i in range(L)]
    attn = [r in cfg["attn_resolutions"] for r in res]
    widths = {cfg["base_channels"] * m for m, a in zip(mult, attn) if a} | {cfg["base_channels"] * mult[-1]}
    heads = int(cfg["attn_heads"])
    if heads > 1 and len({w // heads for w in widths}) != 1:
        raise UserError(f"UNet2DModel uses one attention head width (attention_head_dim); with {heads} heads this U-Net's "
                        f"attention widths {sorted(widths)} give several")
    config = {
        "sample_size": cfg["resolution"], "in_channels": cfg["in_channels"], "out_channels": cfg["out_channels"],
        "time_embedding_type": "learned", "num_train_timesteps": int(c_noise.numel()),
        "block_out_channels": [cfg["base_channels"] * m for m in mult], "layers_per_block": R,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2D", "add_attention": True, "downsample_padding": 1,
        "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu", "norm_eps": 1e-5,
        "norm_num_groups": groups[0], "attn_norm_num_groups": groups[0],
        "attention_head_dim": None if heads == 1 else next(iter(widths)) // heads,
        "resnet_time_scale_shift": "scale_shift" if cfg["scale_shift"] else "default",
        "dropout": float(cfg["dropout"]), "center_input_sample": False,
    }
    sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    with torch.no_grad():  # the learned table: row k = the Fourier features of c_noise at timestep k
        out["time_proj.weight"] = net.embed.fourier(c_noise.to(device=net.embed.fourier.freqs.device)).cpu()
    _copy(sd, out, used, "embed.fc1", "time_embedding.linear_1")
    _copy(sd, out, used, "embed.fc2", "time_embedding.linear_2")
    _copy(sd, out, used, "conv_in", "conv_in")
    i = 0
    for level in range(L):
        for j in range(R):
            _resblock(sd, out, used, f"down.{i}.res", f"down_blocks.{level}.resnets.{j}")
            if attn[level]:
                _attention(sd, out, used, f"down.{i}.attn", f"down_blocks.{level}.attentions.{j}")
            i += 1
        if level != L - 1:
            _copy(sd, out, used, f"down.{i}.conv", f"down_blocks.{level}.downsamplers.0.conv")
            i += 1
    _resblock(sd, out, used, "mid.0.res", "mid_block.resnets.0")
    _attention(sd, out, used, "mid.0.attn", "mid_block.attentions.0")
    _resblock(sd, out, used, "mid.1.res", "mid_block.resnets.1")
    i = 0
    for b, level in enumerate(reversed(range(L))):
        for j in range(R + 1):
            _resblock(sd, out, used, f"up.{i}.res", f"up_blocks.{b}.resnets.{j}")
            if attn[level]:
                _attention(sd, out, used, f"up.{i}.attn", f"up_blocks.{b}.attentions.{j}")
            i += 1
        if level != 0:
            _copy(sd, out, used, f"up.{i}.conv", f"up_blocks.{b}.upsamplers.0.conv")
            i += 1
    _copy(sd, out, used, "norm_out", "conv_norm_out")
    _copy(sd, out, used, "conv_out", "conv_out")
    left = sorted(set(sd) - used)
    if left:  # a layer this mapping does not know: refuse rather than export a different network
        raise UserError(f"the U-Net has parameters UNet2DModel has no place for: {', '.join(left[:4])}")
    return config, out


# ------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what}: {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{what}: {str(path)!r} is not a readable JSON file") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: {str(path)!r} does not hold a JSON object")
    return data


def _load_unet_weights(folder: Path) -> dict[str, Tensor]:
    """The UNet's state_dict from diffusion_pytorch_model.safetensors (or a .bin loaded weights-only)."""
    st, binary = folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file
            return load_file(str(st))
        if binary.is_file():
            return torch.load(binary, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"the UNet weights in {str(folder)!r} are not readable (a corrupt file, or more than tensors)") from None
    raise UserError(f"{str(folder)!r} holds no diffusion_pytorch_model.safetensors (or .bin); sharded or variant weights "
                    "are not supported")


def _fresh_target(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{what} {str(path)!r} already exists and is not empty; nothing was written")


def check_against_unet(denoiser: Any, unet: nn.Module, steps: list[int], times: Tensor,
                       shape: tuple[int, ...], seed: int = 0) -> float:
    """max |network output of the run's denoiser at the time of timestep k - UNet2DModel output at k| over two
    random inputs and the given timesteps (times: the dynamics' time of each). Both are the model's eps, v or
    x0 prediction of x_t (sigma_data = 1: the denoiser hands its network x_t): what import and export state."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *shape), generator=g)
    worst = 0.0
    with torch.no_grad():
        for k, t in zip(steps, times.tolist()):
            ref = unet(x, torch.full((2,), k, dtype=torch.long)).sample
            out = denoiser.network_output(x, torch.full((2,), t))[0]
            worst = max(worst, float((out - ref).abs().max()))
    return worst


# ------------------------------------------------------------------------------------------------
# import: a diffusers folder -> a run directory
# ------------------------------------------------------------------------------------------------
_MODEL_SECTIONS = ("network", "dynamics", "model")


def import_diffusers(path: str | Path, run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                     kimg: float | None = None, log: LogFn | None = print) -> dict[str, Any]:
    """Turn a diffusers DDPM-family folder (unet/ + scheduler/, as DDPMPipeline.save_pretrained writes it)
    into a finished run directory that `sample`, `evaluate`, `doctor` and studies use like a trained one.

    Args:
        path: the diffusers folder.
        run_dir: the new run directory (must not exist, or be empty); written through a temporary
            folder, so a failed import leaves nothing behind.
        overrides: dotted config keys for what the folder does not say: the dataset the model makes
            (data.name, data.root, data.resolution; its sample shape must match the UNet's) and sampling
            defaults (sample.*). network, dynamics and model come from the folder.
        kimg: training length to state (thousands of images seen), when known; None takes it from a
            diffatlas export record in the folder, else states 0 with a note.
    Returns:
        A record: run_dir, kimg, dynamics, parameterization, check_max_abs_diff (max |output difference|
        between the run's network and the UNet itself at three timesteps), notes on diffusers' conventions.
    """
    from .. import __version__
    from ..checkpoint import save_snapshot
    from ..io import atomic_write_json, atomic_write_text
    from ..config import apply_overrides, dump_yaml, from_dict, parse_override, resolve
    from ..data import dataset_from_config
    from ..model import make_denoiser, make_dynamics, make_network
    from ..train import describe_network

    log = log or (lambda _: None)
    diffusers = require_diffusers("diffatlas import diffusers")
    src, run_dir = Path(path), Path(run_dir)
    if not src.is_dir():
        raise UserError(f"{str(src)!r} is not a folder (expected a diffusers folder with unet/ and scheduler/)")
    _fresh_target(run_dir, "run directory")
    for text in overrides:
        section = parse_override(text)[0][0]
        if section in _MODEL_SECTIONS:
            raise UserError(f"override {text!r}: {section} comes from the diffusers folder; set data.* or sample.* only")
    if kimg is not None and not (math.isfinite(kimg) and kimg >= 0):
        raise UserError(f"--kimg must be a non-negative number of thousands of images, got {kimg}")
    pipeline = _read_json(src / "model_index.json", "the pipeline index") if (src / "model_index.json").is_file() else {}
    unet_cfg = _read_json(src / "unet" / "config.json", "the UNet config")
    if unet_cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"the model is a {unet_cfg['_class_name']}; diffatlas imports UNet2DModel (pixel-space DDPM pipelines)")
    sched_cfg = _read_json(src / "scheduler" / "scheduler_config.json", "the scheduler config")
    process = read_scheduler(sched_cfg)
    unet = clean_unet_config(unet_cfg)
    data = {"network": {"preset": "diffusers-unet", "unet": unet, "train_schedule": dict(process.dynamics),
                        "timesteps": "nearest"},
            "dynamics": {"name": "ddpm", **process.dynamics},
            "model": {"parameterization": process.parameterization, "sigma_data": 1.0}}
    cfg = resolve(from_dict(apply_overrides(data, list(overrides))))

    d = cfg.data
    dataset = dataset_from_config(d)
    size = unet.get("sample_size") or 0
    size = int(size if isinstance(size, int) else size[0])
    want = (int(unet.get("in_channels", 3)), size, size)
    if tuple(dataset.shape) != want:
        raise UserError(f"the UNet makes {'x'.join(map(str, want))} samples but data {d.name} (resolution {d.resolution}) "
                        f"gives {'x'.join(map(str, dataset.shape))}; name the dataset the model was trained on, e.g. "
                        "data.name=cifar10 data.root=DIR")
    net = make_network(cfg, want, dataset.num_classes)
    try:
        net.unet.load_state_dict(_load_unet_weights(src / "unet"))
    except RuntimeError:
        raise UserError(f"the weights in {str(src / 'unet')!r} do not match its config.json") from None
    net.eval().requires_grad_(False)
    den = make_denoiser(cfg, net, make_dynamics(cfg))
    T = process.dynamics["steps"]
    steps = sorted({0, T // 2, T - 1})
    times = torch.tensor([(k + 1) / T for k in steps], dtype=torch.float64)
    worst = check_against_unet(den, net.unet, steps, times, want)
    notes = list(process.notes)
    exported = _read_json(src / EXPORT_INFO, "the export record") if (src / EXPORT_INFO).is_file() else {}
    if kimg is None and isinstance(exported.get("kimg"), (int, float)):
        kimg = float(exported["kimg"])
        notes.append(f"training length from {EXPORT_INFO} (exported by diffatlas): kimg {kimg:g}")
    elif kimg is None:
        notes.append("training length unknown: the snapshot is stated at kimg 0 (give --kimg to state it)")
    stated = float(kimg) if kimg is not None else 0.0
    source = {"format": "diffusers", "path": str(src.resolve()), "pipeline": pipeline.get("_class_name"),
              "diffusers": diffusers.__version__, "unet": unet_cfg, "scheduler": sched_cfg,
              "process": {"dynamics": "ddpm", **process.dynamics}, "parameterization": process.parameterization,
              "sampling_conventions": process.conventions, "notes": notes, "kimg": stated,
              "check": {"what": "max |network output of the run - UNet2DModel output at timestep k| over 2 inputs",
                        "timesteps": steps, "max_abs_diff": worst}}

    with atomic_dir(run_dir) as tmp:
        weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        save_snapshot(tmp, stated, {"model": weights, "ema": weights}, {},
                      {"kimg": stated, "step": 0, "images": int(round(stated * 1000)), "imported": "diffusers"})
        atomic_write_text(tmp / "config.yaml", dump_yaml(cfg))
        atomic_write_json(tmp / "dataset.json", {"name": dataset.name, "split": d.split, "shape": list(dataset.shape),
                                                 "num_classes": dataset.num_classes, "size": len(dataset)})
        atomic_write_json(tmp / "environment.json", {
            "diffatlas": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "imported_from": str(src.resolve())})
        atomic_write_json(tmp / "network.json", describe_network(cfg, net, want), default=str)
        atomic_write_json(tmp / SOURCE_INFO, source, default=str)
        atomic_write_json(tmp / "DONE", {"kimg": stated, "step": 0, "imported": "diffusers"}, indent=None)
    for note in notes:
        log(f"note: {note}")
    return {"run_dir": str(run_dir), "kimg": stated, "dynamics": {"name": "ddpm", **process.dynamics},
            "parameterization": process.parameterization, "check_max_abs_diff": worst, "notes": notes}


# ------------------------------------------------------------------------------------------------
# export: a run -> a DDPMPipeline folder
# ------------------------------------------------------------------------------------------------
def _export_process(cfg: Any, timesteps: int | None) -> tuple[dict[str, Any], str]:
    """DDPM keyword arguments of the DDPMScheduler an exported run gets, and a sentence saying how."""
    name, o = cfg.dynamics.name, cfg.dynamics.options
    if name == "ddpm":
        if timesteps is not None and int(timesteps) != int(o["steps"]):
            raise UserError(f"a ddpm run has its own {o['steps']} steps; --timesteps {timesteps} cannot change them")
        process = {"steps": int(o["steps"]), "schedule": o["schedule"], "beta_min": o["scale"] * o["beta_min"],
                   "beta_max": o["scale"] * o["beta_max"], "scale": 1.0}
        return process, "the run's discrete DDPM, step k + 1 of Ho et al. = diffusers' timestep k"
    if name == "vp":
        T = int(timesteps or 1000)
        if T < 2:
            raise UserError(f"--timesteps must be at least 2, got {T}")
        # DDPM's betas are the VP-SDE's beta(t) / T on T steps (Song et al. 2021, sec. 3.4 and eq. 11).
        process = {"steps": T, "schedule": "linear", "beta_min": o["beta_min"] / T, "beta_max": o["beta_max"] / T,
                   "scale": 1.0}
        return process, (f"the VP-SDE's DDPM discretization on {T} steps (betas beta(t)/T, Song et al. 2021); the "
                         "network is evaluated at those steps' noise levels")
    raise UserError(f"dynamics {name!r} is not exported: diffusers' DDPM/DDIM schedulers run a discrete "
                    "variance-preserving process, which a ddpm or vp run has")


def export_diffusers(run_dir: str | Path, out: str | Path, *, snapshot: str | float | None = "last", ema: bool = True,
                     timesteps: int | None = None, log: LogFn | None = print) -> dict[str, Any]:
    """Write a run's snapshot as a DDPMPipeline folder (unet/, scheduler/, model_index.json) that
    `DDPMPipeline.from_pretrained(out)` loads; with clip_sample=false its samples are diffatlas's.

    The run needs a ddpm or vp process, the eps, v or x0 parameterization with sigma_data = 1 (the network
    input is then x_t, as diffusers' models take it) and an unconditional DDPM U-Net (`unet` family, one
    GroupNorm group count, channel_mult starting at 1) or an imported UNet2DModel whose timesteps index the
    exported schedule. Anything else is refused with the reason. timesteps: the number of steps of a
    VP-SDE's discretization (default 1000). Also writes diffatlas_export.json (where it came from, the
    check against the run's denoiser)."""
    from ..dynamics.discrete import DDPM
    from ..networks import PRESETS
    from ..sampling import load_run

    log = log or (lambda _: None)
    diffusers = require_diffusers("diffatlas export diffusers")
    out = Path(out)
    _fresh_target(out, "output folder")
    run = load_run(run_dir, snapshot, ema=ema)
    cfg, den = run.cfg, run.denoiser
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(cfg.model.parameterization)
    if prediction is None:
        raise UserError(f"parameterization {cfg.model.parameterization!r} is not exported: diffusers' schedulers take "
                        "eps (epsilon), v (v_prediction) or x0 (sample)")
    if den.sigma_data != 1.0:
        raise UserError(f"model.sigma_data={den.sigma_data}: diffusers' prediction types assume sigma_data = 1 "
                        "(the network input is x_t)")
    if run.num_classes:
        raise UserError("a class-conditional run is not exported: DDPMPipeline samples unconditionally")
    process, how = _export_process(cfg, timesteps)
    alpha_bar = DDPM(**process).alphas_cumprod
    times = den.dynamics.t_from_sigma_hat(torch.sqrt((1 - alpha_bar) / alpha_bar)).to(torch.float64)
    family = PRESETS.get(cfg.network.preset).family
    net = den.network
    if family == "unet":
        # c_noise exactly as the denoiser computes it at these times (float32 time, as samplers pass it)
        c_noise = den.dynamics.c_noise(times.to(torch.float32))
        unet_cfg, weights = unet_to_diffusers(net, c_noise)
        embedding = "diffusers' learned timestep table holding diffatlas's Fourier features of c_noise at each timestep"
    elif family == "diffusers-unet":
        if not torch.allclose(net.neg_log_alpha_bar.cpu(), -torch.log(alpha_bar), rtol=1e-12, atol=0):
            raise UserError("the UNet2DModel's timesteps index another schedule than the run's process; export needs "
                            "network.train_schedule to equal the dynamics")
        unet_cfg, weights = clean_unet_config(dict(net.unet.config)), unet_state_dict(net)
        embedding = "the UNet2DModel's own"
    else:
        raise UserError(f"network family {family!r} is not exported: diffusers' UNet2DModel represents the unet family "
                        "and imported diffusers-unet networks")
    unet = diffusers.UNet2DModel(**unet_cfg)
    unet.load_state_dict(weights, strict=True)
    unet.eval()
    T = process["steps"]
    steps = sorted({0, T // 2, T - 1})
    worst = check_against_unet(den, unet, steps, times[steps], run.shape)
    to_diffusers = {v: k for k, v in BETA_SCHEDULES.items()}
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_start=process["beta_min"], beta_end=process["beta_max"],
        beta_schedule=to_diffusers[process["schedule"]], prediction_type=prediction, variance_type="fixed_small",
        clip_sample=False, timestep_spacing="leading", steps_offset=0)
    s_hat = torch.sqrt((1 - alpha_bar) / alpha_bar)
    record = {"run": str(Path(run_dir).resolve()), "snapshot": run.snapshot.name, "kimg": run.kimg, "ema": ema,
              "dynamics": {"name": cfg.dynamics.name, **cfg.dynamics.options}, "scheduler": "DDPMScheduler",
              "process": process, "how": how, "prediction_type": prediction, "time_embedding": embedding,
              "noise_levels": {"what": "sigma_hat = sqrt((1 - alpha_bar) / alpha_bar) of timesteps 0 and T - 1",
                               "first": float(s_hat[0]), "last": float(s_hat[-1])},
              "sampling": "clip_sample=false: DDPMPipeline / DDIMPipeline samples equal diffatlas's ancestral / ddim "
                          "samples on interop.diffusers_grid from the same noise",
              "check": {"what": "max |network output of the run - exported UNet2DModel output at timestep k| over 2 "
                                "inputs", "timesteps": steps, "max_abs_diff": worst}}
    with atomic_dir(out) as tmp:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp))
        (tmp / EXPORT_INFO).write_text(json.dumps(record, indent=1, default=str))
    log(f"exported {run.snapshot.name} of {run_dir} ({cfg.dynamics.name}, {prediction}) as a DDPMPipeline: {out} "
        f"(max |output difference| against the run's network {worst:.2g})")
    return {**record, "out": str(out)}
