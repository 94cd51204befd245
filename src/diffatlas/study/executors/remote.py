"""Runs as cluster jobs: the driver (the `study run` process, the ledger's only writer) and the job
side (executors.job: what a Slurm job or a Ray actor executes, one run's work, then its result file).

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

import os
import socket
import time
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..ledger import Ledger, RunRow, worker_dead, worker_name
from ..spec import Study
from ..work import CANCEL_KEY, WorkFn, cancelled_since, train_and_evaluate
from . import ExecutorSpec, RayOptions
from .job import (  # noqa: F401  (the job side, re-exported: run_job and out_tag as executors.remote names them)
    RESULT_NAME,
    Backend,
    ClusterBusy,
    JobPayload,
    JobState,
    out_tag,
    read_result,
    run_job,
)


def make_backend(spec: ExecutorSpec, out: Path, *, connect: bool = True) -> Backend:
    if spec.name == "slurm":
        from .slurm import SlurmBackend  # on use: the optional dependency submitit

        return SlurmBackend(spec, out)
    if spec.name == "ray":
        from .ray_backend import RayBackend  # on use: the optional dependency ray

        return RayBackend(spec, out, connect=connect)
    raise UserError(f"the {spec.name} executor runs no cluster jobs")


def payload_for(row: RunRow, study: Study, spec: ExecutorSpec, work: WorkFn, log_path: str | None = None) -> JobPayload:
    return JobPayload(row.id, str(Path(row.run_dir).resolve()), row.config, row.labels, study.evaluation_for(row.labels), row.attempts,
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
                    c = ledger.counts(ids)
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
