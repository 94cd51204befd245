"""`diffatlas study plan`: the expanded runs and a cost estimate from a short measured calibration.

Calibration runs the real training loop (diffatlas.train.train) for a few steps of each distinct
(data, network, batch, device) combination in a temporary folder and reads the measured
images/s from its stats.jsonl. The estimate covers training only (evaluation cost depends on the
metrics' sample counts and samplers and is not measured here)."""

from __future__ import annotations

import json
import statistics as pystats
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..checkpoint import read_stats
from ..errors import UserError
from .executors import ExecutorSpec
from .spec import PHASE_KEY, RunSpec, Study, is_tuning, short_key
from .status import format_duration
from .tuning import plan_lines


def _combo_key(run: RunSpec) -> tuple:
    d = run.config_dict
    return (json.dumps(d["data"], sort_keys=True), json.dumps(d["network"], sort_keys=True), d["train"]["batch"],
            d["train"]["device"], d["train"]["precision"])


def calibrate(run: RunSpec, steps: int = 3) -> dict:
    """Train `steps` + 1 steps of `run`'s config (one tick per step); the first step (warm-up) is
    not counted. Returns {images_per_s, steps, seconds} or {error}."""
    from ..train import train

    cfg = run.config
    batch = cfg.train.batch
    kimg = (steps + 1) * batch / 1000
    cfg = replace(cfg, train=replace(cfg.train, kimg=kimg, tick_kimg=batch / 1000, snapshot_kimg=kimg, doctor=False,
                                     warmup_kimg=0.0, keep_snapshots=False))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffatlas-calib-") as tmp:
        try:
            train(cfg, Path(tmp) / "run", progress=False, log=lambda *a, **k: None)
        except UserError as e:
            return {"error": str(e)}
        lines = read_stats(Path(tmp) / "run")
    rates = [l["images_per_s"] for l in lines[1:]] or [l["images_per_s"] for l in lines]
    return {"images_per_s": float(pystats.median(rates)), "steps": len(rates), "seconds": time.perf_counter() - t0}


def plan_text(study: Study, runs: list[RunSpec], *, measure: bool = True, steps: int = 3,
              calibrate_fn: Callable[[RunSpec, int], dict] = calibrate) -> str:
    keys = study.axis_keys
    if study.models:
        lines = [f"study {study.name}: evaluation only, {len(runs)} finished run(s) evaluated in place"]
        header = ["id", "model", "run directory"]
        table = [[r.id, str(r.labels["model"]), str(r.run_dir)] for r in runs]
        measure = False  # nothing is trained
    else:
        tuning = [r for r in runs if is_tuning(r.labels)]  # a `tune` section: study.tuning.plan_runs
        lines = [f"study {study.name}: {len(runs) - len(tuning)} runs = {len(study.combinations())} configuration(s) x "
                 f"{len(study.seeds)} seed(s)"] + (plan_lines(study, tuning) if study.tune else [])
        keys = keys + (study.tune.keys if study.tune else [])
        header = ["id"] + [short_key(k) for k in keys] + ["seed", "kimg"] + (["phase"] if study.tune else [])
        table = [[r.id] + [str(r.labels.get(k, "-")) for k in keys] + [str(r.seed), f"{r.config.train.kimg:g}"]
                 + ([str(r.labels.get(PHASE_KEY, "seeded"))] if study.tune else []) for r in runs]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    ev = study.evaluation
    samplers = "; ".join(", ".join(f"{k}={v}" for k, v in s.items()) or "the run's own sampler" for s in ev.samplers)
    every = "every snapshot" if study.models else f"every {ev.every_kimg or 'snapshot_kimg'} kimg"
    lines.append(f"evaluation: {', '.join(ev.metrics)} with n={ev.n}, {every}, "
                 f"samplers: {samplers}" + (f", n sweep {list(ev.n_sweep)}" if ev.n_sweep else "")
                 + (f", {ev.draws['count']} independent draws at n={ev.draws['n']}" if ev.draws else ""))
    from .calibration import design_lines

    lines += design_lines(study)
    if not measure:
        return "\n".join(lines)
    groups: dict[tuple, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault(_combo_key(r), []).append(r)
    total, known = 0.0, True
    lines.append("calibration (the real training loop, a few steps per distinct data/network/batch):")
    for key, members in groups.items():
        r0 = members[0]
        res = calibrate_fn(r0, steps)
        what = f"{r0.config.network.preset} on {r0.config.data.name}, batch {r0.config.train.batch}"
        if "error" in res:
            lines.append(f"  {what}: not measured ({res['error']})")
            known = False
            continue
        secs = sum(m.config.train.kimg * 1000 / res["images_per_s"] for m in members)
        total += secs
        lines.append(f"  {what}: {res['images_per_s']:.0f} img/s over {res['steps']} timed steps "
                     f"({res['seconds']:.1f} s measured); {len(members)} run(s) -> {format_duration(secs)} of training")
    lines.append(f"estimated training time, one worker: {format_duration(total)}" + ("" if known else " (partial)")
                 + "; evaluation not included")
    return "\n".join(lines)


def executor_text(spec: ExecutorSpec, runs: list[RunSpec], out: Path) -> str:
    """What `study run` would submit with a cluster executor: the request per run and, for Slurm,
    the sbatch script of the first run."""
    from .runner import describe_request

    spec = spec.resolved()
    lines = [f"executor: {spec.name}, {len(runs)} job(s) of {describe_request(spec)} each"
             + (f", at most {spec.max_jobs} at once" if spec.max_jobs else "")
             + (f"; training under torchrun with {spec.gpus_per_run} processes per run" if spec.gpus_per_run > 1 else "")]
    if spec.name == "slurm" and runs:
        from .executors.slurm import sbatch_script

        s = spec.slurm
        lines.append(f"time limit {s.time_min} min; at the limit a job is requeued (at most {s.max_requeues} times) "
                     f"and resumes from its last snapshot" + ("; runs claimed together go out as one job array" if s.array else ""))
        lines.append(f"sbatch script of run {runs[0].id} (submitit also pickles the run's payload beside it):")
        lines.append(sbatch_script(spec, out, runs[0].id))
    elif spec.name == "ray":
        request = {"num_cpus": spec.cpus_per_run, "num_gpus": spec.gpus_per_run}
        if spec.mem_gb:
            request["memory"] = int(spec.mem_gb * 2**30)
        lines.append(f"each run: one detached Ray actor with {request} on the cluster at "
                     f"{spec.ray.address or 'ray.init default (RAY_ADDRESS, a local `ray start` cluster, else a new local instance)'}")
    return "\n".join(lines)
