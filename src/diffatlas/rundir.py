"""A run directory as one type: where its files are and the records it holds.

    run = RunDir("runs/ddpm")
    cfg = run.config()                  # the resolved config it was trained with (config.yaml)
    data = run.dataset()                # DatasetInfo: name, split, shape, num_classes, size (dataset.json)
    run.snapshots(), run.done, run.metrics_file, run.info(snapshot)

Layout (written by train and evaluate): config.yaml, dataset.json, network.json, environment.json,
stats.jsonl (training ticks), snapshots/snapshot-<kimg>/ (weights, optimizer state, meta.json),
metrics.jsonl (evaluation entries), samples/ (PNG grids: eval-*.png with a .json of what drew them,
written by the evaluation for every snapshot and setting it samples; others by `diffatlas sample`),
DONE (training finished). Every reader of these files goes
through this type or the checkpoint helpers it uses, so each file is parsed in one place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import DATASET_FILE, STATS_FILE, list_snapshots, read_dataset_info, read_stats
from .config import Config, from_dict, resolve
from .errors import UserError
from .io import read_yaml
from .registry import UnknownNameError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
DONE_FILE = "DONE"
SNAPSHOTS_DIR = "snapshots"
SAMPLES_DIR = "samples"
EVAL_GRID_PREFIX = "eval-"


@dataclass(frozen=True)
class DatasetInfo:
    """The data a run was trained on (RUN/dataset.json): shape of one sample, classes (None:
    unlabelled), and the dataset's name, split and size as recorded."""

    shape: tuple[int, ...]
    num_classes: int | None
    name: str | None = None
    split: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class RunInfo:
    """What guidance, evaluation and study checks need to know of a run without loading its network:
    its config, sample shape, classes and (when one is chosen) snapshot folder. A loaded run
    (sampling.LoadedRun) carries the same fields and its denoiser."""

    cfg: Config
    shape: tuple[int, ...]
    num_classes: int | None
    snapshot: Path | None = None


@dataclass(frozen=True)
class RunDir:
    """A run directory (see the module docstring for its layout)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def dataset_file(self) -> Path:
        return self.path / DATASET_FILE

    @property
    def stats_file(self) -> Path:
        return self.path / STATS_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def snapshots_dir(self) -> Path:
        return self.path / SNAPSHOTS_DIR

    @property
    def samples_dir(self) -> Path:
        return self.path / SAMPLES_DIR

    def eval_grid_path(self, kimg: float, seed: int, label: str) -> Path:
        """Where the evaluation puts the sample grid of one snapshot and setting (`label`: the setting as
        requested, with its guidance): samples/eval-kimg<kimg>-seed<seed>-<label, filename-safe>.png."""
        slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", label).strip("_") or "default"
        return self.samples_dir / f"{EVAL_GRID_PREFIX}kimg{kimg:g}-seed{seed}-{slug}.png"

    def eval_grids(self) -> list[tuple[Path, dict[str, Any]]]:
        """The evaluation's sample grids, each with what drew it (its .json beside it: kimg, setting,
        guidance, sampler, steps, nfe, seeds, ...); grids without a readable record are left out."""
        out = []
        for png in sorted(self.samples_dir.glob(f"{EVAL_GRID_PREFIX}*.png")) if self.samples_dir.is_dir() else []:
            try:
                meta = json.loads(png.with_suffix(".json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict) and isinstance(meta.get("kimg"), (int, float)):
                out.append((png, meta))
        return out

    @property
    def done(self) -> bool:
        """Training finished (RUN/DONE exists)."""
        return (self.path / DONE_FILE).exists()

    def config(self) -> Config:
        """The resolved config the run was trained with (config.yaml), checked like any config."""
        path = self.config_file
        if not self.path.is_dir() or not (path.exists() or path.is_symlink()):
            raise UserError(f"{str(self.path)!r} is not a run directory (no config.yaml)")
        fix = "restore it (a study's runs have theirs in the study ledger) or train a new run"
        data = read_yaml(path, "run config", fix)
        if not isinstance(data, dict):
            raise UserError(f"run config {str(path)!r} is not a mapping of config sections; {fix}")
        try:
            return resolve(from_dict(data))  # a saved config is already resolved: this checks it
        except (UserError, UnknownNameError) as e:
            raise UserError(f"run config {str(path)!r}: {e}; {fix}") from None

    def dataset(self) -> DatasetInfo:
        """The data the run was trained on (dataset.json, checked by checkpoint.read_dataset_info)."""
        d = read_dataset_info(self.path)
        size = d.get("size")
        return DatasetInfo(tuple(int(s) for s in d["shape"]), d["num_classes"], d.get("name"), d.get("split"),
                           int(size) if isinstance(size, int) else None)

    def snapshots(self) -> list[Path]:
        """Complete snapshots, oldest first (checkpoint.list_snapshots)."""
        return list_snapshots(self.path)

    def stats(self) -> list[dict[str, Any]]:
        """The training ticks (stats.jsonl)."""
        return read_stats(self.path)

    def info(self, snapshot: Path | None = None, cfg: Config | None = None) -> RunInfo:
        """The run as guidance and evaluation see it before loading a network."""
        d = self.dataset()
        return RunInfo(cfg if cfg is not None else self.config(), d.shape, d.num_classes, snapshot)
