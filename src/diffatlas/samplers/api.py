"""One call from a denoiser to samples: prior draw with per-sample seeds, grid, sampler."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .base import SAMPLERS, SampleResult, SeedNoise
from .clip import clip_denoiser, resolve_clip
from .plan import plan_sampling, resolve_sampler


def prior_from_seeds(dynamics: Any, shape: Sequence[int], seeds: Sequence[int], dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> Tensor:
    """(N, *shape[1:]) prior draws; sample i is the first draw of torch.Generator().manual_seed(seeds[i])
    (samplers.base.SeedNoise), so it does not depend on the batch it is drawn in. Drawn on the CPU in
    float64, then moved (identical on every device)."""
    if len(seeds) != shape[0]:
        raise UserError(f"got {len(seeds)} seeds for a batch of {shape[0]} samples")
    return SeedNoise(seeds).prior(dynamics, shape[1:], dtype, device)


def sample(denoiser: Any, shape: Sequence[int], *, sampler: str = "heun", steps: int | None = None,
           nfe: int | None = None, grid: str | Tensor | None = None, clip: str = "auto", seed: int = 0,
           seeds: Sequence[int] | None = None,
           cond: Tensor | None = None, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
           denoise_final: bool = True, batch: int | None = None, **options: Any) -> SampleResult:
    """Draw samples from a denoiser in one call.

    Args:
        denoiser: D(x, t, cond) -> x0 with `.dynamics` (a Denoiser, an ExactDenoiser, or a wrapper
            from `from_x0_fn` / `from_eps_model`).
        shape: (N, *sample_shape).
        sampler: a SAMPLERS name, or "auto" (the default) or "classic" (the process's own), see samplers.plan.
        steps: grid points (see each sampler for its NFE); or nfe: a budget of denoiser evaluations,
            spent by the sampler's own plan; neither: the default (samplers.plan.plan_sampling).
        grid: a GRIDS name, an explicit decreasing time tensor, or None for the default ("logsnr").
        clip: x0 clipping, "auto" (static for (C, H, W) images), "none", "static", "dynamic:P" (samplers.clip).
        seed, seeds: sample i is drawn with seeds[i] (default seed + i) alone (samplers.base.SeedNoise):
            one generator seeded seeds[i] on the CPU draws its prior and then its sampler noise. So two samplers given the same seeds start from identical
            noise, and a sample does not depend on the batch it is drawn in, the other seeds or the
            device (beyond the rounding of batched network evaluation; pc's corrector, whose step size is
            a batch average by design, is the one exception).
        cond: (N,) labels or None. options: the sampler's options (eta, S_churn, ...); a budget's plan
            may set some (pc's corrector_steps, langevin's n_steps_each) unless given here.
        batch: samples per sampler call (None: all N at once); the chunks' results are concatenated.
    Returns:
        SampleResult(x (N, *sample_shape), nfe).
    """
    dynamics = denoiser.dynamics
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[0] < 1:
        raise UserError(f"shape must be (N, ...) with N >= 1, got {shape}")
    seeds = list(range(int(seed), int(seed) + shape[0])) if seeds is None else [int(s) for s in seeds]
    if isinstance(grid, Tensor):
        ts = grid
        sampler = resolve_sampler(dynamics, sampler)
        if nfe:
            raise UserError("an explicit time grid fixes the steps: give no NFE budget with it")
    else:
        plan = plan_sampling(dynamics, sampler, steps=steps, grid=grid, options=options, nfe=nfe)
        sampler, ts, options = plan.sampler, plan.times(dynamics), plan.options
    fn = SAMPLERS.get(sampler)
    denoiser = clip_denoiser(denoiser, resolve_clip(clip, shape[1:]))
    ts = ts.to(device)
    size = len(seeds) if batch is None else int(batch)
    if size < 1:
        raise UserError(f"batch must be >= 1 samples, got {batch}")
    outs, nfe = [], 0
    for start in range(0, len(seeds), size):
        chunk = seeds[start:start + size]
        streams = SeedNoise(chunk)
        x = streams.prior(dynamics, shape[1:], dtype, device)
        c = cond[start:start + size].to(device) if cond is not None else None
        res = fn(denoiser, x, ts, generator=streams, cond=c, denoise_final=denoise_final, **options)
        outs.append(res.x)
        nfe = res.nfe
    return SampleResult(outs[0] if len(outs) == 1 else torch.cat(outs), nfe)
