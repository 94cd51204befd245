"""Network axis: every network is ``net(x (N, *shape), c_noise (N,), cond (N,) long | None) -> (N, *shape)``.

Families live in `NETWORKS`, named configurations in `PRESETS`; `build_network` is the one constructor.
"""

from .diffusers_unet import DiffusersUNet
from .dit import DiT
from .mlp import MLPDenoiser
from .presets import (
    NETWORKS,
    PRESETS,
    Preset,
    build_network,
    count_flops,
    count_parameters,
    describe_presets,
)
from .refinenet import RefineNet, RefineNetV2
from .unet import UNet

__all__ = [
    "NETWORKS",
    "PRESETS",
    "DiT",
    "DiffusersUNet",
    "MLPDenoiser",
    "Preset",
    "RefineNet",
    "RefineNetV2",
    "UNet",
    "build_network",
    "count_flops",
    "count_parameters",
    "describe_presets",
]
