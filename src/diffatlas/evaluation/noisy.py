"""The noise-aware classifier that classifier guidance needs during evaluation: the run's own, or
one shared by every run with the same dataset and forward process, trained once into the cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..guidance import resolve_classifier
from ..guidance.classifier import NOISY_RECIPE, _dynamics_record
from ..io import build_once, cache_root, json_clean
from ..metrics.eval_classifier import data_id
from ..metrics.extractors import state_dict_hash
from ..model import make_dynamics
from ..rundir import RunInfo

NOISY_CLASSIFIER_DIR = "noisy-classifier"  # RUN/<this>: a run's own guidance classifier, used when present

LogFn = Callable[[str], Any]


def default_noisy_classifier_dir(cfg: Any) -> Path:
    """``$DIFFATLAS_CACHE/noisy-classifiers/<dataset>/<dynamics>-<hash>``: where the default noise-aware
    classifier of classifier guidance lives. It depends only on the run's dataset variant and forward
    process (and the training recipe, guidance.NOISY_RECIPE), not on the run's network or seed, so
    every run of a study with the same data and process shares one classifier instead of training
    its own."""
    d = cfg.data
    record = {"dynamics": _dynamics_record(make_dynamics(cfg), cfg.dynamics.name), "recipe": NOISY_RECIPE,
              "split": d.split}
    digest = hashlib.sha256(json.dumps(json_clean(record), sort_keys=True).encode()).hexdigest()[:12]
    return (cache_root() / "noisy-classifiers" / data_id(d.name, d.resolution, d.options, d.root, with_root=True)
            / f"{cfg.dynamics.name}-{digest}")


def train_shared_noisy_classifier(run_dir: Path, final: Path, device: torch.device, log: LogFn) -> None:
    """Train the noise-aware classifier into `final` once: concurrent evaluations (study workers) wait
    for the first of them and then load the one it wrote."""
    # looked up on each call, so that guidance.train_noisy_classifier_for can be replaced (tests shorten it)
    from ..guidance import train_noisy_classifier_for

    with build_once(final) as tmp:
        if tmp is not None:
            log(f"no guidance classifier given: training the noise-aware classifier of this dataset and process "
                f"into {final} (shared by every run with the same data and process)")
            train_noisy_classifier_for(run_dir, tmp, device=device, log=log)


def guidance_classifier(run_dir: Path, cfg: Any, shape: tuple[int, ...], k: int | None, snapshot: Path,
                         classifier_dir: str | Path | None, device: torch.device, log: LogFn) -> tuple[Any, str]:
    """The noise-aware classifier of classifier guidance and its identity (weights hash). Default:
    RUN/noisy-classifier when a run has its own, else the shared one of its dataset and process
    (default_noisy_classifier_dir), trained there first when absent."""
    if classifier_dir is None:
        classifier_dir = run_dir / NOISY_CLASSIFIER_DIR
        if not classifier_dir.is_dir():
            if not k:
                raise UserError("classifier guidance needs a labelled dataset; this run's dataset has no classes")
            classifier_dir = default_noisy_classifier_dir(cfg)
            if not classifier_dir.is_dir():
                train_shared_noisy_classifier(run_dir, classifier_dir, device, log)
    clf = resolve_classifier(RunInfo(cfg, shape, k, snapshot), classifier_dir, device)
    return clf, state_dict_hash(clf.state_dict())
