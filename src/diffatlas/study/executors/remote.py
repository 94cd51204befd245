"""Runs as cluster jobs: the driver (the `study run` process, the ledger's only writer) and the job
side (what a Slurm job or a Ray actor executes: one run's work, then its result file).

The two meet only in the run directory, which lives on a filesystem the nodes share:

    driver   claims a run in the ledger, records the job's name, submits the job (payload: the
             run's resolved config, labels, evaluation and attempt number), records the job id
             and log file
    job      takes the run directory's lock, does the work (train + evaluate: both resume from
             what the folder holds), then writes <run_dir>/job-result.json atomically:
             {run, attempt, status: done|failed, error, seconds, host, pid, job}
    driver   every poll_s: the result of the current attempt is there -> done / failed in the
             ledger; the job ended without one -> a failed attempt; the job is unknown to the
             cluster (never submitted, or its cluster is gone) -> pending again, not counted

No job opens the SQLite ledger, so no SQLite file is ever shared over a network filesystem. A
killed driver leaves its jobs running; the next driver adopts the ledger rows (Ledger.adopt) and
follows the same jobs instead of submitting them again. Results, run ids and reports are those of
the local executor: the work function, its inputs and the run directory are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from ... import config as C
from ...checkpoint import atomic_write_text
from ...errors import UserError, one_line
from ..ledger import Ledger, RunRow, worker_name
from ..runner import CANCEL_KEY, Task, WorkFn, cancelled_since, train_and_evaluate
from ..spec import Evaluation, Study
from . import ExecutorSpec

RESULT_NAME = "job-result.json"
LOCK_NAME = ".job.lock"


# ---- the job side --------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobPayload:
    """Everything a job needs to do one run; pickled into the job (submitit, Ray)."""

    run_id: str
    run_dir: str                 # absolute, on the shared filesystem
    config: dict                 # the resolved config, as stored in the ledger
    labels: dict
    evaluation: Evaluation
    attempt: int
    threads: int = 1             # torch / OpenMP threads (the CPUs the job was given)
    processes: int = 1           # >1: training under torchrun, one process per GPU
    cwd: str | None = None       # the driver's working directory (relative data roots resolve as locally)
    log_path: str | None = None  # where the job's output goes (None: its stdout, captured by the scheduler)
    work: WorkFn = field(default=train_and_evaluate)


def read_result(run_dir: str | Path, attempt: int | None = None) -> dict | None:
    """The result a job wrote into `run_dir` (of `attempt`, when given), or None."""
    path = Path(run_dir) / RESULT_NAME
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or (attempt is not None and res.get("attempt") != attempt):
        return None
    return res


def run_job(p: JobPayload) -> dict:
    """Inside a cluster job: do one run's work, then write its result file. Never touches the ledger.

    Exceptions of the work become a 'failed' result; an interruption (the scheduler's requeue or
    preemption, Ctrl-C) leaves no result, so the driver keeps following the job."""
    run_dir = Path(p.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _output_to(p.log_path), _run_lock(run_dir):
        if p.cwd and os.path.isdir(p.cwd):
            os.chdir(p.cwd)
        _use_threads(p.threads)
        job = _scheduler_job_id()
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] run {p.run_id} attempt {p.attempt} on {socket.gethostname()} "
              f"(pid {os.getpid()}{', job ' + job if job else ''}, {p.threads} thread(s))", flush=True)
        t0 = time.time()
        status, error = "done", None
        try:
            task = Task(p.run_id, run_dir, C.from_dict(p.config), p.config, p.labels, p.evaluation, p.attempt,
                        log=lambda msg: print(msg, flush=True), processes=p.processes)
            p.work(task)
        except Exception as e:  # noqa: BLE001 - the run's failure is its result
            status = "failed"
            error = one_line(str(e)) if isinstance(e, UserError) else one_line(f"{type(e).__name__}: {e}")
            traceback.print_exc()
        result = {"run": p.run_id, "attempt": p.attempt, "status": status, "error": error,
                  "seconds": round(time.time() - t0, 3), "host": socket.gethostname(), "pid": os.getpid(), "job": job}
        atomic_write_text(run_dir / RESULT_NAME, json.dumps(result, indent=1))
        print(f"run {p.run_id} {status} in {result['seconds']:.1f} s" + (f": {error}" if error else ""), flush=True)
        return result


def _scheduler_job_id() -> str | None:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def _use_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(n)  # for torchrun's ranks and other child processes
    try:
        import torch

        torch.set_num_threads(max(1, n))
    except ImportError:
        pass


@contextlib.contextmanager
def _output_to(path: str | None) -> Iterator[None]:
    """Send this process's output to `path`, appended: Python's sys.stdout/sys.stderr and file
    descriptors 1 and 2 (child processes such as torchrun, C libraries); nothing changes when path is None."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stream = open(path, "a", buffering=1)  # line-buffered: the log follows the run
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = stream
        yield
    finally:
        sys.stdout, sys.stderr = saved_streams
        stream.close()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for f in (fd, *saved_fds):
            os.close(f)


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One job at a time in a run directory: a second job for the same run (a driver that could not
    know the first was alive) waits for the first instead of writing beside it."""
    import fcntl

    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            print(f"another job is working on {run_dir} ({holder or 'unknown holder'}); waiting for it", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---- backends --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobState:
    status: str                   # "active" (queued or running) | "ended" | "lost" (unknown to the cluster)
    detail: str = ""              # the scheduler's word for it (PENDING, RUNNING, FAILED, ...)
    job: str | None = None        # the job's id once known, when the ledger holds only its name


class ClusterBusy(Exception):
    """The cluster did not answer this time (squeue timed out, ...): the driver tries again later."""


class Backend(Protocol):
    """What the driver needs from a cluster. Jobs are named "<executor>:<id>" in the ledger."""

    name: str

    def names(self, payloads: list[JobPayload]) -> list[str]:
        """Names recorded in the ledger before submitting, by which `poll` finds a job whose
        submission the driver did not live to record."""

    def submit(self, payloads: list[JobPayload], names: list[str]) -> list[tuple[str, str | None]]:
        """Submit one job per payload; returns (job, log file) of each. UserError if the cluster refuses."""

    def poll(self, jobs: list[str]) -> dict[str, JobState]:
        """The state of each job (by ledger name or id): one query to the cluster for all of them."""

    def job_output(self, run_id: str) -> str | None:
        """The file a run's job writes its output to (None: the scheduler captures it)."""

    def log_path(self, job: str, run_id: str) -> str | None:
        """Where the log of `job` (doing run `run_id`) is."""

    def meta(self) -> dict:
        """What the ledger should remember about this cluster (e.g. the Ray address, for `study cancel`)."""

    def cancel(self, jobs: list[str]) -> None: ...

    def close(self) -> None: ...


def out_tag(out: Path) -> str:
    """Six hex digits of the study folder's absolute path: job names of two studies never collide."""
    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:6]


def make_backend(spec: ExecutorSpec, out: Path, *, connect: bool = True) -> Backend:
    if spec.name == "slurm":
        from .slurm import SlurmBackend

        return SlurmBackend(spec, out)
    if spec.name == "ray":
        from .ray_backend import RayBackend

        return RayBackend(spec, out, connect=connect)
    raise UserError(f"the {spec.name} executor runs no cluster jobs")


def payload_for(row: RunRow, study: Study, spec: ExecutorSpec, work: WorkFn, log_path: str | None = None) -> JobPayload:
    return JobPayload(row.id, str(Path(row.run_dir).resolve()), row.config, row.labels, study.evaluation, row.attempts,
                      threads=spec.cpus_per_run, processes=max(1, spec.gpus_per_run), cwd=os.getcwd(),
                      log_path=log_path, work=work)


# ---- the driver --------------------------------------------------------------------------------------

class RemoteDriver:
    """Submits a study's runs as cluster jobs and records what they report. The only process that
    writes the ledger while the study runs on a cluster."""

    def __init__(self, study: Study, out: Path, spec: ExecutorSpec, *, work: WorkFn = train_and_evaluate,
                 stale_after: float = 600.0, backend: Backend | None = None, result_grace_s: float = 60.0,
                 log: Any = None) -> None:
        self.study, self.out, self.spec, self.work = study, Path(out), spec.resolved(), work
        self.stale_after = stale_after
        self.backend = backend
        self.result_grace_s = result_grace_s  # a job's result may reach this host's view of a shared filesystem late
        self.log = log or (lambda msg: print(msg, flush=True))
        self.worker = worker_name(f"driver-{self.spec.name}")

    def drive(self, ids: list[str]) -> None:
        """Follow every run of `ids` until done or out of attempts (or the study is cancelled)."""
        started = time.time()
        backend = self.backend or make_backend(self.spec, self.out)
        ledger = Ledger(self.out / "ledger.sqlite", max_attempts=self.study.max_attempts, stale_after=self.stale_after)
        ended_at: dict[str, float] = {}
        try:
            ledger.set_meta("executor", self.spec.to_dict())
            for key, value in backend.meta().items():
                ledger.set_meta(key, value)
            follow = {r.id: r for r in ledger.adopt(self.spec.name, self.worker, only=ids)}
            if follow:
                self.log(f"re-attached to {len(follow)} {self.spec.name} job(s) of an earlier driver: "
                         + ", ".join(f"{r.id} ({r.job})" for r in follow.values()))
            total = len(ids)
            while True:
                if cancelled_since(ledger, started):
                    self.log("the study was cancelled (diffatlas study cancel); the driver stops")
                    break
                ledger.heartbeat_all(self.worker)
                changed = self._collect(ledger, backend, follow, ended_at)
                changed |= self._submit(ledger, backend, follow, ids)
                if changed:
                    c = ledger.counts()
                    self.log(f"progress: {c['done']}/{total} done, {len(follow)} job(s) queued or running, {c['failed']} failed")
                if not follow:
                    break
                time.sleep(self.spec.poll_s)
        except KeyboardInterrupt:
            if follow:
                self.log(f"driver interrupted with {len(follow)} {self.spec.name} job(s) submitted: `diffatlas study run` "
                         "re-attaches to those still running (and resumes the others from their snapshots), "
                         "`diffatlas study cancel` cancels them")
            raise
        finally:
            ledger.close()
            backend.close()

    # -- one look at the jobs -------------------------------------------------------------------------
    def _collect(self, ledger: Ledger, backend: Backend, follow: dict[str, RunRow], ended_at: dict[str, float]) -> bool:
        if not follow:
            return False
        try:
            states = backend.poll([r.job for r in follow.values() if r.job])
        except ClusterBusy as e:
            self.log(f"{e}; trying again in {self.spec.poll_s:g} s")
            return False
        changed = False
        now = time.time()
        for rid, row in list(follow.items()):
            st = states.get(row.job or "", JobState("lost", "no job recorded"))
            if st.job and st.job != row.job:  # the job of a submission the previous driver did not record
                log = backend.log_path(st.job, rid)
                ledger.set_job(rid, self.worker, st.job, log)
                row = follow[rid] = ledger.get(rid)
                self.log(f"run {rid}: found its job {st.job}")
            res = read_result(row.run_dir, row.attempts)
            if res is None and st.status == "active":
                ended_at.pop(rid, None)
                continue
            if res is None:
                first = ended_at.setdefault(rid, now)
                if now - first < self.result_grace_s:
                    continue
                res = read_result(row.run_dir, row.attempts)
            ended_at.pop(rid, None)
            del follow[rid]
            changed = True
            where = f"{row.job}" + (f", log {row.log}" if row.log else "")
            if res is not None and res.get("status") == "done":
                ledger.finish(rid, self.worker)
                self.log(f"run {rid} done in {res.get('seconds', 0):.1f} s ({where})")
            elif res is not None:
                ledger.fail(rid, self.worker, str(res.get("error") or "failed"))
                self.log(f"run {rid} failed: {res.get('error')} ({where})")
            elif st.status == "ended":
                msg = f"{row.job} ended ({st.detail or 'unknown state'}) without a result" + (f"; log {row.log}" if row.log else "")
                ledger.fail(rid, self.worker, msg)
                self.log(f"run {rid} failed: {msg}")
            else:
                ledger.release(rid, self.worker)
                self.log(f"run {rid}: its job {row.job} is unknown to the cluster ({st.detail}); it goes back to "
                         "pending and resumes from its last snapshot")
        return changed

    def _submit(self, ledger: Ledger, backend: Backend, follow: dict[str, RunRow], ids: list[str]) -> bool:
        rows: list[RunRow] = []
        while self.spec.max_jobs is None or len(follow) + len(rows) < self.spec.max_jobs:
            row = ledger.claim(self.worker, only=ids)
            if row is None:
                break
            rows.append(row)
        if not rows:
            return False
        payloads = [payload_for(r, self.study, self.spec, self.work, backend.job_output(r.id)) for r in rows]
        names = backend.names(payloads)
        for r, name in zip(rows, names):
            (Path(r.run_dir) / RESULT_NAME).unlink(missing_ok=True)  # a result of an earlier attempt
            ledger.set_job(r.id, self.worker, name)
        try:
            submitted = backend.submit(payloads, names)
        except BaseException:
            for r in rows:  # nothing was submitted: the runs are pending again, no attempt counted
                ledger.release(r.id, self.worker)
            raise
        for r, (job, log) in zip(rows, submitted):
            ledger.set_job(r.id, self.worker, job, log)
            follow[r.id] = ledger.get(r.id)
            labels = ", ".join(f"{k}={v}" for k, v in r.labels.items())
            self.log(f"run {r.id} ({labels}): attempt {r.attempts}/{self.study.max_attempts} submitted as {job}"
                     + (f", log {log}" if log else ""))
        return True


# ---- cancel ----------------------------------------------------------------------------------------

def cancel_study(out: Path, *, connect: bool = True) -> dict:
    """`diffatlas study cancel`: stop drivers and local runners from starting more runs, cancel the
    cluster jobs the ledger records, interrupt local workers of this host, and make those runs
    pending again (their folders keep what they have; a later `study run` resumes them)."""
    import signal

    from ..ledger import worker_dead

    if not (out / "ledger.sqlite").is_file():
        raise UserError(f"{str(out)!r} holds no study (no ledger.sqlite); nothing to cancel")
    report = {"jobs": [], "local": [], "runs": 0, "notes": []}
    with Ledger(out / "ledger.sqlite") as ledger:
        ledger.set_meta(CANCEL_KEY, time.time())
        running = [r for r in ledger.rows() if r.status == "running"]
        by_executor: dict[str, list[str]] = {}
        for r in running:
            if r.job:
                by_executor.setdefault(r.job.split(":", 1)[0], []).append(r.job)
            elif r.worker and r.worker.split(":")[0] == socket.gethostname() and not worker_dead(r.worker):
                os.kill(int(r.worker.split(":")[1]), signal.SIGINT)  # the worker gives its run back and stops
                report["local"].append(r.worker)
        spec_dict = ledger.get_meta("executor") or {}
        for name, jobs in by_executor.items():
            spec = ExecutorSpec(name=name)
            if name == "ray" and isinstance(spec_dict.get("ray"), dict):
                from . import RayOptions

                spec = ExecutorSpec(name=name, ray=RayOptions(address=ledger.get_meta("ray_address")
                                                              or spec_dict["ray"].get("address")))
            try:
                backend = make_backend(spec, out, connect=connect)
                try:
                    backend.cancel(jobs)
                finally:
                    backend.close()
                report["jobs"] += jobs
            except UserError as e:
                report["notes"].append(f"{name}: {e}")
        report["runs"] = ledger.hand_back([r.id for r in running if r.job])
    return report
