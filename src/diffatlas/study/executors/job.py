"""The job side of the cluster executors, and what a backend is: what a Slurm job or a Ray actor
executes for one run (`run_job`: the run's work, then its result file), the payload it receives,
and the Backend protocol with the job states the driver (executors.remote) polls.

Backends (executors.slurm, executors.ray_backend) import this module, never the driver, which
chooses among them.
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
from typing import Iterator, Protocol

from ... import config as C
from ...io import atomic_write_json
from ...errors import UserError, one_line
from ..spec import Evaluation
from ..work import Task, WorkFn, train_and_evaluate

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
        atomic_write_json(run_dir / RESULT_NAME, result)
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
