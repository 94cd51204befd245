"""Run a study: K worker processes on one machine claim runs from the ledger and do each run's work
(the local executor), or a driver submits each run as a cluster job (executors.remote).

The per-run work is a callable `work(task: Task) -> None`, by default `train_and_evaluate`
(diffatlas.train.train, then diffatlas.evaluation.evaluate_run for every sampler setting). Both
resume by themselves, so a run interrupted by SIGKILL or Ctrl-C continues where it stopped
when the study is run again; finished runs are skipped through the ledger.

Workers split the machine: with GPUs, worker i sees GPU i mod #GPUs (CUDA_VISIBLE_DEVICES);
on CPU each worker uses cores // K threads (torch.set_num_threads).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from .. import validate
from ..io import atomic_write_text
from ..errors import UserError, one_line
from ..tensorboard_log import link_runs
from .executors import ExecutorSpec
from .executors.remote import RemoteDriver
from .ledger import Ledger, RunRow, worker_dead, worker_name
from .spec import Study
from .tuning import TUNING_FILE, TUNING_IDS_KEY, configuration_label, decide, load_choices

# Task, the work function and the cancel mark live in study.work (cluster jobs use them without the
# local runner); re-exported here, where users import them from.
from .work import CANCEL_KEY, Task, WorkFn, cancelled_since, train_and_evaluate, train_under_torchrun  # noqa: F401

# ---- output folder ---------------------------------------------------------------------------

def default_out(study: Study) -> Path:
    return Path("studies-out") / validate.folder_name(study.name, "study name")


def prepare(study: Study, out: Path, resolve: Callable[[Any], Any] | None = None,
            stale_after: float = 600.0, log: Callable[[str], Any] | None = None) -> tuple[Ledger, list]:
    """Expand and validate the study first (nothing is written on a bad study), then open the
    ledger and add the runs not in it yet (prepare_study without the tuning runs)."""
    ledger, runs, _ = prepare_study(study, out, resolve, stale_after, log)
    return ledger, runs


def prepare_study(study: Study, out: Path, resolve: Callable[[Any], Any] | None = None,
                  stale_after: float = 600.0, log: Callable[[str], Any] | None = None) -> tuple[Ledger, list, list]:
    """prepare, returning (ledger, seeded runs, tuning runs). A study with `tune` adds its tuning
    runs; its seeded runs exist only once OUT/tuning.json records this tuning's choices (until then
    the list is empty: Runner.run tunes first)."""
    tuning = study.tuning_runs(resolve)
    runs = study.runs(resolve) if study.tune is None else []
    validate.writable_dir(out, "study output folder")
    for name in ("runs", "ledger.sqlite", "study.yaml", TUNING_FILE):
        if (out / name).exists() and not validate.can_write(out / name):
            raise UserError(f"{str(out / name)!r} is not writable by this user; fix its permissions")
    if (out / "runs").exists() and not (out / "runs").is_dir():
        raise UserError(f"{str(out / 'runs')!r} is a file; the study keeps its run folders there (move it away)")
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "ledger.sqlite", max_attempts=study.max_attempts, stale_after=stale_after)  # readable?
    (out / "runs").mkdir(exist_ok=True)
    text = yaml.safe_dump(study.raw, sort_keys=False) if study.raw else ""
    if text:  # a temporary file of its own per writer: runners may start side by side
        atomic_write_text(out / "study.yaml", text)
    ledger.sync(tuning, out / "runs")
    _link(out, tuning)
    ledger.set_meta("study_name", study.name)
    ledger.set_meta(TUNING_IDS_KEY, [r.id for r in tuning])
    if study.tune is not None:
        choices = load_choices(out, study, tuning, log)
        if choices is not None:
            runs = study.runs(resolve, choices)
    _add_seeded(ledger, out, runs)
    evaluation = json.loads(json.dumps(asdict(study.evaluation), default=str))
    before = ledger.get_meta("evaluation")
    if before is not None and before != evaluation:
        reopened = ledger.reopen_done()
        if reopened and log is not None:
            log(f"the study's evaluation section changed: {reopened} finished run(s) are evaluated again "
                "(training is not repeated; entries already in each metrics.jsonl are not recomputed)")
    ledger.set_meta("evaluation", evaluation)
    ledger.set_meta("budget_kimg", study.budget_kimg)
    return ledger, runs, tuning


def _link(out: Path, runs: list) -> None:
    link_runs(out, [(f"{r.label()}, seed={r.seed}", r.run_dir or out / "runs" / r.id)
                    for r in runs if r.config.train.tensorboard])


def _add_seeded(ledger: Ledger, out: Path, runs: list) -> None:
    """The runs of the comparison: into the ledger, and recorded as the study's runs (results and
    status read `run_ids`; the tuning runs are recorded apart, under TUNING_IDS_KEY)."""
    ledger.sync(runs, out / "runs")
    _link(out, runs)
    ledger.set_meta("run_ids", [r.id for r in runs])


# ---- the worker loop -------------------------------------------------------------------------

class _Heartbeat(threading.Thread):
    def __init__(self, db_path: Path, run_id: str, worker: str, every: float) -> None:
        super().__init__(daemon=True)
        self.db_path, self.run_id, self.worker, self.every = db_path, run_id, worker, every
        self.stop = threading.Event()
        self.lost = False

    def run(self) -> None:
        ledger = Ledger(self.db_path)
        try:
            while not self.stop.wait(self.every):
                if not ledger.heartbeat(self.run_id, self.worker):
                    self.lost = True
        finally:
            ledger.close()


def worker_loop(out: Path, study: Study, work: WorkFn, *, tag: str | None = None, run_ids: list[str] | None = None,
                stale_after: float = 600.0, heartbeat_s: float = 15.0, max_runs: int | None = None) -> dict:
    """Claim and do runs until none is left. Returns counts {done, failed}."""
    worker = worker_name(tag)
    prefix = f"[{tag}] " if tag else ""

    def log(msg: str) -> None:
        print(f"{prefix}{msg}", flush=True)

    ledger = Ledger(out / "ledger.sqlite", max_attempts=study.max_attempts, stale_after=stale_after)
    total = len(run_ids) if run_ids is not None else len(ledger.rows())
    result = {"done": 0, "failed": 0}
    started = time.time()
    try:
        while max_runs is None or result["done"] + result["failed"] < max_runs:
            if cancelled_since(ledger, started):
                log("the study was cancelled (diffatlas study cancel); no further run is started")
                break
            row = ledger.claim(worker, only=run_ids)
            if row is None:
                break
            result_key = _do_run(ledger, row, out, study, work, worker, heartbeat_s, log)
            result[result_key] += 1
            c = ledger.counts(run_ids)
            log(f"progress: {c['done']}/{total} done, {c['running']} running, {c['failed']} failed")
    finally:
        ledger.close()
    return result


def _do_run(ledger: Ledger, row: RunRow, out: Path, study: Study, work: WorkFn, worker: str,
            heartbeat_s: float, log: Callable[[str], None]) -> str:
    run_dir = Path(row.run_dir)
    labels = ", ".join(f"{k}={v}" for k, v in row.labels.items())
    log(f"run {row.id} ({labels}): attempt {row.attempts}/{study.max_attempts}")
    hb = _Heartbeat(ledger.path, row.id, worker, heartbeat_s)
    hb.start()
    t0 = time.time()
    try:
        cfg = C.from_dict(row.config)
        work(Task(row.id, run_dir, cfg, row.config, row.labels, study.evaluation_for(row.labels), row.attempts, log))
    except KeyboardInterrupt:
        ledger.release(row.id, worker)
        log(f"run {row.id} interrupted; it resumes on the next `study run`")
        raise
    except Exception as e:  # noqa: BLE001 - a run's failure is recorded, the study goes on
        msg = one_line(f"{type(e).__name__}: {e}") if not isinstance(e, UserError) else one_line(str(e))
        ledger.fail(row.id, worker, msg)
        log(f"run {row.id} failed after {time.time() - t0:.1f} s: {msg}")
        if not isinstance(e, UserError):
            traceback.print_exc(file=sys.stderr)
        return "failed"
    finally:
        hb.stop.set()
        hb.join()
    if ledger.finish(row.id, worker):
        log(f"run {row.id} done in {time.time() - t0:.1f} s")
    else:
        log(f"run {row.id} finished here but was reclaimed by another runner meanwhile")
    return "done"


def describe_request(spec: ExecutorSpec) -> str:
    """What each cluster job asks for, in words: '8 CPUs, 1 GPU, 32 GB'."""
    parts = [f"{spec.cpus_per_run} CPU{'s' if spec.cpus_per_run != 1 else ''}"]
    if spec.gpus_per_run:
        parts.append(f"{spec.gpus_per_run} GPU{'s' if spec.gpus_per_run != 1 else ''}")
    if spec.mem_gb:
        parts.append(f"{spec.mem_gb:g} GB")
    return ", ".join(parts)


# ---- worker processes ------------------------------------------------------------------------

def _set_parent_death_signal() -> None:
    """Linux: a worker dies with its runner (so a SIGKILLed runner leaves no orphan doing work)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def interruptible() -> None:
    """Make SIGINT raise KeyboardInterrupt in this process even where it was started with SIGINT
    ignored (a study started in the background by a non-interactive shell, or under nohup, inherits
    SIG_IGN, and Python then leaves it ignored): `study cancel` interrupts local workers with SIGINT."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _child(out: str, study: Study, work: WorkFn, tag: str, run_ids: list[str], env: dict, threads: int,
           stale_after: float, heartbeat_s: float) -> None:
    _set_parent_death_signal()
    interruptible()
    os.environ.update(env)
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:
        pass
    try:
        worker_loop(Path(out), study, work, tag=tag, run_ids=run_ids, stale_after=stale_after, heartbeat_s=heartbeat_s)
    except KeyboardInterrupt:
        sys.exit(130)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_count() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


class Runner:
    """Runs a study into `out`: with the local executor, `workers` processes on this machine; with
    slurm or ray, a driver that submits each run as a cluster job (executors.remote).

    >>> Runner(load_study("studies/quickstart.yaml"), Path("out/quickstart"), workers=2).run()

    `executor` defaults to the study file's `executor:` section, `workers` to its `workers`.
    `work` replaces the per-run work (train + evaluate) — tests inject fast fakes; `resolve`
    replaces config.resolve when expanding the study.
    """

    def __init__(self, study: Study, out: str | Path | None = None, *, workers: int | None = None,
                 work: WorkFn = train_and_evaluate, resolve: Callable[[Any], Any] | None = None,
                 stale_after: float = 600.0, heartbeat_s: float = 15.0, retry_failed: bool = False,
                 executor: ExecutorSpec | None = None, driver_options: dict | None = None) -> None:
        self.executor = (executor or study.executor).resolved()
        self.workers = self.executor.workers if workers is None else workers
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        self.study = study
        self.out = Path(out) if out is not None else default_out(study)
        self.work = work
        self.resolve = resolve
        self.stale_after = stale_after
        self.heartbeat_s = heartbeat_s
        self.retry_failed = retry_failed
        self.driver_options = driver_options or {}  # RemoteDriver keyword arguments (tests: faster polling)

    def run(self) -> dict:
        """Do every run not done yet; returns the ledger's status counts. A study with `tune` first
        does its tuning runs, decides (OUT/tuning.json), then adds and does its seeded runs."""
        def log(msg: str) -> None:
            print(msg, flush=True)

        started = time.time()
        ledger, runs, tuning = prepare_study(self.study, self.out, self.resolve, self.stale_after, log=log)
        if self.retry_failed:
            ledger.reset_failed()
        c = ledger.counts([r.id for r in tuning])
        where = (f"{self.workers} worker(s)" if not self.executor.remote
                 else f"{self.executor.name} jobs ({describe_request(self.executor)} per run)")
        ledger.close()
        if tuning and not runs:  # phase 1: the tuning runs, then the choice and the seeded runs
            t = self.study.tune
            print(f"study {self.study.name}: tuning first, {len(tuning)} tuning runs in {self.out} "
                  f"({len(self.study.combinations())} configuration(s) x {len(t.candidates())} candidate(s) of "
                  f"{', '.join(t.keys)} on the held-out seed {t.seed}; {c['done']} done, {c['failed']} failed); {where}",
                  flush=True)
            runs = self._tune(tuning, started)
            if runs is None:
                return self._summary([r.id for r in tuning])
        elif tuning:
            print(f"study {self.study.name}: tuned ({self.out / TUNING_FILE}); the seeded runs use its choices", flush=True)
            if c["pending"] or c["failed"]:  # reopened (a changed evaluation section) or retried: finished, not re-decided
                print(f"study {self.study.name}: {c['pending'] + c['failed']} tuning run(s) to finish first; "
                      f"the choice stays as {TUNING_FILE} records it", flush=True)
                self._execute([r.id for r in tuning])
        ids = [r.id for r in runs]
        with Ledger(self.out / "ledger.sqlite") as ledger:
            c = ledger.counts(ids)
            cancelled = cancelled_since(ledger, started)
        if cancelled:  # cancelled between the phases
            print(f"study {self.study.name}: cancelled (diffatlas study cancel); no seeded run is started", flush=True)
            return self._summary(ids)
        print(f"study {self.study.name}: {len(runs)} runs in {self.out} ({c['done']} done, {c['failed']} failed); "
              f"{where}", flush=True)
        self._execute(ids)
        return self._summary(ids)

    def _execute(self, ids: list[str]) -> None:
        """Do the runs of `ids` with the executor until none can be claimed (or the study is cancelled)."""
        if self.executor.remote:
            RemoteDriver(self.study, self.out, self.executor, work=self.work, stale_after=self.stale_after,
                         **self.driver_options).drive(ids)
        elif self.workers == 1:
            interruptible()
            worker_loop(self.out, self.study, self.work, run_ids=ids, stale_after=self.stale_after, heartbeat_s=self.heartbeat_s)
        else:
            self._run_processes(ids)

    def _tune(self, tuning: list, started: float) -> list | None:
        """Phase 1: do the tuning runs (waiting for any another runner is doing), then decide, write
        tuning.json and add the seeded runs. Returns the seeded runs, or None when the tuning is not
        complete (cancelled, interrupted workers, or a tuning run out of attempts)."""
        ids = [r.id for r in tuning]
        waiting = False
        while True:
            self._execute(ids)
            with Ledger(self.out / "ledger.sqlite", max_attempts=self.study.max_attempts) as ledger:
                rows = [ledger.get(i) for i in ids]
                cancelled = cancelled_since(ledger, started)
            by = {s: [r for r in rows if r is not None and r.status == s] for s in ("pending", "running", "failed")}
            elsewhere = [r for r in by["running"] if not worker_dead(r.worker)]
            if cancelled or by["pending"] or (by["running"] and not elsewhere):
                print(f"study {self.study.name}: the tuning is not complete ({len(by['pending']) + len(by['running'])} "
                      f"tuning run(s) left{', the study was cancelled' if cancelled else ''}); the seeded runs start "
                      "after it: `diffatlas study run` continues", flush=True)
                return None
            if by["failed"]:
                print(f"study {self.study.name}: {len(by['failed'])} tuning run(s) failed after "
                      f"{self.study.max_attempts} attempt(s); every candidate of every configuration is needed for an "
                      "equal tuning budget, so no seeded run is started: fix the cause and run again with --retry-failed",
                      flush=True)
                return None
            if not elsewhere:
                break
            if not waiting:
                print(f"study {self.study.name}: waiting for {len(elsewhere)} tuning run(s) another runner is doing",
                      flush=True)
                waiting = True
            time.sleep(max(0.2, min(self.heartbeat_s, 5.0)))
        with Ledger(self.out / "ledger.sqlite", max_attempts=self.study.max_attempts) as ledger:
            run_dirs = {r.id: Path(r.run_dir) for r in rows}
            choices, rec = decide(self.out, self.study, tuning, run_dirs)
            metric = self.study.tune.metric
            for conf in rec["configurations"]:
                values = "; ".join(f"{configuration_label(c['values'])}: "
                                   + ("not finite" if c["value"] is None else f"{c['value']:.4g}") for c in conf["candidates"])
                print(f"tuned {configuration_label(conf['labels'])}: final {metric} per candidate {values}; chosen "
                      f"{configuration_label(conf['chosen'])}", flush=True)
            runs = self.study.runs(self.resolve, choices)
            _add_seeded(ledger, self.out, runs)
        return runs

    def _summary(self, ids: list[str]) -> dict:
        with Ledger(self.out / "ledger.sqlite", max_attempts=self.study.max_attempts) as ledger:
            counts = ledger.counts()
            failed = [r for r in ledger.rows() if r.status == "failed" and r.id in set(ids)]
        print(f"study {self.study.name}: {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending", flush=True)
        for r in failed:
            print(f"  failed {r.id} after {r.attempts} attempt(s): {r.error}", flush=True)
        return counts

    def _run_processes(self, ids: list[str]) -> None:
        ctx = mp.get_context("spawn")
        ngpu = _gpu_count()
        threads = max(1, _cpu_count() // self.workers)
        procs = []
        for i in range(self.workers):
            env = {"CUDA_VISIBLE_DEVICES": str(i % ngpu)} if ngpu else {}
            if not ngpu:
                env["OMP_NUM_THREADS"] = str(threads)
            p = ctx.Process(target=_child, args=(str(self.out), self.study, self.work, f"w{i}", ids, env, threads,
                                                 self.stale_after, self.heartbeat_s), daemon=False)
            p.start()
            procs.append(p)
        where = f"GPU {', '.join(str(i % ngpu) for i in range(self.workers))}" if ngpu else f"{threads} CPU thread(s) each"
        print(f"started {self.workers} workers ({where})", flush=True)
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.join(timeout=30)
            raise
