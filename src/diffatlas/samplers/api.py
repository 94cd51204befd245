"""One call from a denoiser to samples: prior draw with per-sample seeds, grid, sampler."""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import UnknownNameError
from ..schedules import make_grid
from .base import SAMPLERS, SampleResult, default_grid


def prior_from_seeds(dynamics: Any, shape: Sequence[int], seeds: Sequence[int], dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> Tensor:
    """(N, *shape[1:]) prior draws; sample i comes from torch.Generator().manual_seed(seeds[i]), so it does not
    depend on the batch it is drawn in. Drawn on the CPU in float64, then moved (identical on every device)."""
    if len(seeds) != shape[0]:
        raise UserError(f"got {len(seeds)} seeds for a batch of {shape[0]} samples")
    rows = [dynamics.prior_sample((1, *shape[1:]), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
            for s in seeds]
    return torch.cat(rows).to(dtype=dtype, device=device)


def sample(denoiser: Any, shape: Sequence[int], *, sampler: str = "heun", steps: int = 18,
           grid: str | Tensor | None = None, seed: int = 0, seeds: Sequence[int] | None = None,
           cond: Tensor | None = None, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
           denoise_final: bool = True, **options: Any) -> SampleResult:
    """Draw samples from a denoiser in one call.

    Args:
        denoiser: D(x, t, cond) -> x0 with `.dynamics` (a Denoiser, an ExactDenoiser, or a wrapper
            from `from_x0_fn` / `from_eps_model`).
        shape: (N, *sample_shape).
        sampler: a SAMPLERS name; steps: grid points (see each sampler for its NFE).
        grid: a GRIDS name, an explicit decreasing time tensor, or None for `default_grid(dynamics, steps, sampler)`.
        seed, seeds: sample i starts from the prior drawn with seeds[i] (default seed + i), so two
            samplers given the same seeds start from identical noise; the samplers' own noise comes from
            a generator seeded by a checksum of all seeds.
        cond: (N,) labels or None. options: the sampler's options (eta, S_churn, ...).
    Returns:
        SampleResult(x (N, *sample_shape), nfe).
    """
    dynamics = denoiser.dynamics
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[0] < 1:
        raise UserError(f"shape must be (N, ...) with N >= 1, got {shape}")
    seeds = list(range(int(seed), int(seed) + shape[0])) if seeds is None else [int(s) for s in seeds]
    fn = SAMPLERS.get(sampler)
    if isinstance(grid, Tensor):
        ts = grid
    else:
        name = grid if grid is not None else default_grid(dynamics, steps, sampler)
        try:
            ts = make_grid(name, dynamics, int(steps))
        except UnknownNameError:
            raise
        except ValueError as e:  # e.g. the discrete grid of a continuous process, or too many steps
            raise UserError(f"grid {name!r} with {steps} steps: {e}") from None
    x = prior_from_seeds(dynamics, shape, seeds, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(repr(seeds).encode()))
    return fn(denoiser, x, ts, generator=gen, cond=cond, denoise_final=denoise_final, **options)
