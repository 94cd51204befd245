"""x0 clipping at sampling time: one option of the denoiser, applied the same way to every process.

A sampler only sees the denoiser's x0 estimate D(x, t), so clipping that estimate acts on every
sampler and every process alike (ancestral, DDIM, ODE, Langevin: all are built from D):

    none      D unchanged;
    static    D clamped to [-1, 1], the data range of images (Ho et al. 2020's and Nichol & Dhariwal
              2021's samplers clip the predicted x0 like this);
    dynamic:P per sample, s = the P-quantile of |D| (P in (0, 1), default 0.995), s = max(s, 1),
              D <- clamp(D, -s, s) / s (dynamic thresholding, Saharia et al. 2022, sec. 2.3);
    auto      static for image data (samples shaped (C, H, W), scaled to [-1, 1]), none otherwise
              (points of a toy distribution have no bounded range).

Where alpha is tiny (the first steps of a cosine DDPM: alpha_T ~ 2.5e-4 at T = 200), an eps-predicting
network's x0 = (x - sigma eps) / alpha multiplies its eps error by 1 / alpha; clipping keeps that
estimate in the data range. Results record the resolved mode (never "auto").
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import UserError

CLIP_MODES = ("auto", "none", "static", "dynamic", "dynamic:P")
DYNAMIC_QUANTILE = 0.995  # Saharia et al. (2022) use the 99.5th percentile


def parse_clip(spec: Any) -> tuple[str, float | None]:
    """(mode, quantile) of a clip spec; UserError for anything else."""
    text = str(spec).strip() if isinstance(spec, str) else None
    if text in ("auto", "none", "static"):
        return text, None
    if text is not None and (text == "dynamic" or text.startswith("dynamic:")):
        q = DYNAMIC_QUANTILE
        if ":" in text:
            try:
                q = float(text.split(":", 1)[1])
            except ValueError:
                q = float("nan")
        if not 0.0 < q < 1.0:
            raise UserError(f"clip {spec!r}: the quantile of dynamic:P must be a number in (0, 1), e.g. dynamic:0.995")
        return "dynamic", q
    raise UserError(f"clip must be one of auto, none, static, dynamic or dynamic:P (P in (0, 1)), got {spec!r}")


def resolve_clip(spec: Any, sample_shape: Sequence[int]) -> str:
    """The clip mode to record and apply: 'auto' becomes 'static' for images (C, H, W), else 'none'."""
    mode, q = parse_clip(spec)
    if mode == "auto":
        return "static" if len(tuple(sample_shape)) == 3 else "none"
    return "dynamic:" + f"{q:g}" if mode == "dynamic" else mode


class ClippedDenoiser:
    """D(x, t, cond) with its x0 estimate clipped; `.dynamics` is the wrapped denoiser's."""

    def __init__(self, denoiser: Any, mode: str) -> None:
        self.denoiser = denoiser
        self.dynamics = denoiser.dynamics
        self.mode, self.quantile = parse_clip(mode)
        if self.mode in ("auto", "none"):
            raise UserError(f"ClippedDenoiser needs a resolved mode (static or dynamic:P), got {mode!r}")

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        d = self.denoiser(x, t) if cond is None else self.denoiser(x, t, cond)
        if self.mode == "static":
            return d.clamp(-1.0, 1.0)
        s = torch.quantile(d.flatten(1).abs().to(torch.float32 if d.dtype in (torch.float16, torch.bfloat16)
                                                 else d.dtype), self.quantile, dim=1).to(d.dtype)
        s = s.clamp_min(1.0).view(-1, *([1] * (d.ndim - 1)))
        return torch.maximum(torch.minimum(d, s), -s) / s


def clip_denoiser(denoiser: Any, mode: str) -> Any:
    """The denoiser with clip `mode` applied (a resolved mode: none, static or dynamic:P)."""
    if parse_clip(mode)[0] in ("none", "auto"):
        return denoiser
    return ClippedDenoiser(denoiser, mode)
