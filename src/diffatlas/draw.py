"""`diffatlas sample` as one library call: sample a run (optionally class-conditioned or guided) with
per-sample seeds and write what was drawn: a PNG grid (a scatter for 2-D points), an .npz of the
samples, their seeds and labels, and a .json of the setting that drew them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from . import validate
from .config import sampler_options
from .errors import UserError
from .guidance import guidance_from_args
from .io import atomic_write, atomic_write_json
from .rundir import RunDir
from .samplers import parse_clip
from .sampling import load_run, sample_run, save_image_grid


def draw_samples(run_dir: str | Path, *, n: int = 64, seed: int = 0, sampler: str | None = None,
                 steps: int | None = None, nfe: int | None = None, grid: str | None = None,
                 options: dict[str, Any] | None = None, clip: str | None = None, snapshot: Any = None,
                 ema: bool = True, klass: int | None = None, guidance: str | None = None,
                 classifier: str | Path | None = None, out: str | Path | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Sample n images (or points) of a run with seeds seed..seed+n-1 and write them to files.

    Everything is checked before any work: the run, the request's size and seeds, the sampler options,
    the clipping mode, the output place. `klass` / `guidance` / `classifier` as guidance.guidance_from_args.
    out: the PNG path (default RUN/samples/<snapshot>-<sampler>-<steps>-seed<seed>[-<guidance>][-class<k>].png);
    the .npz and .json go beside it. Returns sample_run's record (without the samples) with n, guidance,
    class and the paths written ("png", "npz", "json")."""
    rd = RunDir(run_dir)
    cfg = rd.config()
    shape = rd.dataset().shape
    validate.seeds(seed, n)
    per = 4 * math.prod(shape) * 3  # the samples, the grid image and the .npz copy
    validate.memory(per * n, f"--n {n} samples of shape {shape}", "cpu", per, "samples")
    options = sampler_options(sampler or cfg.sample.sampler, options or {})
    if clip is not None:
        parse_clip(clip)
    if steps and nfe:
        raise UserError("give --steps or --nfe (a budget of denoiser evaluations), not both")
    if out:
        validate.figure_path(out, "--out")
    else:
        validate.writable_dir(rd.samples_dir, "samples folder")
    dev = validate.device(device)
    cond, wrapper = None, None
    if klass is not None or guidance:
        run = load_run(run_dir, snapshot, device=dev)
        cond, wrapper = guidance_from_args(run, klass, guidance, classifier, n, dev)
    res = sample_run(run_dir, n=n, seed=seed, sampler=sampler, steps=steps, nfe=nfe, grid=grid, options=options,
                     clip=clip, snapshot=snapshot, ema=ema, cond=cond, guidance=wrapper, device=dev)
    name = f"{res['snapshot']}-{res['sampler']}-{res['steps']}-seed{seed}"
    if guidance:
        name += "-" + guidance.replace(":", "")
    if klass is not None:
        name += f"-class{klass}"
    png = Path(out) if out else rd.samples_dir / f"{name}.png"
    save_image_grid(res["x"], png)
    npz = png.with_suffix(".npz")
    atomic_write(npz, lambda f: np.savez_compressed(f, samples=res["x"].numpy(), seeds=np.arange(seed, seed + n),
                                                    labels=(cond.cpu().numpy() if cond is not None else np.array([]))))
    meta = {k: v for k, v in res.items() if k != "x"} | {"n": n, "guidance": guidance, "class": klass}
    atomic_write_json(png.with_suffix(".json"), meta)
    return meta | {"png": png, "npz": npz, "json": png.with_suffix(".json")}
