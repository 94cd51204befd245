"""`diffatlas study plan`: the expanded runs, the verdicts the design can reach, and the study's time
from a short measured calibration.

Calibration runs the real training loop for a few steps of each distinct (data, network, batch,
device, precision) combination (study.cost.training.calibrate); on the snapshot it writes, the
evaluation's pieces are timed once per distinct (data, network, device) (study.cost.measure_evaluation).
Each run's work is counted from its config and the evaluation plan (study.cost.run_work), so the
estimate is training + evaluation + one-offs (classifiers trained on the way) per run, plus the start
of each process (study.cost.workers.measure_startup). Both are measured with the torch threads one
worker gets: all of the runner's for one worker, cores // W each for W workers (study.runner). For W
workers the runs are then slowed by a factor measured beside W - 1 concurrent processes training the
same network (study.cost.training.measure_contention), and the wall time is simulated as each worker
takes the next run in the ledger's order (study.cost.wall_time: a dataset's evaluation classifier is
trained by every worker whose run reaches evaluation before one is cached). `--gpu` adds a prediction
for a GPU from recorded rates (study.cost.gpu_estimate).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .calibration import design_lines
from .cost import (GPU_RATES, EvalUnits, RunTime, Work, calibrate, cpu_count, cpu_seconds, data_label, gpu_estimate,
                   measure_contention, measure_evaluation, measure_startup, network_label, run_work, wall_time,
                   worker_threads)
from .cost.workload import _dynamics, setting_nfe
from .executors import ExecutorSpec
from .runner import describe_request
from .spec import PHASE_KEY, RunSpec, Study, is_tuning, short_key
from .status import format_duration
from .tuning import plan_lines

MAX_CONCURRENT = 7  # concurrent workers started to measure how much they slow each other


def _combo_key(run: RunSpec) -> tuple:
    d = run.config_dict
    return (json.dumps(d["data"], sort_keys=True), json.dumps(d["network"], sort_keys=True), d["train"]["batch"],
            d["train"]["device"], d["train"]["precision"])


def _eval_key(run: RunSpec) -> tuple:
    d = run.config_dict
    return (json.dumps(d["data"], sort_keys=True), json.dumps(d["network"], sort_keys=True), d["train"]["device"])


def _eval_line(what: str, u: EvalUnits) -> str:
    guided = "".join(f", {k}-guided {u.nfe_s[k] * 1e3:.3g} ms" for k in ("classifier", "cfg") if k in u.nfe_s)
    feats = (f"; extractor {u.feature_s * 1e3:.3g} ms per image" if u.feature_s is not None else "")
    metrics = ", ".join(f"{v:.2g} s at n={n}" for n, v in sorted(u.metrics_s.items()))
    return (f"  evaluation of {what} ({u.threads} thread{'s' if u.threads != 1 else ''}): sampling "
            f"{u.nfe_s[None] * 1e3:.3g} ms per sample and NFE at batch 256{guided}{feats}; per snapshot evaluation: "
            f"load {u.load_s:.2g} s, metrics {metrics or 'none'}, TensorBoard {u.log_s:.2g} s; per evaluate_run call "
            f"{u.call_s:.2g} s ({u.seconds:.1f} s measured)")


def plan_text(study: Study, runs: list[RunSpec], *, measure: bool = True, steps: int = 3, workers: int | None = None,
              gpu: str | None = None, executor: ExecutorSpec | None = None,
              calibrate_fn: Callable[..., dict] = calibrate,
              contention_fn: Callable[..., dict] = measure_contention,
              startup_fn: Callable[[], float | None] = measure_startup) -> str:
    """The plan's text. `workers`: the local executor's worker processes (default the study's);
    `gpu`: a GPU_RATES key to predict the study's GPU time for (default: h200 when the study asks for
    a GPU); `calibrate_fn(run, steps, threads, evaluation)`, `contention_fn(run, threads, others)` and
    `startup_fn()` replace the measurements (tests)."""
    keys = study.axis_keys
    executor = (executor or study.executor).resolved()
    workers = int(workers or executor.workers)
    if study.models:
        lines = [f"study {study.name}: evaluation only, {len(runs)} finished run(s) evaluated in place"]
        header = ["id", "model", "run directory"]
        table = [[r.id, str(r.labels["model"]), str(r.run_dir)] for r in runs]
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

    lines += design_lines(study)
    nfe_of = _nfe_cache()
    works = [run_work(r, ev, nfe_of) for r in runs]
    lines += _work_lines(runs, works)
    if gpu is None and asks_for_gpu(study):
        gpu = "h200"
    if measure:
        lines += _measured_lines(study, runs, works, steps, workers, executor, calibrate_fn, contention_fn, startup_fn)
    if gpu is not None:
        if gpu not in GPU_RATES:
            raise UserError(f"--gpu {gpu!r}: no recorded rates; known: {', '.join(GPU_RATES)}")
        try:
            lines += gpu_estimate(runs, works, ev, gpu, workers=workers if not executor.remote else 1)
        except UserError as e:
            lines.append(f"GPU estimate ({gpu}): not possible: {e}")
    return "\n".join(lines)


def asks_for_gpu(study: Study) -> bool:
    """Does the study ask for a GPU: train.device cuda/auto in its base or an axis, or GPUs per cluster job?"""
    def gpu_device(v) -> bool:
        return isinstance(v, str) and (v == "auto" or v.startswith("cuda"))

    base = (study.base.get("train") or {}).get("device") if isinstance(study.base.get("train"), dict) else None
    if gpu_device(base) or study.executor.gpus_per_run:
        return True
    return any(gpu_device(c.get("train.device")) for g in study.axes for c in g["combos"])


def _nfe_cache() -> Callable[[RunSpec, dict], int]:
    """setting_nfe, once per (dynamics, sample config, setting)."""
    seen: dict[str, int] = {}

    def nfe_of(run: RunSpec, setting: dict) -> int:
        d = run.config_dict
        key = json.dumps([d["dynamics"], d["sample"], setting], sort_keys=True, default=str)
        if key not in seen:
            seen[key] = setting_nfe(run.config, _dynamics(run.config), setting)
        return seen[key]

    return nfe_of


def _work_lines(runs: list[RunSpec], works: list[Work]) -> list[str]:
    """What each run does, grouped by identical work."""
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(works):
        groups.setdefault(json.dumps([w.train_images, w.snapshots, w.describe()]), []).append(i)
    lines = ["work per run (counted from the configs and the evaluation plan):"]
    for idx in groups.values():
        w = works[idx[0]]
        train = f"{w.train_images:,} training images, " if w.train_images else ""
        lines.append(f"  {len(idx)} run(s): {train}{w.snapshots} snapshot(s); snapshot evaluations: {w.describe() or 'none'}"
                     f" = {w.samples:,} samples, {w.sample_nfe:,} sample-NFE"
                     + ("; the noise-aware classifier of its dataset and process (classifier guidance, trained once)" if w.noisy_classifier else ""))
    return lines


def _measured_lines(study: Study, runs: list[RunSpec], works: list[Work], steps: int, workers: int,
                    executor: ExecutorSpec, calibrate_fn: Callable[..., dict],
                    contention_fn: Callable[..., dict], startup_fn: Callable[[], float | None]) -> list[str]:
    import torch

    cores = cpu_count()
    main = torch.get_num_threads()
    w_threads = worker_threads(workers, cores, main) if not executor.remote else main
    thread_counts = [main] + ([w_threads] if w_threads != main else [])
    ev = study.evaluation
    lines = [f"calibration on this machine ({cores} core{'s' if cores != 1 else ''}; one worker uses {main} "
             f"thread{'s' if main != 1 else ''}"
             + (f", each of {workers} workers {w_threads}" if workers > 1 and not executor.remote else "")
             + "): a few real training steps per distinct data/network/batch, the evaluation's pieces per data/network"]
    train_by: dict[tuple, dict[int, dict]] = {}
    eval_by: dict[tuple, dict[int, EvalUnits]] = {}
    partial = False
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for r in runs:
        tk, ek = _combo_key(r), _eval_key(r)
        if study.models:
            if ek in eval_by:
                continue
            eval_by[ek] = {}
            for t in thread_counts:
                try:
                    eval_by[ek][t] = measure_evaluation(r.run_dir, ev, threads=t)
                except UserError as e:
                    lines.append(f"  evaluation of {network_label(r.config)} on {data_label(r.config)}: not measured ({e})")
                    partial = True
                    break
            for t, u in eval_by[ek].items():
                lines.append(_eval_line(f"{network_label(r.config)} on {data_label(r.config)}", u))
                lines += [f"    note: {n}" for n in u.notes]
            continue
        if tk in train_by:
            continue
        train_by[tk] = {}
        what = f"{network_label(r.config)} on {data_label(r.config)}, batch {r.config.train.batch}"
        for t in thread_counts:
            res = calibrate_fn(r, steps, t, ev if ek not in eval_by or t not in eval_by[ek] else None)
            if "error" in res:
                lines.append(f"  training {what}: not measured ({res['error']})")
                partial = True
                break
            train_by[tk][t] = res
            lines.append(f"  training {what} ({t} thread{'s' if t != 1 else ''}): {res['images_per_s']:.0f} img/s "
                         f"(median over {res['steps']} timed steps), {res['setup_s']:.1f} s per run of setup, "
                         f"snapshot and doctor ({res['seconds']:.1f} s measured)")
            if "eval" in res:
                eval_by.setdefault(ek, {})[t] = res["eval"]
                lines.append(_eval_line(f"{network_label(r.config)} on {data_label(r.config)}", res["eval"]))
                lines += [f"    note: {n}" for n in res["eval"].notes]
    # per run and thread count: training, evaluation, its own one-offs, the dataset's (paid by the runs
    # that reach evaluation before it is cached: with one worker, the first run of the dataset)
    per: dict[int, list[tuple[float, float, float, str, float]]] = {t: [] for t in thread_counts}
    noisy_paid: set[str] = set()  # the noise-aware classifier: once per dataset and process (shared)
    for r, w in zip(runs, works):
        tr = train_by.get(_combo_key(r), {})
        eu = eval_by.get(_eval_key(r), {})
        dkey = json.dumps(r.config_dict["data"], sort_keys=True)
        nkey = json.dumps([r.config_dict["data"], r.config_dict["dynamics"]], sort_keys=True)
        first_noisy = w.noisy_classifier and nkey not in noisy_paid
        if first_noisy:
            noisy_paid.add(nkey)
        for t in thread_counts:
            train_s = (w.train_images / tr[t]["images_per_s"] + tr[t]["setup_s"]) if t in tr else None
            u = eu.get(t)
            eval_s = u.run_s(w) if u is not None else None
            own = (u.noisy_s or 0.0) if u is not None and first_noisy else 0.0
            shared = u.dataset_s if u is not None else 0.0
            if (train_s is None and not study.models) or eval_s is None:
                partial = True
            per[t].append((train_s or 0.0, eval_s or 0.0, own, dkey, shared))

    def timeline(rows: list, factor: float = 1.0, eval_factor: float | None = None) -> list[RunTime]:
        ef = factor if eval_factor is None else eval_factor
        return [RunTime(a * factor, b * ef + c * factor, k, d * factor) for a, b, c, k, d in rows]
    start = startup_fn()
    cpu1, elapsed = cpu_seconds(), time.perf_counter() - t0
    if cpu0 is not None and cpu1 is not None and elapsed > 0:
        others = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / (elapsed * cores)
        lines.append(f"  other processes used {others:.0%} of the {cores} cores during these {elapsed:.0f} s of "
                     "calibration; the estimate assumes the machine stays as busy"
                     + (" (the figures above are slowed by that load)" if others >= 0.25 else ""))
    if start is None:
        start, partial = 0.0, True
        lines.append("  process start: not measured (a fresh interpreter failed to import diffatlas)")
    else:
        lines.append(f"  process start: {start:.1f} s (a fresh interpreter importing the CLI and the per-run work's "
                     "modules), paid by `study run` and by each worker process it starts")
    t1 = per[main]
    one_wall = wall_time(timeline(t1), 1)
    tot = [sum(x[0] for x in t1), sum(x[1] for x in t1)]
    tot.append(one_wall - tot[0] - tot[1])   # each run's own one-offs, and each dataset's once
    lines.append(f"estimated time, one worker ({main} thread{'s' if main != 1 else ''}): training {format_duration(tot[0])}"
                 f" + evaluation {format_duration(tot[1])} + one-off classifiers and statistics {format_duration(tot[2])}"
                 f" + process start {format_duration(start)} = {format_duration(one_wall + start)}"
                 + (" (partial: see the lines above)" if partial else ""))
    if executor.remote:
        longest = max((x[0] + x[1] + x[2] + x[4] for x in t1), default=0.0)
        lines.append(f"with the {executor.name} executor runs go to cluster jobs, each timed as above on this machine: "
                     f"the longest run takes {format_duration(longest)} here")
    elif workers > 1:
        factor, eval_factor, how = 1.0, 1.0, "not measured: assumes the workers slow each other only by splitting the cores"
        cpu_runs = [r for r in runs if str(r.config.train.device) in ("cpu", "auto") and not study.models]
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if cpu_runs and not gpus:
            others = min(workers - 1, MAX_CONCURRENT)
            c = contention_fn(cpu_runs[0], w_threads, others)
            if "error" in c:
                how = f"not measured ({c['error']}): assumes the workers slow each other only by splitting the cores"
            else:
                factor = c["factor"]
                eval_factor = c.get("sampling_factor", factor)
                beyond = (workers - 1) / others if workers - 1 > others else 1.0
                factor, eval_factor = factor * beyond, eval_factor * beyond  # beyond the measured: cores shared evenly
                how = (f"x{factor:.2f} in training (the training rate with {w_threads} thread{'s' if w_threads != 1 else ''}"
                       f" alone {c['alone']:.0f} img/s, beside {others} more worker{'s' if others != 1 else ''} training "
                       f"{c['loaded']:.0f} img/s) and x{eval_factor:.2f} in evaluation (sampling at batch 256 alone and "
                       "beside them)" + (f"; x{beyond:.2g} for the workers beyond {others + 1}" if beyond > 1 else ""))
        rows = timeline(per[w_threads], factor, eval_factor)
        wall = wall_time(rows, workers)
        tw = [sum(x[0] for x in per[w_threads]) * factor, sum(x[1] for x in per[w_threads]) * eval_factor,
              sum(x[2] for x in per[w_threads]) * factor]
        shared = {x[3]: x[4] * factor for x in per[w_threads] if x[4]}
        starts = start + start * factor  # the runner, then its workers, which start side by side
        lines.append(f"estimated wall time, {workers} workers ({w_threads} thread{'s' if w_threads != 1 else ''} each): "
                     f"{format_duration(starts + wall)}: process starts {format_duration(starts)} "
                     f"(the runner's, then the workers' side by side), then the runs' training {format_duration(tw[0])} + "
                     f"evaluation {format_duration(tw[1])} + their own one-offs {format_duration(tw[2])}"
                     + (f" + the datasets' classifiers and statistics ({format_duration(sum(shared.values()))} each time; "
                        "paid again by every worker whose run reaches evaluation before they are cached)" if shared else "")
                     + f" shared out as each worker takes the next run in the ledger's order; timed at {w_threads} "
                     f"thread{'s' if w_threads != 1 else ''} and slowed by the other workers {how}")
    return lines


def executor_text(spec: ExecutorSpec, runs: list[RunSpec], out: Path) -> str:
    """What `study run` would submit with a cluster executor: the request per run and, for Slurm,
    the sbatch script of the first run."""
    spec = spec.resolved()
    lines = [f"executor: {spec.name}, {len(runs)} job(s) of {describe_request(spec)} each"
             + (f", at most {spec.max_jobs} at once" if spec.max_jobs else "")
             + (f"; training under torchrun with {spec.gpus_per_run} processes per run" if spec.gpus_per_run > 1 else "")]
    if spec.name == "slurm" and runs:
        from .executors.slurm import sbatch_script  # on use: the optional dependency submitit

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
