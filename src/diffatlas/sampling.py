"""Sampling from trained runs: the plan of a request (defaults from the run's config), loading a
snapshot's denoiser, per-sample seeds so that two samplers start from identical noise, x0 clipping,
and writing grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import list_snapshots, load_meta, load_weights, snapshot_mismatch
from .config import Config, sampler_options
from .denoiser import Denoiser
from .dynamics import Dynamics
from .errors import UserError
from .io import atomic_write
from .model import make_denoiser, make_dynamics, make_network
from .rundir import RunDir
from .samplers.api import sample
from .samplers.clip import resolve_clip
from .samplers.plan import Plan, grid_times, plan_sampling, resolve_sampler

def run_plan(cfg: Config, dynamics: Dynamics, *, sampler: str | None = None, steps: int | None = None,
             grid: str | None = None, options: dict[str, Any] | None = None, nfe: int | None = None) -> Plan:
    """The sampling plan of a request on a run (samplers.plan.plan_sampling): what the request leaves
    out comes from the run's sample config; the config's steps apply only when the request names
    neither steps nor an NFE budget. Options are the config's, overridden by the request's, checked
    against the sampler before any sampling."""
    s = cfg.sample
    name = sampler or s.sampler
    name = resolve_sampler(dynamics, name)
    if not steps and not nfe:
        steps = s.steps
    opts = sampler_options(name, {**dict(s.options), **dict(options or {})})
    return plan_sampling(dynamics, name, steps=steps, grid=grid or s.grid, options=opts, nfe=nfe)


@dataclass
class LoadedRun:
    cfg: Config
    denoiser: Denoiser
    snapshot: Path
    kimg: float
    shape: tuple[int, ...]
    num_classes: int | None


def read_run_config(run_dir: str | Path) -> Config:
    """The resolved config a run was trained with: RunDir(run_dir).config()."""
    return RunDir(run_dir).config()


def pick_snapshot(run_dir: str | Path, snapshot: str | float | None = None) -> Path:
    snaps = list_snapshots(Path(run_dir))
    if not snaps:
        raise UserError(f"run {str(run_dir)!r} has no complete snapshot yet")
    if snapshot is None or snapshot in ("last", "latest"):
        return snaps[-1]
    try:
        want = float(snapshot)
    except (TypeError, ValueError):
        raise UserError(f"snapshot {snapshot!r} is neither 'last' nor a kimg value; the run has: "
                        + ", ".join(f"{load_meta(s)['kimg']:g}" for s in snaps)) from None
    for s in snaps:
        if abs(load_meta(s)["kimg"] - want) < 1e-6:
            return s
    raise UserError(f"run {str(run_dir)!r} has no snapshot at kimg {want}; it has: "
                    + ", ".join(f"{load_meta(s)['kimg']:g}" for s in snaps))


def load_run(run_dir: str | Path, snapshot: str | float | None = None, *, ema: bool = True,
             device: str | torch.device = "cpu") -> LoadedRun:
    """The denoiser of a run's snapshot (EMA weights by default), in eval mode."""
    rd = RunDir(run_dir)
    cfg = rd.config()
    snap = pick_snapshot(run_dir, snapshot)
    meta = load_meta(snap)
    data = rd.dataset()
    shape, num_classes = data.shape, data.num_classes
    net = make_network(cfg, shape, num_classes)
    weights = load_weights(snap, "ema" if ema else "model")
    try:
        net.load_state_dict(weights)
    except RuntimeError:
        raise snapshot_mismatch(snap, "network") from None
    net.to(device).eval().requires_grad_(False)
    return LoadedRun(cfg, make_denoiser(cfg, net, make_dynamics(cfg)), snap, float(meta["kimg"]), tuple(shape),
                     num_classes if cfg.network.conditional else None)


def generate(denoiser, shape: tuple[int, ...], seeds: list[int], *, sampler: str, grid: str, steps: int,
             cond: Tensor | None = None, options: dict[str, Any] | None = None, clip: str = "none",
             batch: int = 256, device: str | torch.device = "cpu") -> tuple[Tensor, int]:
    """Samples (len(seeds), *shape) of a resolved setting (sampler, grid, steps, options as planned),
    in chunks of `batch`, by samplers.sample: sample i is a function of seeds[i] alone (its prior and its
    sampler noise: one stream, samplers.base.SeedNoise), so results do not depend on the batch size. `clip`
    (samplers.clip; "auto" resolved by `shape`) acts on the denoiser's x0 estimate. Returns (samples on
    the CPU in float32, NFE per sample)."""
    ts = grid_times(grid, denoiser.dynamics, steps)
    with torch.no_grad():
        res = sample(denoiser, (len(seeds), *shape), sampler=sampler, grid=ts, clip=clip, seeds=seeds, cond=cond,
                     device=device, batch=batch, **(options or {}))
    return res.x.float().cpu(), res.nfe


def grid_image(x: Tensor, nrow: int | None = None) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as one (rows, cols, C) uint8 grid with 1-pixel black borders."""
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    pad = 1
    img = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, q = divmod(i, nrow)
        img[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = arr[i]
    return img


def save_image_grid(x: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save images (N, C, H, W) in [-1, 1] as one PNG grid; 2-D points (N, 2) as a scatter plot."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.ndim == 2:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2)
        ax.set_aspect("equal")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    img = grid_image(x, nrow)
    c = img.shape[2]
    scale = max(1, 256 // max(img.shape[:2]))
    pil = Image.fromarray(img[..., 0] if c == 1 else img)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    atomic_write(path, lambda f: pil.save(f, format="PNG"))
    return path


def sample_run(run_dir: str | Path, *, n: int = 64, seed: int = 0, sampler: str | None = None, steps: int | None = None,
               nfe: int | None = None, grid: str | None = None, options: dict[str, Any] | None = None,
               clip: str | None = None, snapshot=None, ema: bool = True, cond: Tensor | None = None, guidance=None,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """Sample n images from a run with seeds seed, seed+1, ...; returns samples and what produced them."""
    run = load_run(run_dir, snapshot, ema=ema, device=device)
    plan = run_plan(run.cfg, run.denoiser.dynamics, sampler=sampler, steps=steps, grid=grid, options=options, nfe=nfe)
    clip = resolve_clip(clip or run.cfg.sample.clip, run.shape)
    den = run.denoiser if guidance is None else guidance(run.denoiser)
    x, used = generate(den, run.shape, list(range(seed, seed + n)), sampler=plan.sampler, grid=plan.grid,
                       steps=plan.steps, cond=cond, options=plan.options, clip=clip, device=device)
    return {"x": x, "nfe": used, "nfe_budget": plan.nfe_budget, "sampler": plan.sampler, "grid": plan.grid,
            "steps": plan.steps, "options": plan.options, "clip": clip, "kimg": run.kimg,
            "snapshot": run.snapshot.name, "seeds": [seed, seed + n - 1], "ema": ema}
