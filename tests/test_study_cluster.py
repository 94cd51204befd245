"""Studies on a cluster: the executor section, the driver's bookkeeping, the job side, and the same
tiny study run by the local executor, a real Ray instance and a real single-node Slurm.

Slurm: when this machine can start Debian's slurmctld + slurmd + munged as root, the `slurm`
fixture starts a private single-node cluster (own config, ports, munge key and socket) and the
Slurm tests submit real jobs through submitit; elsewhere they skip with the reason. Ray: one
local instance (2 CPUs) serves the whole module. Both need their optional extra installed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import diffatlas
from diffatlas import cli
from diffatlas.errors import UserError
from diffatlas.study.executors import ExecutorSpec, parse_executor, with_cli
from diffatlas.study.executors.remote import (RESULT_NAME, JobPayload, JobState, RemoteDriver, read_result,
                                              run_job)
from diffatlas.study.ledger import Ledger
from diffatlas.study.runner import Runner, Task
from diffatlas.study.spec import study_from_dict
from test_study import FAKE_STUDY, fake_work, no_resolve

HERE = Path(__file__).resolve().parent
SRC = Path(diffatlas.__file__).resolve().parent.parent

TINY = {  # a real study: 2 dynamics, 4 training steps each, FID and IS of both snapshots
    "name": "tiny",
    "base": {"data": {"name": "digits"}, "network": {"preset": "unet-xs"},
             "train": {"batch": 16, "lr": 1.0e-3, "warmup_kimg": 0.0, "tick_kimg": 0.032, "doctor": False}},
    "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}],
    "seeds": [0],
    "budget_kimg": 0.064,
    "evaluation": {"metrics": ["fid", "is"], "n": 64, "every_kimg": 0.032, "samplers": [{"sampler": "ddim", "steps": 2}]},
}
# fake work (test_study.fake_work: snapshots, stats and metric lines like a real run, no model): 2 runs
FAKE = {**FAKE_STUDY, "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}], "seeds": [0]}
TIMING = ("wall_s", "sample_s", "time")  # how long, and when: the only fields allowed to differ between executors


def counting_work(task: Task) -> None:
    """fake_work that first records each start of the run's work (one line per job that began it)."""
    task.run_dir.mkdir(parents=True, exist_ok=True)
    with open(task.run_dir / "starts.txt", "a") as f:
        f.write(f"{os.getpid()}\n")
    fake_work(task)


class PacedWork:
    """counting_work at a given pace (seconds per snapshot), whatever the environment of the job's
    process (Ray workers keep the environment their cluster started with)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, task: Task) -> None:
        os.environ["FAKE_DELAY"] = str(self.delay)
        counting_work(task)


def _write(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


def _metrics(out: Path) -> dict[str, list[str]]:
    """run id -> its metric entries without timing fields, sorted."""
    res = {}
    for rd in sorted((out / "runs").iterdir()):
        lines = (rd / "metrics.jsonl").read_text().splitlines()
        res[rd.name] = sorted(json.dumps({k: v for k, v in json.loads(l).items() if k not in TIMING}, sort_keys=True)
                              for l in lines)
    return res


@pytest.fixture(scope="module")
def job_env(tmp_path_factory):
    """Environment every job inherits (Slurm exports it, Ray workers start with it): this diffatlas and
    the test helpers importable, one evaluation-classifier cache for the module."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "DIFFATLAS_CACHE", "OMP_NUM_THREADS")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ["DIFFATLAS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def local_reference(job_env, tmp_path_factory) -> Path:
    """The tiny study run by the local executor (the reference every executor must reproduce)."""
    out = tmp_path_factory.mktemp("local") / "out"
    counts = Runner(study_from_dict(TINY), out).run()
    assert counts["done"] == 2
    return out


# ---- the executor section ------------------------------------------------------------------------

def test_executor_section_defaults_validation_and_cli_override():
    st = study_from_dict({"name": "x"})
    assert st.executor == ExecutorSpec() and not st.executor.remote  # no section: the local executor, as before
    spec = parse_executor({"name": "slurm", "cpus_per_run": 8, "gpus_per_run": 2, "mem_gb": 32,
                           "slurm": {"partition": "gpu", "time_min": 90, "sbatch": ["--constraint=a100"], "setup": ["module load cuda"]}})
    assert spec.slurm.setup == ("module load cuda",) and spec.resolved().poll_s == 30.0
    assert parse_executor("ray").resolved().poll_s == 2.0
    assert spec.resolved().to_dict()["slurm"]["sbatch"] == ["--constraint=a100"]  # every default resolved, storable
    for bad, msg in [({"name": "slurmm"}, "did you mean 'slurm'"), ({"gpus_per_run": -1}, "gpus_per_run"),
                     ({"slurm": {"partion": "gpu"}}, "did you mean 'partition'"), ({"slurm": {"time_min": 0}}, "time_min"),
                     ({"slurm": {"sbatch": ["constraint=a100"]}}, "long sbatch option"), ({"mem_gb": "lots"}, "mem_gb")]:
        with pytest.raises(UserError, match=msg) as e:
            study_from_dict({"name": "x", "executor": bad})
        assert "\n" not in str(e.value)
    assert with_cli(spec, name="ray", address="auto").ray.address == "auto"
    assert with_cli(parse_executor({"workers": 3})).workers == 3
    with pytest.raises(UserError, match="--address"):
        with_cli(spec, address="auto")  # slurm has no address
    # the run ids do not depend on where the runs execute
    ids = [r.id for r in study_from_dict(FAKE_STUDY).runs(no_resolve)]
    assert ids == [r.id for r in study_from_dict({**FAKE_STUDY, "executor": {"name": "ray"}}).runs(no_resolve)]


def test_bad_executor_on_the_command_line_is_one_line(tmp_path, capsys):
    study = _write(tmp_path / "s.yaml", FAKE_STUDY)
    for cmd in (["study", "run", str(study), "--executor", "slrum", "--out", str(tmp_path / "o")],
                ["study", "run", str(study), "--address", "auto", "--out", str(tmp_path / "o")]):
        assert cli.main(cmd) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffatlas: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_plan_prints_the_sbatch_script_of_one_run(tmp_path, capsys):
    pytest.importorskip("submitit", reason="the slurm executor's tests need the extra: pip install 'diffatlas[slurm]'")
    study = _write(tmp_path / "s.yaml", {**TINY, "executor": {
        "name": "local", "cpus_per_run": 8, "gpus_per_run": 2, "mem_gb": 32,
        "slurm": {"partition": "gpu", "time_min": 90, "account": "proj", "qos": "high", "sbatch": ["--constraint=a100"],
                  "setup": ["source venv/bin/activate"]}}})
    out = tmp_path / "out"
    assert cli.main(["study", "plan", str(study), "--no-calibrate", "--executor", "slurm", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    first = study_from_dict(TINY).runs()[0].id
    assert f"sbatch script of run {first}" in text and "torchrun with 2 processes" in text
    script = text.split("#!/bin/bash", 1)[1]
    for line in ("#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=2", "#SBATCH --mem=32768M",
                 "#SBATCH --time=90", "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --ntasks-per-node=1", "#SBATCH --open-mode=append",
                 "source venv/bin/activate", f"-m submitit.core._submit {(out / 'jobs' / 'slurm').resolve()}"):
        assert line in script, line
    assert not out.exists()  # planning writes nothing
    # the local executor's plan is what it was; ray prints each run's resource request
    assert cli.main(["study", "plan", str(study), "--no-calibrate"]) == 0
    assert "executor:" not in capsys.readouterr().out
    assert cli.main(["study", "plan", str(study), "--no-calibrate", "--executor", "ray"]) == 0
    assert "{'num_cpus': 8, 'num_gpus': 2, 'memory': 34359738368}" in capsys.readouterr().out


def test_time_limit_checkpoint_requeues_the_same_run():
    """submitit calls checkpoint() at Slurm's time-limit signal: the job it requeues does the same
    run (same payload), which resumes from the run folder."""
    pytest.importorskip("submitit", reason="the slurm executor's tests need the extra: pip install 'diffatlas[slurm]'")
    from diffatlas.study.executors.slurm import SlurmRun
    p = _payload(Path("/nonexistent"))
    delayed = SlurmRun().checkpoint(p)
    assert isinstance(delayed.function, SlurmRun) and delayed.args == (p,) and not delayed.kwargs


# ---- the ledger: cluster jobs belong to their driver ----------------------------------------------

def test_ledger_job_rows_are_adopted_by_drivers_not_reclaimed_by_local_workers(tmp_path):
    runs = study_from_dict({**FAKE_STUDY, "seeds": [0]}).runs(no_resolve)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    old_driver, me = f"{host}:{dead.pid}:driver-slurm", f"{host}:{os.getpid()}:driver-slurm"
    with Ledger(tmp_path / "l.sqlite", stale_after=1000) as L:
        L.sync(runs, tmp_path / "runs")
        a = L.claim(old_driver)
        assert L.set_job(a.id, old_driver, "slurm:17", "/logs/17_0_log.out")
        b = L.claim(old_driver)  # the dead driver's row with a job was not handed back: b is the next run
        assert b.id != a.id
        # a local worker reclaims rows of dead workers, but not a row a cluster job is doing
        claimed = L.claim(f"{host}:{os.getpid()}:w0")
        assert claimed.id == b.id and claimed.attempts == 1 and L.get(a.id).status == "running"
        L.release(claimed.id, f"{host}:{os.getpid()}:w0")
        # the next driver of the same executor adopts it (job and log kept); another executor's does not
        assert L.adopt("ray", f"{host}:{os.getpid()}:driver-ray") == []
        held = L.adopt("slurm", me)
        assert [r.id for r in held] == [a.id] and held[0].job == "slurm:17" and held[0].worker == me
        assert held[0].attempts == 1  # re-attaching is not a new attempt
        # a live driver keeps its rows
        assert L.adopt("slurm", f"{host}:{os.getpid()}:driver-slurm-2") == []
        assert L.heartbeat_all(me) == 1
        assert L.hand_back([a.id]) == 1 and L.get(a.id).status == "pending" and L.get(a.id).job is None
    # a ledger written before the job columns existed gains them when opened
    import sqlite3
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript("CREATE TABLE runs (id TEXT PRIMARY KEY, position INTEGER NOT NULL, status TEXT NOT NULL DEFAULT "
                     "'pending', attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, heartbeat REAL, started REAL, "
                     "finished REAL, error TEXT, run_dir TEXT NOT NULL, config TEXT NOT NULL, labels TEXT NOT NULL);"
                     "INSERT INTO runs (id, position, run_dir, config, labels) VALUES ('r1', 0, 'runs/r1', '{}', '{}');")
    db.commit()
    db.close()
    with Ledger(tmp_path / "old.sqlite") as L:
        assert L.get("r1").job is None and L.claim("h:1").id == "r1"


# ---- the job side --------------------------------------------------------------------------------

def _payload(tmp_path: Path, work=fake_work, attempt: int = 1, log_path: str | None = None) -> JobPayload:
    st = study_from_dict({**FAKE_STUDY, "seeds": [0]})
    r = st.runs(no_resolve)[0]
    return JobPayload(r.id, str(tmp_path / "runs" / r.id), r.config_dict, r.labels, st.evaluation, attempt,
                      log_path=log_path, work=work)


def _boom(task: Task) -> None:
    print("about to fail")
    raise RuntimeError("no GPU here")


def test_run_job_writes_its_result_atomically_and_its_output_to_the_log(tmp_path):
    p = _payload(tmp_path, log_path=str(tmp_path / "logs" / "a.log"))
    res = run_job(p)
    assert res["status"] == "done" and res["error"] is None and res["attempt"] == 1
    assert read_result(p.run_dir, 1) == res and read_result(p.run_dir, 2) is None  # another attempt's result is not this one's
    assert (Path(p.run_dir) / "DONE").is_file() and not list(Path(p.run_dir).glob(f".{RESULT_NAME}*"))
    log = (tmp_path / "logs" / "a.log").read_text()
    assert f"run {p.run_id} attempt 1" in log and f"run {p.run_id} done" in log
    bad = replace(_payload(tmp_path / "b", work=_boom, attempt=2), log_path=str(tmp_path / "logs" / "b.log"))
    res = run_job(bad)
    assert res["status"] == "failed" and res["error"] == "RuntimeError: no GPU here"
    log = (tmp_path / "logs" / "b.log").read_text()
    assert "about to fail" in log and "Traceback" in log  # the job's log holds the traceback, the ledger one line


def _slow_work(task: Task) -> None:
    time.sleep(0.5)
    counting_work(task)


def test_second_job_on_a_run_waits_for_the_first(tmp_path):
    """Two jobs for one run (a driver that could not know the first was alive) never work side by side."""
    p = _payload(tmp_path, work=_slow_work)
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_job(p))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    # with both working at once, the exclusive DONE of fake_work would fail one of them
    assert [r["status"] for r in results] == ["done", "done"]
    assert len((Path(p.run_dir) / "starts.txt").read_text().splitlines()) == 2


def test_multi_gpu_runs_train_under_torchrun(local_reference, tmp_path):
    """processes > 1 trains with torchrun (here 2 CPU processes, gloo): the path a multi-GPU job takes.
    The global batch is split across the processes: the losses are those of one process."""
    from diffatlas import config as C
    from diffatlas.study.runner import train_under_torchrun

    st = study_from_dict(TINY)
    r = st.runs()[0]
    one, two = local_reference / "runs" / r.id, tmp_path / "two"
    train_under_torchrun(Task(r.id, two, r.config, r.config_dict, r.labels, st.evaluation, 1, processes=2))
    assert json.loads((two / "environment.json").read_text())["world_size"] == 2
    assert json.loads((two / "DONE").read_text())["kimg"] == pytest.approx(0.064)
    assert C.from_dict(yaml.safe_load((two / "config.yaml").read_text())) == r.config
    losses = [[json.loads(l)["loss"] for l in (rd / "stats.jsonl").read_text().splitlines()] for rd in (one, two)]
    assert losses[1][0] == losses[0][0]  # the first step sees the same weights and the same batch
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # then float32 gradient sums in another order


def test_cancel_interrupts_local_workers(job_env, tmp_path, capsys):
    """`study cancel` on a study run by the local executor: its workers give their runs back and stop,
    also when the study was started in the background with SIGINT ignored (as `cmd &` in a script)."""
    study = _write(tmp_path / "s.yaml", FAKE)
    out = tmp_path / "out"
    p = _driver(study, out, delay=3.0, sigint_ignored=True)  # a loaded machine still cancels it mid-run
    _wait_for(lambda: _started(out) == 1, 60, "the first run to start")
    assert cli.main(["study", "cancel", str(out)]) == 0
    assert "and 1 local worker(s)" in capsys.readouterr().out
    log, _ = p.communicate(timeout=60)
    assert "interrupted; it resumes on the next `study run`" in log
    with Ledger(out / "ledger.sqlite") as L:
        assert all(r.status == "pending" and r.attempts == 0 for r in L.rows())  # the second run was never started


# ---- the driver, against an in-process cluster ---------------------------------------------------

class ThreadCluster:
    """A Backend whose jobs are threads of this process: the driver's bookkeeping without a scheduler.
    `script` maps a run id to what its job does: 'run' (run_job), 'die' (ends without a result)."""

    name = "thread"

    def __init__(self, script: dict | None = None) -> None:
        self.script = script or {}
        self.jobs: dict[str, threading.Thread] = {}
        self.submitted: list[str] = []
        self.n = 0

    def names(self, payloads):
        return [f"thread:?{p.run_id}" for p in payloads]

    def submit(self, payloads, names):
        out = []
        for p in payloads:
            self.n += 1
            job = f"thread:{self.n}"
            action = self.script.get(p.run_id, "run")
            t = threading.Thread(target=run_job if action == "run" else (lambda p: None), args=(p,))
            t.start()
            self.jobs[job] = t
            self.submitted.append(p.run_id)
            out.append((job, f"/logs/{self.n}.log"))
        return out

    def poll(self, jobs):
        return {j: JobState("lost", "unknown") if j not in self.jobs else
                JobState("active" if self.jobs[j].is_alive() else "ended", "RUNNING" if self.jobs[j].is_alive() else "EXITED")
                for j in jobs}

    def job_output(self, run_id):
        return None

    def log_path(self, job, run_id):
        return f"/logs/{job.split(':')[1]}.log"

    def meta(self):
        return {}

    def cancel(self, jobs):
        pass

    def close(self):
        pass


def _drive(tmp_path, backend, study=None, **kw) -> Ledger:
    st = study or study_from_dict({**FAKE_STUDY, "seeds": [0]})
    out = tmp_path / "out"
    from diffatlas.study.runner import prepare
    ledger, runs = prepare(st, out, no_resolve)
    ledger.close()
    spec = ExecutorSpec(name="thread", poll_s=0.02, **kw)
    RemoteDriver(st, out, spec, work=counting_work, backend=backend, result_grace_s=0.05, log=lambda m: None).drive(
        [r.id for r in runs])
    return Ledger(out / "ledger.sqlite")


def test_driver_records_results_failures_and_lost_jobs(tmp_path):
    st = study_from_dict({**FAKE_STUDY, "seeds": [0]})
    ids = [r.id for r in st.runs(no_resolve)]
    die, ok = ids[0], ids[1:]
    cluster = ThreadCluster({die: "die"})
    with _drive(tmp_path, cluster, max_jobs=2) as L:
        rows = {r.id: r for r in L.rows()}
        for rid in ok:
            assert rows[rid].status == "done" and rows[rid].attempts == 1 and rows[rid].job.startswith("thread:")
            assert len((Path(rows[rid].run_dir) / "starts.txt").read_text().splitlines()) == 1
        # a job that ends without a result is a failed attempt, retried up to max_attempts, its log named
        assert rows[die].status == "failed" and rows[die].attempts == 2
        assert "ended (EXITED) without a result" in rows[die].error and "/logs/" in rows[die].error
    assert cluster.submitted.count(die) == 2 and len(cluster.submitted) == len(ids) + 1


def test_driver_re_attaches_instead_of_resubmitting(tmp_path):
    """A driver that died after recording its jobs: the next one follows them (never submits them
    again); a job whose submission was never recorded and is unknown to the cluster is resubmitted."""
    st = study_from_dict({**FAKE_STUDY, "seeds": [0]})
    out = tmp_path / "out"
    from diffatlas.study.runner import prepare
    ledger, runs = prepare(st, out, no_resolve)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = f"{socket.gethostname()}:{dead.pid}:driver-thread"
    cluster = ThreadCluster()
    a = ledger.claim(gone)
    (job, _), = cluster.submit([JobPayload(a.id, str(Path(a.run_dir).resolve()), a.config, a.labels, st.evaluation,
                                           a.attempts, work=_slow_work)], ["thread:?"])
    ledger.set_job(a.id, gone, job)
    b = ledger.claim(gone)
    ledger.set_job(b.id, gone, f"thread:?{b.id}")  # died between recording the name and submitting
    ledger.close()
    seen = []
    spec = ExecutorSpec(name="thread", poll_s=0.02)
    RemoteDriver(st, out, spec, work=counting_work, backend=cluster, result_grace_s=0.05, log=seen.append).drive(
        [r.id for r in runs])
    with Ledger(out / "ledger.sqlite") as L:
        assert all(r.status == "done" and r.attempts == 1 for r in L.rows())
        assert L.get(a.id).job == job
    assert cluster.submitted.count(a.id) == 1 and cluster.submitted.count(b.id) == 1
    assert any("re-attached to 2 thread job(s)" in m for m in seen)
    assert any(f"run {b.id}: its job thread:?{b.id} is unknown to the cluster" in m for m in seen)
    for r in runs:
        assert len((out / "runs" / r.id / "starts.txt").read_text().splitlines()) == 1


# ---- Ray ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster(job_env):
    """One local Ray instance with 2 CPUs for the module (start-up takes seconds)."""
    ray = pytest.importorskip("ray", reason="the ray executor's tests need the extra: pip install 'diffatlas[ray]'")
    import logging
    ray.init(num_cpus=2, namespace="diffatlas", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_gives_the_local_executors_results(ray_cluster, local_reference, tmp_path):
    out = tmp_path / "out"
    spec = parse_executor({"name": "ray", "poll_s": 0.5})
    counts = Runner(study_from_dict(TINY), out, executor=spec).run()
    assert counts["done"] == 2
    assert _metrics(out) == _metrics(local_reference)  # same run ids, same values
    with Ledger(out / "ledger.sqlite") as L:
        for r in L.rows():
            assert r.job.startswith("ray:") and r.job.endswith(r.id) and Path(r.log).is_file()
            assert f"run {r.id} done" in Path(r.log).read_text()


DRIVER = """
import sys
from pathlib import Path
from test_study import no_resolve
import os, time
from test_study_cluster import PacedWork
from diffatlas.study.executors import with_cli
from diffatlas.study.runner import Runner
from diffatlas.study.spec import load_study
st = load_study(sys.argv[1])
spec = with_cli(st.executor, address=sys.argv[3] if len(sys.argv) > 3 else None)
print(f"driver up at {time.time():.1f}", flush=True)
Runner(st, Path(sys.argv[2]), work=PacedWork(float(os.environ["FAKE_DELAY"])), resolve=no_resolve, executor=spec).run()
"""


def _driver(study: Path, out: Path, address: str | None = None, delay: float = 0.3,
            sigint_ignored: bool = False) -> subprocess.Popen:
    """`study run` of a fake-work study in a process of its own (its own process group, to be killed).
    sigint_ignored: started as a non-interactive shell starts a background job (SIGINT ignored)."""
    import signal

    env = {**os.environ, "FAKE_DELAY": str(delay)}  # the pace of the runs (PacedWork)
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(study), str(out)] + ([address] if address else []), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=pre)


def _started(out: Path) -> int:
    """How many runs some job has begun."""
    return sum(1 for rd in (out / "runs").iterdir() if (rd / "starts.txt").exists()) if (out / "runs").is_dir() else 0


def _wait_for(pred, timeout: float, what: str) -> None:
    t = time.time() + timeout
    while not pred():
        if time.time() > t:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _done_once(out: Path, n: int) -> None:
    with Ledger(out / "ledger.sqlite") as L:
        rows = L.rows()
    assert len(rows) == n and all(r.status == "done" and r.attempts == 1 for r in rows), [(r.status, r.attempts) for r in rows]
    for r in rows:
        rd = Path(r.run_dir)
        assert len((rd / "starts.txt").read_text().splitlines()) == 1, r.id  # one job began the work, once
        entries = [l for l in (rd / "metrics.jsonl").read_text().splitlines()]
        assert len(entries) == len(set(entries)) == 5 * 2 * 2


def test_ray_driver_killed_mid_study_re_attaches(ray_cluster, tmp_path):
    study = _write(tmp_path / "s.yaml", {**FAKE, "executor": {"name": "ray", "poll_s": 0.3}})
    out = tmp_path / "out"
    p = _driver(study, out, ray_cluster, delay=0.5)
    _wait_for(lambda: _started(out) == 2, 90, "both runs to start")  # mid-study: every run under way, none done
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    with Ledger(out / "ledger.sqlite") as L:
        assert any(r.status == "running" for r in L.rows())
    p = _driver(study, out, ray_cluster, delay=0.5)
    log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, log[-3000:]
    assert "re-attached to 2 ray job(s)" in log
    _done_once(out, 2)


def test_ray_cancel_stops_jobs_and_driver(ray_cluster, tmp_path, capsys):
    study = _write(tmp_path / "s.yaml", {**FAKE, "executor": {"name": "ray", "poll_s": 0.3}})
    out = tmp_path / "out"
    p = _driver(study, out, ray_cluster, delay=2.0)
    _wait_for(lambda: _started(out) == 2, 90, "both runs to start")
    with Ledger(out / "ledger.sqlite") as L:
        jobs = [r.job for r in L.rows() if r.job]
    assert len(jobs) == 2
    assert cli.main(["study", "cancel", str(out)]) == 0
    assert "cancelled 2 cluster job(s)" in capsys.readouterr().out
    log, _ = p.communicate(timeout=60)
    assert "the study was cancelled" in log
    import ray
    with Ledger(out / "ledger.sqlite") as L:
        rows = L.rows()
    assert all(r.status == "pending" and r.job is None for r in rows)
    for job in jobs:  # the actors are gone
        with pytest.raises(ValueError):
            ray.get_actor(job.split(":", 1)[1], namespace="diffatlas")


# ---- Slurm ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm(job_env):
    """A private single-node Slurm (Debian's slurm-wlm + munge) started as root; skips where it cannot run."""
    pytest.importorskip("submitit", reason="the slurm executor's tests need the extra: pip install 'diffatlas[slurm]'")
    from slurm_node import SlurmUnavailable, start_slurm_node

    saved = os.environ.get("SLURM_CONF")
    try:
        node = start_slurm_node(Path(tempfile.mkdtemp(prefix="diffatlas-slurm-")))
    except SlurmUnavailable as e:
        pytest.skip(str(e))
    os.environ["SLURM_CONF"] = str(node.conf)
    yield node
    node.stop()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


def test_slurm_gives_the_local_executors_results(slurm, local_reference, tmp_path, capsys):
    study = _write(tmp_path / "s.yaml", {**TINY, "executor": {"name": "slurm", "poll_s": 0.5, "slurm": {"time_min": 10}}})
    out = tmp_path / "out"
    assert cli.main(["study", "plan", str(study), "--no-calibrate", "--out", str(out)]) == 0
    plan = capsys.readouterr().out
    assert cli.main(["study", "run", str(study), "--out", str(out)]) == 0
    assert _metrics(out) == _metrics(local_reference)  # same run ids, same values
    with Ledger(out / "ledger.sqlite") as L:
        rows = L.rows()
    for r in rows:
        assert r.job.startswith("slurm:") and Path(r.log).is_file() and f"run {r.id} done" in Path(r.log).read_text()
    # what ran is what `study plan` printed: the first run's sbatch script, byte for byte
    first = rows[0]
    submitted = (out / "jobs" / "slurm" / f"{first.job.split(':')[1]}_submission.sh").read_text()
    assert submitted.strip() in plan
    # logs are reachable from study status
    capsys.readouterr()
    assert cli.main(["study", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert all(f"job {r.job}  log {r.log}" in status for r in rows)


def _squeue(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def test_slurm_driver_killed_and_a_time_limit_requeue(slurm, tmp_path):
    """Kill the driver mid-study; meanwhile one job gets Slurm's time-limit warning (USR2, what
    --signal sends before the limit) and is requeued under the same id; the restarted driver re-attaches
    to every job and the study ends with every run done once, the requeued one resumed from its snapshot."""
    study = _write(tmp_path / "s.yaml", {**FAKE, "executor": {
        "name": "slurm", "poll_s": 0.5, "slurm": {"time_min": 10, "max_requeues": 2}}})
    out = tmp_path / "out"
    p = _driver(study, out, delay=1.0)
    def progressed() -> str | None:  # a running job whose run has written a snapshot
        if not (out / "ledger.sqlite").exists():
            return None
        with Ledger(out / "ledger.sqlite") as L:
            for r in L.rows():
                if r.job and "?" not in r.job and list((Path(r.run_dir) / "snapshots").glob("snapshot-*")) \
                        and not (Path(r.run_dir) / "DONE").exists() and _squeue(r.job.split(":")[1]) == "RUNNING":
                    return r.job
        return None
    _wait_for(progressed, 90, "a job to make progress")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    job = progressed()
    assert job is not None
    jid = job.split(":")[1]
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    _wait_for(lambda: _squeue(jid) in ("PENDING", "REQUEUED"), 30, "the job to be requeued")
    p = _driver(study, out, delay=1.0)
    log, _ = p.communicate(timeout=180)
    assert p.returncode == 0, log[-3000:]
    assert "re-attached to" in log
    with Ledger(out / "ledger.sqlite") as L:
        rows = {r.job: r for r in L.rows()}
    joblog = (out / "jobs" / "slurm" / f"{jid}_0_log.out").read_text()
    assert job in rows, f"{[(r.job, r.attempts, r.error) for r in rows.values()]}\n{log}\n{joblog}"  # the same job did it all
    requeued = rows[job]
    rd = Path(requeued.run_dir)
    starts = (rd / "starts.txt").read_text().splitlines()
    assert len(starts) == 2  # begun by the job, begun again by the requeued job
    kimg = [json.loads(l)["kimg"] for l in (rd / "stats.jsonl").read_text().splitlines()]
    assert kimg == sorted(set(kimg)) and kimg[-1] == 10  # resumed from its snapshot: no step done twice
    assert "time limit near; the job is requeued" in joblog and joblog.count(f"run {requeued.id} attempt 1") == 2
    for r in rows.values():
        if r.job != job:
            assert len((Path(r.run_dir) / "starts.txt").read_text().splitlines()) == 1
    assert all(r.status == "done" and r.attempts == 1 for r in rows.values())


def test_slurm_cancel(slurm, tmp_path, capsys):
    study = _write(tmp_path / "s.yaml", {**FAKE, "executor": {
        "name": "slurm", "poll_s": 0.5, "slurm": {"array": True}}})
    out = tmp_path / "out"
    p = _driver(study, out, delay=2.0)
    def all_submitted() -> list[str]:
        if not (out / "ledger.sqlite").exists():
            return []
        with Ledger(out / "ledger.sqlite") as L:
            return [r.job for r in L.rows() if r.job and "?" not in r.job]
    _wait_for(lambda: len(all_submitted()) == 2, 60, "the job array")
    jobs = all_submitted()
    assert len({j.split("_")[0] for j in jobs}) == 1  # one array, one element per run
    assert cli.main(["study", "cancel", str(out)]) == 0
    assert "cancelled 2 cluster job(s)" in capsys.readouterr().out
    log, _ = p.communicate(timeout=60)
    assert "the study was cancelled" in log
    _wait_for(lambda: all(_squeue(j.split(":")[1]) in ("CANCELLED", "") for j in jobs), 30, "scancel")
    with Ledger(out / "ledger.sqlite") as L:
        assert all(r.status == "pending" and r.job is None for r in L.rows())
