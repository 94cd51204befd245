"""diffusers' UNet2DModel as a diffatlas network family: the network sees c_noise, the UNet its timestep.

A UNet2DModel trained in diffusers takes (x_t, k), where the integer timestep k = 0..T-1 indexes the
cumulative alphas alpha_bar_0 > ... > alpha_bar_{T-1} of the discrete process it was trained on
(Ho et al. 2020, eq. 4; diffusers numbers Ho's steps 1..T from 0). A diffatlas network sees only
c_noise = log(sigma_hat) / 4 (Karras et al. 2022, Table 1), which this wrapper maps back:

    sigma_hat^2 = exp(8 c_noise),    -log alpha_bar = log(1 + sigma_hat^2),

and the fractional step is found by interpolating -log alpha_bar linearly between the trained steps,
the way diffatlas's discrete DDPM interpolates log alpha_bar between its steps, so at the time of
step k of that DDPM the network is called with exactly k. `timesteps="nearest"` (the default) rounds
to the nearest trained step: diffusers' DDPM/DDIM schedulers only ever pass integer timesteps, and the
UNet was trained on nothing else (its gradient with respect to c_noise is that of the fractional step,
straight through the rounding). `timesteps="fractional"` passes the fractional step (smooth in the
noise level; models with a learned timestep table cannot take it).

The schedule the timesteps index is the network's own calibration (`train_schedule`, keyword
arguments of diffatlas's DDPM: steps, schedule, beta_min, beta_max, scale), independent of the
dynamics a run samples with. The UNet's output is whatever it was trained to predict (eps, v or x0):
the run's parameterization says which.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..dynamics.discrete import DDPM
from ..errors import UserError

# Ho et al. 2020's CIFAR-10 model in diffusers' terms (the layout of diffusers' DDPM CIFAR-10 port:
# TF "SAME" padding of the strided convolutions, GroupNorm eps 1e-6, the TF sinusoid order).
DDPM_CIFAR10_LAYOUT: dict[str, Any] = {
    "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None, "norm_num_groups": 32, "norm_eps": 1e-6, "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "dropout": 0.1,
}
# Keys diffusers writes into a config that are not constructor arguments.
PRIVATE_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
TIMESTEP_MODES = ("nearest", "fractional")


def require_diffusers(what: str) -> Any:
    """The diffusers module, or a one-line UserError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise UserError(f"{what} needs the diffusers package: pip install 'diffatlas[diffusers]'") from None
    return diffusers


def unet_constructor_keys() -> set[str]:
    """The configuration keys UNet2DModel of the installed diffusers accepts."""
    unet_cls = require_diffusers("diffusers' UNet2DModel").UNet2DModel
    return set(inspect.signature(unet_cls.__init__).parameters) - {"self"}


def clean_unet_config(config: dict[str, Any]) -> dict[str, Any]:
    """A UNet2DModel config without diffusers' bookkeeping keys; keys the installed diffusers does not
    know are refused (an unknown key could change the architecture if it were dropped)."""
    cfg = {k: v for k, v in dict(config).items() if k not in PRIVATE_KEYS}
    unknown = sorted(set(cfg) - unet_constructor_keys())
    if unknown:
        import diffusers
        raise UserError(f"the UNet2DModel config has keys diffusers {diffusers.__version__} does not know: "
                        f"{', '.join(unknown)}; use the diffusers version that wrote it")
    return cfg


def timestep_table(train_schedule: dict[str, Any] | None) -> Tensor:
    """-log alpha_bar_k of the training schedule, k = 0..T-1 (increasing), float64 on the CPU."""
    with torch.device("cpu"):  # also when the network is built under a meta-device context
        try:
            dyn = DDPM(**dict(train_schedule or {}))
        except (TypeError, ValueError) as e:
            raise UserError(f"diffusers-unet: train_schedule {train_schedule!r}: {e}") from None
        return -torch.log(dyn.alphas_cumprod)


class DiffusersUNet(nn.Module):
    """``net(x (N, C, H, W), c_noise (N,), cond (N,) long | None) -> (N, C, H, W)`` around a UNet2DModel.

    Args:
        in_channels, resolution: the sample shape (C, H, H).
        unet: the UNet2DModel configuration (its config.json; default: Ho et al.'s CIFAR-10 layout).
            sample_size, in_channels and out_channels are set from the shape.
        train_schedule: DDPM keyword arguments of the schedule the timesteps index (default: 1000
            linear betas 1e-4..0.02, as diffusers' DDPMScheduler).
        timesteps: "nearest" (default) or "fractional" (see the module docstring).
        num_classes: class-conditional with a label table of num_classes + 1 rows (diffusers'
            num_class_embeds); row num_classes is the NULL class that ``cond=None`` selects.
    """

    def __init__(self, in_channels: int, resolution: int = 32, unet: dict[str, Any] | None = None,
                 train_schedule: dict[str, Any] | None = None, timesteps: str = "nearest",
                 num_classes: int | None = None) -> None:
        super().__init__()
        diffusers = require_diffusers("the diffusers-unet network")
        if timesteps not in TIMESTEP_MODES:
            raise UserError(f"diffusers-unet: timesteps must be one of {', '.join(TIMESTEP_MODES)}, got {timesteps!r}")
        cfg = clean_unet_config(DDPM_CIFAR10_LAYOUT if unet is None else unet)
        for key, want in (("in_channels", in_channels), ("out_channels", in_channels)):
            if cfg.get(key, want) != want:
                raise UserError(f"diffusers-unet: the UNet has {key}={cfg[key]} but the samples have {in_channels} "
                                "channels (a UNet with extra output channels, e.g. a learned variance, is not supported)")
        size = cfg.get("sample_size", resolution)
        if size not in (None, resolution, [resolution, resolution], (resolution, resolution)):
            raise UserError(f"diffusers-unet: the UNet is made for sample_size {size}, the samples are {resolution}x{resolution}")
        if cfg.get("time_embedding_type", "positional") == "fourier":
            raise UserError("diffusers-unet: a UNet with a Fourier time embedding is a score-SDE model of sigma (its output "
                            "is divided by the timestep), not a DDPM/DDIM-family model of integer timesteps")
        if cfg.get("time_embedding_type") == "learned" and timesteps != "nearest":
            raise UserError("diffusers-unet: a UNet with a learned timestep table needs timesteps=nearest")
        if cfg.get("class_embed_type") is not None:
            raise UserError(f"diffusers-unet: class_embed_type={cfg['class_embed_type']!r} is not supported; "
                            "class-conditional models use num_class_embeds")
        if num_classes:
            if cfg.get("num_class_embeds") not in (None, num_classes + 1):
                raise UserError(f"diffusers-unet: num_class_embeds={cfg['num_class_embeds']} does not match "
                                f"{num_classes} classes plus the NULL class")
            cfg["num_class_embeds"] = num_classes + 1
        elif cfg.get("num_class_embeds") is not None:
            raise UserError(f"diffusers-unet: the UNet is class-conditional (num_class_embeds={cfg['num_class_embeds']}); "
                            "set network.conditional=true on a labelled dataset with num_class_embeds - 1 classes")
        cfg.update(sample_size=resolution, in_channels=in_channels, out_channels=in_channels)
        try:
            self.unet = diffusers.UNet2DModel(**cfg)
        except (TypeError, ValueError) as e:
            raise UserError(f"diffusers-unet: UNet2DModel rejects the configuration: {e}") from None
        self.register_buffer("neg_log_alpha_bar", timestep_table(train_schedule), persistent=False)
        self.nearest = timesteps == "nearest"
        self.learned = cfg.get("time_embedding_type") == "learned"
        self.num_classes = num_classes
        self.in_shape = (in_channels, resolution, resolution)
        self.config = {"unet": dict(self.unet.config), "train_schedule": dict(train_schedule or {}),
                       "timesteps": timesteps, "num_classes": num_classes}

    @property
    def num_train_timesteps(self) -> int:
        return int(self.neg_log_alpha_bar.numel())

    def timestep(self, c_noise: Tensor) -> Tensor:
        """The UNet's timestep for each noise level: (N,) float (integer-valued when nearest) or long (learned table)."""
        knots = self.neg_log_alpha_bar.to(device=c_noise.device, dtype=torch.float64)
        c = c_noise.to(torch.float64)
        u = torch.logaddexp(torch.zeros_like(c), 8 * c)          # -log alpha_bar = log(1 + sigma_hat^2)
        j = torch.searchsorted(knots, u.detach()).clamp(1, knots.numel() - 1)
        lo, hi = knots[j - 1], knots[j]
        k = ((j - 1) + (u - lo) / (hi - lo)).clamp(0, knots.numel() - 1)
        if self.learned:
            return k.round().long()
        if self.nearest:
            k = k + (k.round() - k).detach()                     # the nearest step, gradient straight through
        return k.to(torch.float32)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        labels = None
        if self.num_classes:
            labels = cond if cond is not None else torch.full((x.shape[0],), self.num_classes, dtype=torch.long,
                                                              device=x.device)
        return self.unet(x, self.timestep(c_noise), class_labels=labels).sample

    @classmethod
    def from_shape(cls, shape: Sequence[int], num_classes: int | None = None, **kwargs: Any) -> "DiffusersUNet":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise UserError(f"diffusers-unet: needs a square image shape (C, H, H), got {tuple(shape)}")
        kwargs.pop("_explicit", None)
        return cls(int(shape[0]), resolution=int(shape[1]), num_classes=num_classes, **kwargs)


def unet_state_dict(net: nn.Module) -> dict[str, Tensor]:
    """The wrapped UNet2DModel's own state_dict (keys as diffusers writes them)."""
    return {k[len("unet."):]: v for k, v in net.state_dict().items() if k.startswith("unet.")}


__all__ = ["DiffusersUNet", "DDPM_CIFAR10_LAYOUT", "clean_unet_config", "require_diffusers", "unet_state_dict"]
