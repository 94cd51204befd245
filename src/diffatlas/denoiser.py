"""The denoiser: network + dynamics + parameterization, combined once.

D(x_t, t, cond) is the estimate of x0 from x_t = alpha(t) x0 + sigma(t) eps. It is the only
object samplers, guidance and metrics see; eps, score and velocity derive from it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dynamics.base import DENOISER_SIGMA_HAT_MAX, Dynamics, append_dims
from .parameterization import get_parameterization




def per_sample(t: Tensor | float, x: Tensor) -> Tensor:
    """t as a (N,) tensor on x's device; a scalar is repeated for the batch."""
    t = torch.as_tensor(t, device=x.device)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class Denoiser(nn.Module):
    """Wraps a network F(x, c_noise, cond) as D(x_t, t, cond) -> x0 estimate.

    Args:
        network: module mapping (x [N, *shape], c_noise [N], cond [N] or None) to a tensor like x.
        dynamics: the forward process; supplies alpha, sigma and c_noise.
        parameterization: registered name (eps, x0, v, score, edm).
        sigma_data: data standard deviation used by the scalings (the parameterization's default if None).
    """

    def __init__(self, network: nn.Module, dynamics: Dynamics, parameterization: str = "eps",
                 sigma_data: float | None = None) -> None:
        super().__init__()
        self.network = network
        self.dynamics = dynamics
        self.parameterization = get_parameterization(parameterization)
        self.sigma_data = self.parameterization.default_sigma_data if sigma_data is None else float(sigma_data)

    def scalings(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_hat, c_skip, c_out, c_in), the coefficients broadcast to x's shape, in float32 or wider."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        t = per_sample(t, x).to(dtype)
        # Where alpha -> 0 (rectified flow at t = 1) sigma_hat is infinite and x / alpha is undefined; clamp
        # sigma_hat at the largest level c_noise resolves and use the alpha that goes with it (alpha = sigma /
        # sigma_hat), i.e. evaluate at a time within 1e-5 of t. Parameterizations with a finite limit
        # (x0, v, edm) then give a finite D; elsewhere nothing changes.
        s_raw = self.dynamics.sigma_hat(t)
        s = s_raw.clamp(max=DENOISER_SIGMA_HAT_MAX)
        alpha = torch.where(s_raw > DENOISER_SIGMA_HAT_MAX, self.dynamics.sigma(t) / DENOISER_SIGMA_HAT_MAX,
                            self.dynamics.alpha(t))
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.parameterization(s, self.sigma_data))
        x_hat = x.to(dtype) / append_dims(alpha, x.ndim)
        return x_hat, c_skip, c_out, c_in

    def network_output(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The raw network output F and (x_hat, c_skip, c_out) so a loss can form its own target."""
        x_hat, c_skip, c_out, c_in = self.scalings(x, t)
        c_noise = self.dynamics.c_noise(per_sample(t, x).to(x_hat.dtype))
        param = next(self.network.parameters(), None)  # a parameter-free network (an analytic one) keeps x's dtype
        net_dtype = param.dtype if param is not None else x_hat.dtype
        out = self.network((c_in * x_hat).to(net_dtype), c_noise.to(net_dtype), cond)
        return out.to(x_hat.dtype), x_hat, c_skip, c_out

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        out, x_hat, c_skip, c_out = self.network_output(x, t, cond)
        return (c_skip * x_hat + c_out * out).to(x.dtype)


def eps_from_x0(dynamics: Dynamics, x: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """eps = (x_t - alpha x0) / sigma."""
    t = per_sample(t, x).to(x.dtype)
    return (x - append_dims(dynamics.alpha(t), x.ndim) * x0) / append_dims(dynamics.sigma(t), x.ndim)

