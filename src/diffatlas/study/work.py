"""The per-run work a study executor hands each run to (local workers and cluster jobs alike): the
Task it receives, the real work function (train, then evaluate), and the cancel mark both check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import dump_yaml
from ..io import atomic_write_text
from .ledger import Ledger
from .results import setting_label
from .spec import Evaluation, setting_kwargs


@dataclass
class Task:
    """What a worker hands to the work function for one run."""

    id: str
    run_dir: Path
    config: Any                 # diffatlas.config.Config (resolved)
    config_dict: dict
    labels: dict
    evaluation: Evaluation
    attempt: int
    log: Callable[[str], None] = field(default=print, repr=False)
    processes: int = 1          # training processes (one per GPU of a multi-GPU cluster job, under torchrun)


WorkFn = Callable[[Task], None]


def train_and_evaluate(task: Task) -> None:
    """The real per-run work: train (resumes from the latest snapshot), then evaluate every
    snapshot with every sampler setting (skips entries already in metrics.jsonl), then the
    sample-count sweep and the independent draws (evaluation.draws) on the final snapshot."""
    # on use: keeps the training and evaluation layers out of `diffatlas --help`; looked up on each call,
    # so that train.train and evaluation.evaluate_run can be replaced (tests fake them)
    from ..evaluation import evaluate_run
    from ..train import train

    ev = task.evaluation
    task.log(f"train {task.id} -> {task.run_dir}" + (f" ({task.processes} processes, torchrun)" if task.processes > 1 else ""))
    if task.processes > 1:
        train_under_torchrun(task)
    else:
        train(task.config, task.run_dir, progress=False, log=task.log)
    for setting in ev.samplers:
        task.log(f"evaluate {task.id}: {', '.join(ev.metrics)} n={ev.n} setting {setting_label(setting)}")
        evaluate_run(task.run_dir, metrics=tuple(ev.metrics), n=ev.n, snapshots="all", extractor=ev.extractor,
                     seed=ev.seed, sample_grid=ev.sample_grid, progress=False, **setting_kwargs(setting))
    first = setting_kwargs(ev.samplers[0])
    for n in ev.n_sweep:
        if n == ev.n:
            continue
        task.log(f"evaluate {task.id}: n={n} (sample-count sweep, final snapshot)")
        evaluate_run(task.run_dir, metrics=tuple(ev.metrics), n=n, snapshots="latest", extractor=ev.extractor,
                     seed=ev.seed, sample_grid=0, progress=False, **first)
    draws = ev.draws or {}
    for j in range(draws.get("count", 0)):  # independent draws: disjoint per-sample seed ranges
        start = draws["seed"] + j * draws["n"]
        task.log(f"evaluate {task.id}: draw {j + 1}/{draws['count']}, n={draws['n']}, seeds {start}.. (final snapshot)")
        evaluate_run(task.run_dir, metrics=tuple(ev.metrics), n=draws["n"], snapshots="latest", extractor=ev.extractor,
                     seed=start, sample_grid=0, progress=False, **first)


def train_under_torchrun(task: Task) -> None:
    """Train one run with `task.processes` processes on this node (torchrun, one per GPU; gloo on CPU).
    diffatlas.train picks the process group up from torchrun's environment and resumes by itself."""
    cfg_path = task.run_dir / ".torchrun-config.yaml"
    atomic_write_text(cfg_path, dump_yaml(task.config))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={task.processes}",
           "-m", "diffatlas.cli", "train", str(cfg_path), "--run-dir", str(task.run_dir), "--progress", "lines"]
    # A cluster's preemption / time-limit signal (submitit: USR2) is for the job's own process, which
    # requeues the job; torchrun and its ranks ignore it and end when the job is requeued.
    sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    rc = subprocess.run(cmd, preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN), check=False).returncode
    if rc != 0:
        raise RuntimeError(f"training under torchrun ({task.processes} processes) exited with status {rc}")


def cancelled_since(ledger: Ledger, t: float) -> bool:
    """Has `diffatlas study cancel` been run on this study after time t?"""
    return (ledger.get_meta(CANCEL_KEY) or 0.0) > t


CANCEL_KEY = "cancelled_at"
