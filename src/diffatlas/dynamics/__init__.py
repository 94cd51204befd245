"""The dynamics axis: every forward process behind one interface (see base.py)."""

from __future__ import annotations

from ..registry import Registry
from .base import Dynamics, append_dims
from .discrete import DDPM, NCSN
from .sde import EDM, VESDE, VPSDE, RectifiedFlow, SubVPSDE

DYNAMICS: Registry = Registry("dynamics")
DYNAMICS.register("ddpm", "discrete DDPM, T steps, linear betas 1e-4..0.02 (Ho et al. 2020)")(DDPM)
DYNAMICS.register("ncsn", "discrete NCSN, 10 geometric sigmas 1..0.01 (Song & Ermon 2019)")(NCSN)
DYNAMICS.register("vp", "VP-SDE, beta 0.1..20 (Song et al. 2021)")(VPSDE)
DYNAMICS.register("subvp", "sub-VP SDE, beta 0.1..20 (Song et al. 2021)")(SubVPSDE)
DYNAMICS.register("ve", "VE-SDE, sigma 0.01..50 (Song et al. 2021)")(VESDE)
DYNAMICS.register("edm", "EDM, sigma = t in [0.002, 80], log-normal training sigma (Karras et al. 2022)")(EDM)
DYNAMICS.register("flow", "rectified flow / flow matching: x_t = (1 - t) x0 + t eps")(RectifiedFlow)


def build_dynamics(name: str, **options) -> Dynamics:
    """Build a registered process; options are its constructor's keyword arguments."""
    return DYNAMICS.get(name)(**options)


__all__ = ["DYNAMICS", "Dynamics", "append_dims", "build_dynamics", "DDPM", "NCSN", "VPSDE", "SubVPSDE",
           "VESDE", "EDM", "RectifiedFlow"]
