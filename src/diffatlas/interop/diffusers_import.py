"""A diffusers DDPM-family folder (as `DDPMPipeline.save_pretrained` writes it) as a finished run.

The folder's UNet2DModel becomes the `diffusers-unet` network (networks/diffusers_unet.py), which maps
c_noise back to the UNet's timestep; its scheduler config gives the run's dynamics and parameterization
(interop/diffusers_scheduler.py), and the scheduler's sampling conventions are stated in source.json.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import save_snapshot
from ..config import apply_overrides, dump_yaml, from_dict, parse_override, resolve
from ..data import dataset_from_config
from ..errors import UserError
from ..io import atomic_dir, atomic_write_json, atomic_write_text
from ..model import make_denoiser, make_dynamics, make_network
from ..networks.diffusers_unet import clean_unet_config, require_diffusers
from .diffusers_folders import (EXPORT_INFO, SOURCE_INFO, LogFn, _fresh_target, _load_unet_weights, _read_json,
                                check_against_unet)
from .diffusers_scheduler import read_scheduler

_MODEL_SECTIONS = ("network", "dynamics", "model")


def import_diffusers(path: str | Path, run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                     kimg: float | None = None, log: LogFn | None = print) -> dict[str, Any]:
    """Turn a diffusers DDPM-family folder (unet/ + scheduler/, as DDPMPipeline.save_pretrained writes it)
    into a finished run directory that `sample`, `evaluate`, `doctor` and studies use like a trained one.

    Args:
        path: the diffusers folder.
        run_dir: the new run directory (must not exist, or be empty); written through a temporary
            folder, so a failed import leaves nothing behind.
        overrides: dotted config keys for what the folder does not say: the dataset the model makes
            (data.name, data.root, data.resolution; its sample shape must match the UNet's) and sampling
            defaults (sample.*). network, dynamics and model come from the folder.
        kimg: training length to state (thousands of images seen), when known; None takes it from a
            diffatlas export record in the folder, else states 0 with a note.
    Returns:
        A record: run_dir, kimg, dynamics, parameterization, check_max_abs_diff (max |output difference|
        between the run's network and the UNet itself at three timesteps), notes on diffusers' conventions.
    """
    from ..train import describe_network  # on use: keeps the training layer out of `diffatlas --help`

    log = log or (lambda _: None)
    diffusers = require_diffusers("diffatlas import diffusers")
    src, run_dir = Path(path), Path(run_dir)
    if not src.is_dir():
        raise UserError(f"{str(src)!r} is not a folder (expected a diffusers folder with unet/ and scheduler/)")
    _fresh_target(run_dir, "run directory")
    for text in overrides:
        section = parse_override(text)[0][0]
        if section in _MODEL_SECTIONS:
            raise UserError(f"override {text!r}: {section} comes from the diffusers folder; set data.* or sample.* only")
    if kimg is not None and not (math.isfinite(kimg) and kimg >= 0):
        raise UserError(f"--kimg must be a non-negative number of thousands of images, got {kimg}")
    pipeline = _read_json(src / "model_index.json", "the pipeline index") if (src / "model_index.json").is_file() else {}
    unet_cfg = _read_json(src / "unet" / "config.json", "the UNet config")
    if unet_cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"the model is a {unet_cfg['_class_name']}; diffatlas imports UNet2DModel (pixel-space DDPM pipelines)")
    sched_cfg = _read_json(src / "scheduler" / "scheduler_config.json", "the scheduler config")
    process = read_scheduler(sched_cfg)
    unet = clean_unet_config(unet_cfg)
    data = {"network": {"preset": "diffusers-unet", "unet": unet, "train_schedule": dict(process.dynamics),
                        "timesteps": "nearest"},
            "dynamics": {"name": "ddpm", **process.dynamics},
            "model": {"parameterization": process.parameterization, "sigma_data": 1.0}}
    cfg = resolve(from_dict(apply_overrides(data, list(overrides))))

    d = cfg.data
    dataset = dataset_from_config(d)
    size = unet.get("sample_size") or 0
    size = int(size if isinstance(size, int) else size[0])
    want = (int(unet.get("in_channels", 3)), size, size)
    if tuple(dataset.shape) != want:
        raise UserError(f"the UNet makes {'x'.join(map(str, want))} samples but data {d.name} (resolution {d.resolution}) "
                        f"gives {'x'.join(map(str, dataset.shape))}; name the dataset the model was trained on, e.g. "
                        "data.name=cifar10 data.root=DIR")
    net = make_network(cfg, want, dataset.num_classes)
    try:
        net.unet.load_state_dict(_load_unet_weights(src / "unet"))
    except RuntimeError:
        raise UserError(f"the weights in {str(src / 'unet')!r} do not match its config.json") from None
    net.eval().requires_grad_(False)
    den = make_denoiser(cfg, net, make_dynamics(cfg))
    T = process.dynamics["steps"]
    steps = sorted({0, T // 2, T - 1})
    times = torch.tensor([(k + 1) / T for k in steps], dtype=torch.float64)
    worst = check_against_unet(den, net.unet, steps, times, want)
    notes = list(process.notes)
    exported = _read_json(src / EXPORT_INFO, "the export record") if (src / EXPORT_INFO).is_file() else {}
    if kimg is None and isinstance(exported.get("kimg"), (int, float)):
        kimg = float(exported["kimg"])
        notes.append(f"training length from {EXPORT_INFO} (exported by diffatlas): kimg {kimg:g}")
    elif kimg is None:
        notes.append("training length unknown: the snapshot is stated at kimg 0 (give --kimg to state it)")
    stated = float(kimg) if kimg is not None else 0.0
    source = {"format": "diffusers", "path": str(src.resolve()), "pipeline": pipeline.get("_class_name"),
              "diffusers": diffusers.__version__, "unet": unet_cfg, "scheduler": sched_cfg,
              "process": {"dynamics": "ddpm", **process.dynamics}, "parameterization": process.parameterization,
              "sampling_conventions": process.conventions, "notes": notes, "kimg": stated,
              "check": {"what": "max |network output of the run - UNet2DModel output at timestep k| over 2 inputs",
                        "timesteps": steps, "max_abs_diff": worst}}

    with atomic_dir(run_dir) as tmp:
        weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        save_snapshot(tmp, stated, {"model": weights, "ema": weights}, {},
                      {"kimg": stated, "step": 0, "images": int(round(stated * 1000)), "imported": "diffusers"})
        atomic_write_text(tmp / "config.yaml", dump_yaml(cfg))
        atomic_write_json(tmp / "dataset.json", {"name": dataset.name, "split": d.split, "shape": list(dataset.shape),
                                                 "num_classes": dataset.num_classes, "size": len(dataset)})
        atomic_write_json(tmp / "environment.json", {
            "diffatlas": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "imported_from": str(src.resolve())})
        atomic_write_json(tmp / "network.json", describe_network(cfg, net, want), default=str)
        atomic_write_json(tmp / SOURCE_INFO, source, default=str)
        atomic_write_json(tmp / "DONE", {"kimg": stated, "step": 0, "imported": "diffusers"}, indent=None)
    for note in notes:
        log(f"note: {note}")
    return {"run_dir": str(run_dir), "kimg": stated, "dynamics": {"name": "ddpm", **process.dynamics},
            "parameterization": process.parameterization, "check_max_abs_diff": worst, "notes": notes}
