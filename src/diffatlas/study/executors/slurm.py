"""The Slurm executor, through submitit (`pip install 'diffatlas[slurm]'`).

Each run is one Slurm job (or one element of a job array) running `executors.job.run_job`
with one task: `--cpus-per-task`, `--gpus-per-node`, `--mem`, `--time`, `--partition`,
`--account`, `--qos` and any extra sbatch options come from the study's `executor:` section; a
run with several GPUs trains under torchrun inside its job. submitit writes the sbatch script
and the pickled payload into <out>/jobs/slurm/, with one log per job (<job>_0_log.out).

Time limits: sbatch's `--signal=USR2@signal_delay_s` warns the job before its limit; submitit
then asks `SlurmRun.checkpoint` for the job to run next and requeues the job (`scontrol
requeue`, same job id, at most max_requeues times). Training resumes from the run's last
snapshot, evaluation skips what metrics.jsonl holds: a requeued run loses at most one snapshot
interval. The driver sees the job pending again and goes on following it.

Job states come from one `squeue --states=all` listing of the user's jobs (no accounting
database needed); a job that left squeue without writing its result counts as a failed attempt.
"""

from __future__ import annotations

import getpass
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from ...errors import UserError, one_line
from . import ExecutorSpec, sbatch_option
from .job import ClusterBusy, JobPayload, JobState, out_tag, run_job

try:
    import submitit
    from submitit.core.utils import JobPaths
    from submitit.helpers import Checkpointable
    from submitit.slurm.slurm import _make_sbatch_string
except ImportError:  # the optional extra is not installed
    submitit = None
    Checkpointable = object

# squeue states of a job that may still write its result (https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES)
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
          "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def require_submitit() -> None:
    if submitit is None:
        raise UserError("the slurm executor needs submitit: pip install 'diffatlas[slurm]' (or pip install submitit)")


class SlurmRun(Checkpointable):  # type: ignore[misc, valid-type]
    """The callable a Slurm job runs. Checkpointable: at the time-limit signal submitit requeues the
    job with the same payload (checkpoint below), and the run resumes from its run folder."""

    def __call__(self, payload: JobPayload) -> dict:
        return run_job(payload)

    def checkpoint(self, payload: JobPayload) -> Any:
        print(f"run {payload.run_id}: time limit near; the job is requeued and resumes from the run's last snapshot",
              flush=True)
        return super().checkpoint(payload)


def sbatch_parameters(spec: ExecutorSpec, job_name: str) -> dict:
    """submitit SlurmExecutor parameters of one run's job."""
    s = spec.slurm
    params: dict[str, Any] = {"job_name": job_name, "time": int(s.time_min), "nodes": 1, "ntasks_per_node": 1,
                              "cpus_per_task": int(spec.cpus_per_run), "signal_delay_s": int(s.signal_delay_s),
                              "stderr_to_stdout": True}
    if spec.gpus_per_run:
        params["gpus_per_node"] = int(spec.gpus_per_run)
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.setup:
        params["setup"] = list(s.setup)
    extra: dict[str, Any] = {"requeue": True}  # allow `scontrol requeue` where JobRequeue=0 is the default
    if spec.mem_gb:
        extra["mem"] = f"{round(spec.mem_gb * 1024)}M"
    extra.update(sbatch_option(line) for line in s.sbatch)
    params["additional_parameters"] = extra
    return params


def job_folder(out: Path) -> Path:
    return (out / "jobs" / "slurm").resolve()


def job_name(out: Path, run_id: str, attempt: int) -> str:
    """The Slurm job name of one attempt of a run: how a driver finds a job it did not live to record."""
    return f"diffatlas-{out_tag(out)}-{run_id}-{attempt}"


def sbatch_script(spec: ExecutorSpec, out: Path, run_id: str) -> str:
    """The sbatch script submitit submits for the first attempt of one run (`study plan --executor slurm`)."""
    require_submitit()
    folder = job_folder(out)
    python = spec.slurm.python or shlex.quote(sys.executable)
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])  # as SlurmExecutor does
    try:
        return _make_sbatch_string(command=command, folder=folder,
                                   **sbatch_parameters(spec, job_name(out, run_id, 1)))
    except (TypeError, ValueError) as e:
        raise UserError(f"executor.slurm: {one_line(str(e))}") from None


class SlurmBackend:
    name = "slurm"

    def __init__(self, spec: ExecutorSpec, out: Path) -> None:
        require_submitit()
        self.spec, self.out, self.folder, self.tag = spec, Path(out), job_folder(Path(out)), out_tag(Path(out))

    def _executor(self) -> Any:
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise UserError("the slurm executor needs Slurm's sbatch and srun on this machine's PATH (run the study "
                            "from a login node of the cluster)")
        ex = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=self.spec.slurm.max_requeues,
                                    python=self.spec.slurm.python)
        return ex

    # -- submission ----------------------------------------------------------------------------------
    def names(self, payloads: list[JobPayload]) -> list[str]:
        if self.spec.slurm.array and len(payloads) > 1:
            name = f"diffatlas-{self.tag}-a{uuid.uuid4().hex[:8]}"
            return [f"slurm:?{name}#{i}" for i in range(len(payloads))]
        return [f"slurm:?{job_name(self.out, p.run_id, p.attempt)}" for p in payloads]

    def submit(self, payloads: list[JobPayload], names: list[str]) -> list[tuple[str, str | None]]:
        ex = self._executor()
        try:
            if self.spec.slurm.array and len(payloads) > 1:
                ex.update_parameters(**sbatch_parameters(self.spec, names[0][len("slurm:?"):].split("#")[0]))
                with ex.batch():
                    jobs = [ex.submit(SlurmRun(), p) for p in payloads]
            else:
                jobs = []
                for p, name in zip(payloads, names):
                    ex.update_parameters(**sbatch_parameters(self.spec, name[len("slurm:?"):]))
                    jobs.append(ex.submit(SlurmRun(), p))
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - sbatch's refusal (bad partition, account, limits) is the user's to fix
            raise UserError(f"sbatch refused the job: {one_line(str(e))[-400:]}") from None
        return [(f"slurm:{j.job_id}", self.log_path(f"slurm:{j.job_id}", p.run_id)) for j, p in zip(jobs, payloads)]

    def job_output(self, run_id: str) -> str | None:
        return None  # sbatch --output: submitit's <job>_0_log.out

    def log_path(self, job: str, run_id: str) -> str | None:
        jid = job.split(":", 1)[1]
        return None if jid.startswith("?") else str(JobPaths(self.folder, job_id=jid, task_id=0).stdout)

    def meta(self) -> dict:
        return {}

    # -- following -----------------------------------------------------------------------------------
    def _listing(self) -> list[tuple[str, str, str, str, str]]:
        """(job id, state, name, array job id, array index) of every job of this user squeue knows."""
        if shutil.which("squeue") is None:
            raise UserError("the slurm executor needs Slurm's squeue on this machine's PATH")
        cmd = ["squeue", "--noheader", "--states=all", "--array", f"--user={getpass.getuser()}", "--format=%i|%T|%j|%F|%K"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise ClusterBusy("squeue did not answer within 120 s") from None
        if proc.returncode != 0:
            raise ClusterBusy(f"squeue failed: {one_line(proc.stderr)[-300:]}")
        rows = []
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 5:
                rows.append(tuple(parts))
        return rows  # type: ignore[return-value]

    def poll(self, jobs: list[str]) -> dict[str, JobState]:
        if not jobs:
            return {}
        listing = self._listing()
        state = {jid: st for jid, st, _, _, _ in listing}
        by_name: dict[str, dict[str, str]] = {}
        for jid, _, name, base, index in sorted(listing, key=lambda r: int(r[3]) if r[3].isdigit() else 0):
            by_name.setdefault(name, {})[index if index not in ("N/A", "") else ""] = jid  # the newest job wins
        out = {}
        for job in jobs:
            jid = job.split(":", 1)[1]
            if jid.startswith("?"):  # submitted under this name, id not recorded: find it by name
                name, _, index = jid[1:].partition("#")
                found = by_name.get(name, {}).get(index)
                if found is None:
                    out[job] = JobState("lost", "no job of that name")
                    continue
                out[job] = self._state(state[found], job=f"slurm:{found}")
            elif jid in state:
                out[job] = self._state(state[jid])
            else:
                out[job] = JobState("ended", "no longer listed by squeue")
        return out

    @staticmethod
    def _state(word: str, job: str | None = None) -> JobState:
        word = word.split()[0] if word else "UNKNOWN"
        return JobState("active" if word in ACTIVE else "ended", word, job)

    def cancel(self, jobs: list[str]) -> None:
        ids = [j.split(":", 1)[1] for j in jobs]
        named = [i[1:].split("#")[0] for i in ids if i.startswith("?")]
        plain = [i for i in ids if not i.startswith("?")]
        if shutil.which("scancel") is None:
            raise UserError("the slurm executor needs Slurm's scancel on this machine's PATH")
        for args in ([plain] if plain else []) + [["--name", n] for n in sorted(set(named))]:
            proc = subprocess.run(["scancel", *args], capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
                raise UserError(f"scancel failed: {one_line(proc.stderr)[-300:]}")

    def close(self) -> None:
        pass
