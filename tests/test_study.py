"""Studies: spec expansion and validation, the ledger under SIGKILL and concurrency, plateau
detection and statistics on synthetic data with known answers."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffatlas import cli
from diffatlas.errors import UserError
from diffatlas.study import statistics as S
from diffatlas.study.convergence import convergence_across_seeds, convergence_point, plateau_value
from diffatlas.study.ledger import Ledger
from diffatlas.study.runner import Runner, Task
from diffatlas.study.spec import load_study, run_id, study_from_dict

HERE = Path(__file__).resolve().parent


def no_resolve(cfg):
    """Expansion without the registries: the fake work never builds a model."""
    return cfg


# ---- a fake run: writes files like a real one, resumes like a real one -------------------------

def _fake_value(metric: str, kimg: float, budget: float, seed: int, labels: dict, lr: float = 2e-4) -> float:
    """A known answer for every question a study asks: NCSN is 0.5 worse than DDPM, quality improves
    with kimg and drifts with the seed, and the learning rate costs 2 x^2 (DDPM) or 2 (x - 1)^2 - 2
    (NCSN) with x = log10(lr / 2e-4): zero at the default 2e-4, so DDPM's best lr is 2e-4 and NCSN's 2e-3."""
    ncsn = str(labels.get("dynamics.name")) == "ncsn"
    offset = 0.5 * ncsn
    x = math.log10(lr / 2e-4)
    offset += 2.0 * (x - 1.0) ** 2 - 2.0 if ncsn else 2.0 * x ** 2
    if metric == "fid":
        return 5.0 + offset + 40.0 * math.exp(-6.0 * kimg / budget) + 0.01 * seed
    return 8.0 - offset - 6.0 * math.exp(-6.0 * kimg / budget) - 0.01 * seed


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: a kill leaves the line whole or absent
    finally:
        os.close(fd)


def fake_work(task: Task) -> None:
    """Train in ticks of snapshot_kimg with atomic snapshots and a DONE marker, then evaluate every
    snapshot with every sampler setting, skipping entries already in metrics.jsonl."""
    delay = float(os.environ.get("FAKE_DELAY", "0.01"))
    rd = task.run_dir
    (rd / "snapshots").mkdir(parents=True, exist_ok=True)
    budget, every = task.config.train.kimg, task.config.train.snapshot_kimg

    def snaps() -> list[float]:
        return sorted(json.loads((p / "meta.json").read_text())["kimg"] for p in (rd / "snapshots").glob("snapshot-*")
                      if (p / "meta.json").exists())

    if not (rd / "DONE").exists():
        done = snaps()
        k = done[-1] if done else 0.0
        while k < budget - 1e-9:
            time.sleep(delay)
            k = min(k + every, budget)
            tmp = rd / "snapshots" / f".tmp-{k:09.3f}"
            tmp.mkdir(exist_ok=True)
            (tmp / "meta.json").write_text(json.dumps({"kimg": k}))
            os.replace(tmp, rd / "snapshots" / f"snapshot-{k:09.3f}")
            _append(rd / "stats.jsonl", json.dumps({"kimg": k, "loss": 1.0 / (1 + k)}))
        # exclusive create: a second completion of the same run would raise FileExistsError
        fd = os.open(rd / "DONE", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, json.dumps({"kimg": budget, "pid": os.getpid()}).encode())
        os.close(fd)
    ev = task.evaluation
    path = rd / "metrics.jsonl"
    for setting in ev.samplers:
        for k in snaps():
            for m in ev.metrics:
                have = set()
                if path.exists():
                    for line in path.read_text().splitlines():
                        d = json.loads(line)
                        have.add((d["kimg"], d["metric"], d["sampler"], d["steps"], d["n"]))
                key = (k, m, setting.get("sampler"), setting.get("steps"), ev.n)
                if key in have:
                    continue
                time.sleep(delay / 4)
                _append(path, json.dumps({"kimg": k, "metric": m, "value": _fake_value(m, k, budget, task.labels["seed"], task.labels,
                                                                                    task.config.train.lr),
                                          "interval": None, "n": ev.n, "extractor": ev.extractor, "sampler": setting.get("sampler"),
                                          "steps": setting.get("steps"), "nfe": setting.get("steps"), "wall_s": 0.0}))


def failing_work(task: Task) -> None:
    if task.labels.get("dynamics.name") == "ncsn":
        raise RuntimeError("boom in ncsn")
    fake_work(task)


FAKE_STUDY = {
    "name": "fake",
    "base": {"data": {"name": "digits"}, "train": {"batch": 8}},
    "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}, {"zip": {"model.parameterization": ["eps", "x0"],
                                                                         "model.weighting": ["simple", "snr"]}}],
    "seeds": [0, 1],
    "budget_kimg": 10,
    "evaluation": {"metrics": ["fid", "is"], "n": 100, "every_kimg": 2,
                   "samplers": [{"sampler": "heun", "steps": 8}, {"sampler": "ddim", "steps": 10}]},
}


def _write_study(tmp: Path, d: dict = FAKE_STUDY) -> Path:
    p = tmp / "study.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


# ---- spec --------------------------------------------------------------------------------------

def test_spec_expansion_ids_and_labels():
    st = study_from_dict(FAKE_STUDY)
    runs = st.runs(no_resolve)
    assert len(runs) == 2 * 2 * 2
    assert len({r.id for r in runs}) == len(runs)
    r = runs[0]
    assert r.labels == {"dynamics.name": "ddpm", "model.parameterization": "eps", "model.weighting": "simple", "seed": 0}
    assert r.config.train.kimg == 10 and r.config.train.snapshot_kimg == 2 and r.config.train.seed == 0
    # zip pairs values side by side, product crosses groups
    assert {(x.labels["model.parameterization"], x.labels["model.weighting"]) for x in runs} == {("eps", "simple"), ("x0", "snr")}
    # the id is a hash of the config: stable across expansions and across studies holding the same run
    assert [x.id for x in study_from_dict(FAKE_STUDY).runs(no_resolve)] == [x.id for x in runs]
    assert run_id(r.config) == r.id and len(r.id) == 12
    var = study_from_dict({"name": "v", "axes": [{"variants": [{"dynamics.name": "ddpm", "dynamics.schedule": "cosine"},
                                                               {"dynamics.name": "ncsn"}]}]})
    runs = var.runs(no_resolve)
    assert [x.labels for x in runs] == [{"dynamics.name": "ddpm", "dynamics.schedule": "cosine", "seed": 0},
                                       {"dynamics.name": "ncsn", "seed": 0}]
    assert runs[0].config.dynamics.options == {"schedule": "cosine"}


@pytest.mark.parametrize("bad, msg", [
    ({"name": "x", "axes": [{"product": {"train.lr": []}}]}, "empty"),
    ({"name": "x", "axes": [{"product": {"train.learning_rate": [1]}}]}, "train has no key"),
    ({"name": "x", "axes": [{"product": {"nosuch.key": [1]}}]}, "names no config section"),
    ({"name": "x", "axes": [{"zip": {"train.lr": [1, 2], "train.batch": [1]}}]}, "equal lengths"),
    ({"name": "x", "axes": [{"cross": {"train.lr": [1]}}]}, "unknown axis group"),
    ({"name": "x", "colour": 1}, "unknown study key"),
    ({"name": "x", "axes": [{"product": {"train.seed": [1, 2]}}]}, "seeds"),
    ({"name": "x", "seeds": []}, "seeds"),
    ({"name": "x", "evaluation": {"metrics": []}}, "evaluation.metrics"),
    ({"axes": []}, "name"),
    ({"name": "x", "evaluation": {"samplers": [{"sampler": "clasic"}]}}, "rk45, auto, classic"),
    ({"name": "x", "evaluation": {"samplers": [{"sampler": "classic", "options": {"eta": 1}}]}}, "options need a named"),
])
def test_spec_validation(bad, msg):
    with pytest.raises(UserError) as e:
        study_from_dict(bad)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_evaluation_only_study_evaluates_finished_runs_in_place(tmp_path):
    from diffatlas.config import dump_yaml, load_config

    models = {}
    for name, lr in (("a", 1e-4), ("b", 2e-4)):
        rd = tmp_path / name
        rd.mkdir()
        (rd / "config.yaml").write_text(dump_yaml(load_config(None, [f"train.lr={lr}", "train.kimg=4"])))
        (rd / "DONE").write_text("{}")
        models[f"model-{name}"] = name
    spec = {"name": "fixed", "models": models, "evaluation": {"metrics": ["fid"], "n": 10,
                                                             "samplers": [{"sampler": "ddim", "steps": 3}]}}
    study = load_study(_write_study(tmp_path, spec))          # relative paths: against the study file
    runs = study.runs()
    assert [r.labels for r in runs] == [{"model": "model-a", "seed": 0}, {"model": "model-b", "seed": 0}]
    assert [r.run_dir for r in runs] == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    seen = []
    counts = Runner(study, tmp_path / "out", work=lambda task: seen.append(task.run_dir)).run()
    assert counts["done"] == 2 and sorted(seen) == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert not (tmp_path / "out" / "runs" / runs[0].id).exists()  # nothing new is trained


@pytest.mark.parametrize("extra, msg", [
    ({"axes": [{"product": {"train.lr": [1, 2]}}]}, "trains nothing; remove axes"),
    ({"evaluation": {"every_kimg": 2}}, "evaluation.every_kimg"),
    ({"models": ["x/run", "y/run"]}, "share a folder name"),
    ({"models": {}}, "non-empty mapping"),
])
def test_evaluation_only_study_validation(extra, msg):
    with pytest.raises(UserError, match=msg):
        study_from_dict({"name": "m", "models": {"a": "somewhere"}, **extra})


def test_evaluation_only_study_needs_finished_runs(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("{}")
    with pytest.raises(UserError, match="not a finished run directory"):
        study_from_dict({"name": "m", "models": {"h": str(tmp_path / "half")}}).runs()


def test_unknown_registry_name_is_user_error():
    pytest.importorskip("diffatlas.samplers")
    from diffatlas import config as C
    try:
        C.resolve(C.from_dict({}))
    except ImportError:
        pytest.skip("registries not complete")
    st = study_from_dict({"name": "x", "axes": [{"product": {"dynamics.name": ["ddpm", "ddpn"]}}]})
    with pytest.raises(UserError, match="ddpn"):
        st.runs()


def test_malformed_study_via_cli_touches_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    good = _write_study(tmp_path)
    Runner(load_study(good), out, work=fake_work, resolve=no_resolve).run()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    ledger_bytes = (out / "ledger.sqlite").read_bytes()
    bad = [
        "name: fake\naxes: [{product: {dynamics.nme: []}}]\n",
        "name: fake\naxes:\n  - product: {train.lr: [1, 2]\n",           # YAML syntax error
        "name: fake\naxes: [{product: {trian.lr: [1]}}]\n",
        "[1, 2, 3]\n",
    ]
    for i, text in enumerate(bad):
        p = tmp_path / f"bad{i}.yaml"
        p.write_text(text)
        for cmd in (["study", "run", str(p), "--out", str(out)], ["study", "plan", str(p), "--no-calibrate"]):
            rc = cli.main(cmd)
            err = capsys.readouterr().err
            assert rc == 2, (text, err)
            assert err.startswith("diffatlas: error:") and err.count("\n") == 1, err
    assert cli.main(["study", "status", str(tmp_path / "missing.yaml")]) == 2
    capsys.readouterr()
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert (out / "ledger.sqlite").read_bytes() == ledger_bytes


# ---- ledger ------------------------------------------------------------------------------------

def test_ledger_claim_fail_retry_and_stale(tmp_path):
    st = study_from_dict({**FAKE_STUDY, "seeds": [0]})
    runs = st.runs(no_resolve)
    with Ledger(tmp_path / "l.sqlite", max_attempts=2, stale_after=1000) as L:
        assert L._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert L.sync(runs, tmp_path / "runs") == len(runs)
        assert L.sync(runs, tmp_path / "runs") == 0
        a = L.claim("h:1:a")
        assert a.status == "running" and a.attempts == 1
        assert L.fail(a.id, "h:1:a", "boom")
        # a failed run comes back only after the pending ones, then stays failed after max_attempts
        ids = []
        while (r := L.claim("h:1:a")) is not None:
            ids.append(r.id)
            if r.id == a.id:
                L.fail(r.id, "h:1:a", "boom again")
            else:
                L.finish(r.id, "h:1:a")
        assert ids[-1] == a.id and ids.count(a.id) == 1
        assert L.get(a.id).status == "failed" and L.get(a.id).attempts == 2 and L.get(a.id).error == "boom again"
        assert L.counts() == {"pending": 0, "running": 0, "done": len(runs) - 1, "failed": 1}
    # a running row whose worker process is dead on this host is reclaimed at once
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    import socket
    with Ledger(tmp_path / "m.sqlite", stale_after=1000) as L:
        L.sync(runs[:1], tmp_path)
        dead = f"{socket.gethostname()}:{p.pid}"
        r = L.claim(dead)
        me = f"{socket.gethostname()}:{os.getpid()}"
        r2 = L.claim(me)
        assert r2 is not None and r2.id == r.id and r2.attempts == 1  # an interruption is not an attempt
        assert L.claim("elsewhere:1") is None  # a live worker of this host keeps its run
        L.release(r.id, me)
        assert L.claim("otherhost:1").id == r.id
        assert L.claim(me) is None  # another host's worker is only reclaimed by heartbeat timeout
        L.stale_after = 0.0
        time.sleep(0.01)
        assert L.reclaim_stale() == [r.id]


def test_runner_records_failures(tmp_path, capsys):
    out = tmp_path / "out"
    counts = Runner(study_from_dict(FAKE_STUDY), out, work=failing_work, resolve=no_resolve).run()
    assert counts["failed"] == 4 and counts["done"] == 4
    with Ledger(out / "ledger.sqlite") as L:
        for r in L.rows():
            if r.labels["dynamics.name"] == "ncsn":
                assert r.attempts == 2 and "boom in ncsn" in r.error
    assert "boom in ncsn" in capsys.readouterr().out


# ---- SIGKILL and concurrency -------------------------------------------------------------------

RUNNER_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from pathlib import Path
from test_study import fake_work, no_resolve
from diffatlas.study.runner import Runner
from diffatlas.study.spec import load_study
Runner(load_study({study!r}), Path({out!r}), work=fake_work, resolve=no_resolve, heartbeat_s=0.2,
       workers={workers}).run()
"""


def _runner_proc(study: Path, out: Path, workers: int = 1, delay: float = 0.02) -> subprocess.Popen:
    code = RUNNER_SCRIPT.format(here=str(HERE), study=str(study), out=str(out), workers=workers)
    env = {**os.environ, "FAKE_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _snapshot_state(out: Path) -> dict:
    state = {}
    for rd in sorted((out / "runs").iterdir()):
        lines = (rd / "metrics.jsonl").read_text().splitlines()
        entries = sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "wall_s"}, sort_keys=True) for l in lines)
        snaps = sorted(p.name for p in (rd / "snapshots").iterdir())
        state[rd.name] = {"entries": entries, "snapshots": snaps, "done": json.loads((rd / "DONE").read_text())["kimg"]}
    return state


def test_sigkill_at_random_moments_then_resume(tmp_path):
    study = _write_study(tmp_path)
    ref = tmp_path / "ref"
    Runner(load_study(study), ref, work=fake_work, resolve=no_resolve).run()
    expected = _snapshot_state(ref)

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0

    def progress() -> int:  # snapshots + metric lines written so far
        runs = out / "runs"
        if not runs.is_dir():
            return 0
        return sum(len(list((rd / "snapshots").glob("snapshot-*"))) if (rd / "snapshots").is_dir() else 0
                   for rd in runs.iterdir()) + sum(
            len((rd / "metrics.jsonl").read_text().splitlines()) for rd in runs.iterdir() if (rd / "metrics.jsonl").exists())

    for _ in range(6):
        # Kill at a random moment after the runner has made some progress (however fast the machine):
        # during training, during evaluation or between runs.
        before = progress()
        p = _runner_proc(study, out, workers=2 if kills % 2 else 1, delay=0.05)
        deadline = time.time() + 60
        while p.poll() is None and progress() <= before and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the runner and its workers, mid-run
            kills += 1
        p.wait()
    assert kills >= 3
    p = _runner_proc(study, out, workers=1)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr.decode()[-2000:]
    got = _snapshot_state(out)
    assert got == expected
    for rid, st in got.items():
        assert len(st["entries"]) == len(set(st["entries"])) == 5 * 2 * 2  # snapshots x metrics x samplers, once each
    with Ledger(out / "ledger.sqlite") as L:
        assert L.counts()["done"] == len(expected) and all(r.status == "done" for r in L.rows())


def test_two_concurrent_runners_never_share_a_run(tmp_path):
    study = _write_study(tmp_path)
    out = tmp_path / "out"
    # each run lasts ~1 s, far longer than a runner takes to start, so both runners get work
    procs = [_runner_proc(study, out, workers=1, delay=0.15) for _ in range(2)]
    logs = [p.communicate(timeout=120) for p in procs]
    for p, (o, e) in zip(procs, logs):
        assert p.returncode == 0, e.decode()[-2000:]
    claimed = [line.split()[1] for o, _ in logs for line in o.decode().splitlines() if line.startswith("run ") and "attempt" in line]
    assert len(claimed) == 8 and len(set(claimed)) == 8
    per_proc = [sum(1 for l in o.decode().splitlines() if l.startswith("run ") and "attempt" in l) for o, _ in logs]
    assert all(n >= 1 for n in per_proc), per_proc  # both did work
    with Ledger(out / "ledger.sqlite") as L:
        assert all(r.status == "done" and r.attempts == 1 for r in L.rows())


def test_status_reports_progress(tmp_path, capsys):
    study = _write_study(tmp_path)
    out = tmp_path / "out"
    Runner(load_study(study), out, work=fake_work, resolve=no_resolve).run()
    capsys.readouterr()
    assert cli.main(["study", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8 done" in text and "10/10" in text and "nothing left to run" in text


# ---- convergence -------------------------------------------------------------------------------

def test_plateau_detection_on_known_curves():
    k = np.arange(0, 201, 10.0)
    # exponential approach to 10: within 5% (|40 e^{-k/20}| <= 0.5) from k = 20 ln 80 = 87.6 -> first grid point 90
    v = 10 + 40 * np.exp(-k / 20)
    c = convergence_point(k, v, rel_tol=0.05, k=3)
    assert c.kimg == 90.0 and c.settled and abs(c.plateau - v[-2]) < 1e-12
    # a piecewise curve with its plateau reached exactly at 120 and a late excursion pushes the point later
    w = np.where(k < 120, 100 - 0.5 * k, 40.0)
    assert convergence_point(k, w).kimg == 120.0
    w2 = w.copy()
    w2[k == 150] = 60.0
    assert convergence_point(k, w2).kimg == 160.0
    # increasing metric (IS-like) works the same; order of points does not matter
    perm = np.random.default_rng(0).permutation(len(k))
    assert convergence_point(k[perm], (20 - v)[perm], rel_tol=0.05).kimg == convergence_point(k, 20 - v).kimg
    assert plateau_value([1, 2, 3, 4], [9, 1, 2, 3], k=3) == 2.0
    # across seeds: shifted copies give a mean between their points, and an interval containing it
    curves = [(k, 10 + 40 * np.exp(-(k - s) / 20)) for s in (0, 10, 20, 30)]
    res = convergence_across_seeds(curves)
    assert res["kimg"] == [90.0, 100.0, 110.0, 120.0]
    assert res["low"] <= res["mean"] == 105.0 <= res["high"]


# ---- statistics --------------------------------------------------------------------------------

def _synthetic_records(effect: float, n_seeds: int = 8, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(n_seeds):
        base = 20 + rng.normal(0, 2)  # a seed effect shared by both sides: pairing removes it
        for dyn in ("ddpm", "ncsn"):
            for sched in ("linear", "cosine"):
                fid = base + (effect if dyn == "ncsn" else 0.0) + rng.normal(0, 0.3)
                recs.append({"run": f"{dyn}{sched}{s}", "labels": {"dynamics.name": dyn, "dynamics.schedule": sched, "seed": s,
                                                                   S.EVAL_KEY: "heun x18"},
                             "metric": "fid", "final": fid, "converged_kimg": 100 + rng.normal(0, 3), "budget_kimg": 500})
    return recs


def test_clear_effect_supported_no_effect_not_detected():
    axes = ["dynamics.name", "dynamics.schedule"]
    strong = S.verdicts(_synthetic_records(3.0), axes, ["fid"], budget=500)
    v = {x.claim: x for x in strong}
    ddpm = v["DDPM-based beats NCSN-based (discrete: ddpm vs ncsn)"]
    assert ddpm.verdict == "supported" and ddpm.n == 16
    assert v["DDPM-based beats NCSN-based (SDE: vp vs ve)"].verdict == "not tested"
    assert v["configurations reach stable quality at a similar point in training"].verdict == "supported"
    assert v["model size matters more on complex data"].verdict == "not tested"
    assert v["IS is less sensitive to the number of samples than FID"].verdict == "not tested"
    none = {x.claim: x for x in S.verdicts(_synthetic_records(0.0), axes, ["fid"], budget=500)}
    assert none["DDPM-based beats NCSN-based (discrete: ddpm vs ncsn)"].verdict == "no detectable difference"
    reverse = {x.claim: x for x in S.verdicts(_synthetic_records(-3.0), axes, ["fid"], budget=500)}
    assert reverse["DDPM-based beats NCSN-based (discrete: ddpm vs ncsn)"].verdict == "contradicted"


def test_permutation_and_bootstrap_against_exact_values():
    # exact sign-flip p for d = (1, 2, 3): only the all-positive and all-negative flips reach |mean| = 2 -> 2/8
    assert S.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert S.sign_flip_p([1.0, -1.0]) == pytest.approx(1.0)
    lo, hi = S.bootstrap_ci([5.0] * 10)
    assert lo == hi == 5.0
    assert S.direction("fid") == -1 and S.direction("is") == 1
    # convergence spread far beyond the budget fraction -> contradicted
    recs = _synthetic_records(0.0)
    for r in recs:
        r["converged_kimg"] = 50.0 if r["labels"]["dynamics.schedule"] == "linear" else 400.0
    v = S.claim_similar_convergence(recs, ["dynamics.name", "dynamics.schedule"], ["fid"], 500)
    assert v.verdict == "contradicted"


# ---- shipped studies ---------------------------------------------------------------------------

def test_quickstart_embedded_matches_file():
    from diffatlas.study.quickstart import QUICKSTART_YAML, quickstart_study
    assert QUICKSTART_YAML == (HERE.parent / "studies" / "quickstart.yaml").read_text()
    st = quickstart_study()
    assert len(st.runs(no_resolve)) == 8


@pytest.mark.parametrize("name", ["quickstart.yaml", "paper-fashion-mnist.yaml", "paper-ffhq64.yaml"])
def test_shipped_studies_pass_plan_validation(name, capsys):
    from diffatlas import config as C
    try:
        C.resolve(C.from_dict({}))
    except ImportError:
        pytest.skip("registries not complete yet")
    rc = cli.main(["study", "plan", str(HERE.parent / "studies" / name), "--no-calibrate"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "runs =" in out.out


def test_classic_and_auto_are_settings_a_study_accepts():
    st = study_from_dict({"name": "c", "evaluation": {"samplers": [{"sampler": "classic", "nfe": 20}, "auto", "ddim"]}})
    assert [s.get("sampler") for s in st.evaluation.samplers] == ["classic", "auto", "ddim"]


def test_a_changed_evaluation_section_evaluates_finished_runs_again(tmp_path, capsys):
    """Adding an evaluation setting to a finished study computes only the new entries: the runs are
    worked again (training returns at once on DONE), the old entries stay as they were."""
    out = tmp_path / "out"
    study = {**FAKE_STUDY, "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}], "seeds": [0]}
    Runner(study_from_dict(study), out, work=fake_work, resolve=no_resolve).run()
    logs = sorted(out.glob("runs/*/metrics.jsonl"))
    before = [p.read_text() for p in logs]
    assert Runner(study_from_dict(study), out, work=fake_work, resolve=no_resolve).run()["done"] == 2
    assert [p.read_text() for p in logs] == before and "evaluated again" not in capsys.readouterr().out
    more = {**study, "evaluation": {**study["evaluation"],
                                     "samplers": [*study["evaluation"]["samplers"], {"sampler": "euler", "steps": 4}]}}
    counts = Runner(study_from_dict(more), out, work=fake_work, resolve=no_resolve).run()
    assert counts["done"] == 2 and "2 finished run(s) are evaluated again" in capsys.readouterr().out
    for p, old in zip(logs, before):
        text = p.read_text()
        assert text.startswith(old) and '"sampler": "euler"' in text[len(old):] and '"heun"' not in text[len(old):]
