"""One preset table for every network family, plus parameter and FLOP counts.

`NETWORKS` maps a family name to its class; `PRESETS` maps a preset name to a `Preset`
(family, kwargs). Model size is one study axis: each family has a ladder driven by one width knob
(U-Net `base_channels`, RefineNet `ngf`, DiT `hidden_size`, MLP `width`) plus reference presets
matching published models:

    ddpm-cifar10   Ho et al. 2020 CIFAR-10 U-Net, 35.7M parameters at 32x32x3
    ncsn-cifar10   Song & Ermon 2019 RefineNet, ngf=128 (no parameter count is given in the paper)
    ncsnv2-cifar10 Song & Ermon 2020 RefineNet variant, ngf=128 (likewise no published count)
    dit-s          Peebles & Xie 2023 DiT-S/2, 33M parameters at 32x32x4 latents with 1000 classes

`build_network(preset, shape=...)` adapts a preset to the per-sample shape; for the U-Net the rule
is in `UNet.from_shape`: levels are dropped until the coarsest map is >= 4x4, and attention moves
to the coarsest level when none of the preset's attention resolutions exists (8x8 digits:
levels 8 and 4, attention at 4x4).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry
from .diffusers_unet import DDPM_CIFAR10_LAYOUT, DiffusersUNet
from .dit import DiT
from .mlp import MLPDenoiser
from .refinenet import RefineNet, RefineNetV2
from .unet import UNet

NETWORKS: Registry[type[nn.Module]] = Registry("network")
NETWORKS.register("unet", "DDPM U-Net (Ho et al. 2020)")(UNet)
NETWORKS.register("refinenet", "NCSN RefineNet with noise-conditional InstanceNorm++ (Song & Ermon 2019)")(RefineNet)
NETWORKS.register("refinenet-v2", "NCSNv2 RefineNet: InstanceNorm++, output / sigma (Song & Ermon 2020)")(RefineNetV2)
NETWORKS.register("dit", "Diffusion Transformer with adaLN-Zero (Peebles & Xie 2023)")(DiT)
NETWORKS.register("mlp", "residual MLP denoiser for vector / toy 2-D data")(MLPDenoiser)
NETWORKS.register("diffusers-unet", "diffusers' UNet2DModel, called with its timestep (needs diffusers)")(DiffusersUNet)


@dataclass(frozen=True)
class Preset:
    """A named network configuration: family name in `NETWORKS` and constructor keyword arguments."""

    family: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The per-sample shape (and class count) the preset is made for: where `diffatlas list networks`
    # counts its parameters and FLOPs (digits for the ladders, the paper's data for reference presets).
    shape: tuple[int, ...] = (1, 8, 8)
    num_classes: int | None = None


PRESETS: Registry[Preset] = Registry("network preset")


def _preset(name: str, family: str, description: str, *, shape: tuple[int, ...] = (1, 8, 8),
            num_classes: int | None = None, **kwargs: Any) -> None:
    PRESETS.register(name, description)(Preset(family, kwargs, shape, num_classes))


# U-Net ladder: Ho et al.'s CIFAR-10 layout with base width 16 / 32 / 64 / 128.
_UNET = {"channel_mult": (1, 2, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16,), "dropout": 0.1}
for _name, _ch in (("unet-xs", 16), ("unet-s", 32), ("unet-m", 64), ("unet-l", 128)):
    _preset(_name, "unet", f"DDPM U-Net, base width {_ch}", base_channels=_ch, **_UNET)
_preset("ddpm-cifar10", "unet", "Ho et al. 2020 CIFAR-10 U-Net (35.7M at 32x32x3)", shape=(3, 32, 32), base_channels=128, **_UNET)

# RefineNet ladders: NCSN (noise-conditional norms) and NCSNv2 (unconditional norms, output / sigma).
for _name, _f in (("refinenet-xs", 16), ("refinenet-s", 32), ("refinenet-m", 64)):
    _preset(_name, "refinenet", f"NCSN RefineNet, ngf {_f}", ngf=_f)
_preset("ncsn-cifar10", "refinenet", "Song & Ermon 2019 CIFAR-10 score network (ngf 128)", shape=(3, 32, 32), ngf=128)
for _name, _f in (("ncsnv2-xs", 16), ("ncsnv2-s", 32), ("ncsnv2-m", 64)):
    _preset(_name, "refinenet-v2", f"NCSNv2 RefineNet, ngf {_f}", ngf=_f)
_preset("ncsnv2-cifar10", "refinenet-v2", "Song & Ermon 2020 CIFAR-10 score network (ngf 128)", shape=(3, 32, 32), ngf=128)

# DiT ladder (head width 32 for xs, 64 as in the paper otherwise).
_preset("dit-xs", "dit", "DiT, width 96, depth 6", hidden_size=96, depth=6, num_heads=3, patch_size=2)
_preset("dit-s", "dit", "DiT-S/2 (Peebles & Xie 2023; 33M at 32x32x4)", shape=(4, 32, 32), num_classes=1000, hidden_size=384, depth=12, num_heads=6, patch_size=2)
_preset("dit-b", "dit", "DiT-B/2 (Peebles & Xie 2023; 130M at 32x32x4)", shape=(4, 32, 32), num_classes=1000, hidden_size=768, depth=12, num_heads=12, patch_size=2)

# diffusers' UNet2DModel: what `diffatlas import diffusers` writes (its network.unet is the imported config).
_preset("diffusers-unet-xs", "diffusers-unet", "diffusers' UNet2DModel, widths 16, 32 (needs diffusers)",
        unet={"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": None,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]})
_preset("diffusers-unet", "diffusers-unet", "diffusers' UNet2DModel, Ho et al. 2020's CIFAR-10 layout (needs diffusers)",
        shape=(3, 32, 32), unet=DDPM_CIFAR10_LAYOUT)

# MLP ladder.
for _name, _w, _d in (("mlp-xs", 64, 2), ("mlp-s", 128, 3), ("mlp-m", 256, 4)):
    _preset(_name, "mlp", f"residual MLP, width {_w}, depth {_d}", shape=(2,), width=_w, depth=_d)


def build_network(
    preset: str, *, shape: Sequence[int], num_classes: int | None = None, **overrides: Any
) -> nn.Module:
    """Build preset `preset` for per-sample `shape` ((C, H, W) images or (D,) vectors).

    `overrides` replace preset keyword arguments (e.g. ``dropout=0.0``); an argument the family
    does not take raises UserError. The returned module satisfies
    ``net(x (N, *shape), c_noise (N,), cond (N,) long | None) -> (N, *shape)``.
    """
    p = PRESETS.get(preset)
    cls = NETWORKS.get(p.family)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_channels", "resolution", "shape"}
    accepted.discard("num_classes")
    bad = sorted(set(overrides) - accepted)
    if bad:
        raise UserError(
            f"network preset {preset!r} ({p.family}) has no option {', '.join(bad)}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise UserError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    shape = tuple(int(s) for s in shape)
    kwargs = {**p.kwargs, **overrides, "_explicit": tuple(overrides)}
    return cls.from_shape(shape, num_classes=num_classes, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_flops(module: nn.Module, shape: Sequence[int], batch: int = 1, cond: bool = False) -> int:
    """Forward FLOPs for a batch of `batch` samples of per-sample `shape`: 2 x multiply-accumulates of
    convolutions, linear layers and attention matmuls, as counted by torch.utils.flop_counter.
    Attention runs on the math SDPA backend while counting so its matmuls are seen on every device
    (fused CPU kernels are not counted by FlopCounterMode). Normalisations and activations are not counted."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    ref = next(module.parameters())
    x = torch.zeros(batch, *shape, device=ref.device, dtype=ref.dtype)
    c_noise = torch.zeros(batch, device=ref.device)
    labels = torch.zeros(batch, dtype=torch.long, device=ref.device) if cond else None
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            module(x, c_noise, labels)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def describe_presets(shape: Sequence[int] | None = None, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per preset: {name, family, shape, params, flops (forward, batch 1), description}, at `shape`
    or, when None, at each preset's own shape. Presets that cannot take the shape (e.g. image networks
    for (2,)) are listed with params None and the reason."""
    rows = []
    for name in names or PRESETS.names():
        p = PRESETS.get(name)
        at = tuple(shape) if shape is not None else p.shape
        classes = None if shape is not None else p.num_classes
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                net = build_network(name, shape=at, num_classes=classes)
        except UserError as e:
            rows.append({"name": name, "family": p.family, "shape": at, "params": None, "flops": None,
                         "description": str(e)})
            continue
        rows.append(
            {
                "name": name,
                "family": p.family,
                "shape": at,
                "params": count_parameters(net),
                "flops": count_flops(net, at, cond=classes is not None),
                "description": PRESETS.describe(name),
            }
        )
    return rows
