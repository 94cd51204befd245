"""A run on a DDPM or VP process with the DDPM U-Net (or an imported UNet2DModel) as a DDPMPipeline folder.

diffatlas's U-Net embeds c_noise with Fourier features, which no sinusoid of the integer timestep
reproduces; the exported UNet2DModel therefore uses diffusers' learned timestep table
(time_embedding_type="learned"), filled with diffatlas's Fourier features of c_noise at each of the
scheduler's T noise levels, so the exported model at timestep k computes exactly the diffatlas network
at that noise level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..dynamics.discrete import DDPM
from ..errors import UserError
from ..io import atomic_dir
from ..networks import PRESETS
from ..networks.diffusers_unet import clean_unet_config, require_diffusers, unet_state_dict
from .diffusers_folders import EXPORT_INFO, LogFn, _fresh_target, check_against_unet
from .diffusers_scheduler import BETA_SCHEDULES, PREDICTION_TYPES


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
    from ..sampling import load_run  # on use: keeps the sampling layer out of `diffatlas --help`

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
