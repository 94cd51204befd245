"""Building the denoiser of a run from its resolved config (shared by training, sampling, evaluation)."""

from __future__ import annotations

from torch import nn

from .config import Config
from .denoiser import Denoiser
from .dynamics import Dynamics, build_dynamics
from .errors import UserError
from .networks import build_network


def make_dynamics(cfg: Config) -> Dynamics:
    return build_dynamics(cfg.dynamics.name, **cfg.dynamics.options)


def make_network(cfg: Config, shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    if cfg.network.conditional and not num_classes:
        raise UserError(f"network.conditional=true needs a labelled dataset; {cfg.data.name} has no labels")
    classes = num_classes if cfg.network.conditional else None
    return build_network(cfg.network.preset, shape=tuple(shape), num_classes=classes, **cfg.network.options)


def make_denoiser(cfg: Config, network: nn.Module, dynamics: Dynamics | None = None) -> Denoiser:
    return Denoiser(network, dynamics or make_dynamics(cfg), cfg.model.parameterization, cfg.model.sigma_data)
