"""A study's `tune` section: the tuning runs on a held-out seed, the choice per configuration, the
seeded runs built from it, resumption across the two phases, and what results, status, plan and the
report make of it. Fake work (test_study.fake_work): its metric depends on train.lr with a known
best value per dynamics (DDPM 2e-4, NCSN 2e-3)."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_study import FAKE_STUDY, _runner_proc, _snapshot_state, fake_work, no_resolve

from diffatlas import cli
from diffatlas.errors import UserError
from diffatlas.study import runner as R
from diffatlas.study import tuning as TU
from diffatlas.study.ledger import Ledger
from diffatlas.study.results import load_results
from diffatlas.study.runner import Runner, Task
from diffatlas.study.spec import is_tuning, load_study, run_id, study_from_dict

LRS = [2e-4, 2e-3, 2e-2]
BEST = {"ddpm": 2e-4, "ncsn": 2e-3}
TUNED = {**FAKE_STUDY, "name": "tuned", "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}], "seeds": [0, 1],
         "tune": {"seed": 100, "grid": {"train.lr": LRS}, "budget_kimg": 4}}


def _study(**tune) -> dict:
    return {**TUNED, "tune": {**TUNED["tune"], **tune}}


def _rows(out: Path) -> list:
    with Ledger(out / "ledger.sqlite") as L:
        return L.rows()


def _record(out: Path) -> dict:
    return json.loads((out / TU.TUNING_FILE).read_text())


@pytest.mark.parametrize("metric", ["fid", "is"])
def test_each_configuration_takes_its_best_candidate(tmp_path, metric, capsys):
    out = tmp_path / "out"
    study = study_from_dict(_study(metric=metric))
    counts = Runner(study, out, work=fake_work, resolve=no_resolve).run()
    assert counts == {"pending": 0, "running": 0, "done": 6 + 4, "failed": 0}
    rec = _record(out)
    assert rec["tune"]["seed"] == 100 and rec["tune"]["grid"] == {"train.lr": LRS} and rec["tune"]["budget_kimg"] == 4.0
    assert rec["tune"]["setting_label"] == "heun x8" and rec["tune"]["higher_is_better"] is (metric == "is")
    assert [c["labels"] for c in rec["configurations"]] == [{"dynamics.name": "ddpm"}, {"dynamics.name": "ncsn"}]
    for conf in rec["configurations"]:
        dyn = conf["labels"]["dynamics.name"]
        values = [c["value"] for c in conf["candidates"]]
        # each candidate's value is the fake metric of the held-out seed at the tuning budget's final snapshot
        from test_study import _fake_value
        assert values == pytest.approx([_fake_value(metric, 4.0, 4.0, 100, {"dynamics.name": dyn}, lr) for lr in LRS])
        best = max(range(3), key=lambda j: values[j]) if metric == "is" else min(range(3), key=lambda j: values[j])
        assert conf["chosen_index"] == best and conf["chosen"] == {"train.lr": BEST[dyn]}
        assert [c["kimg"] for c in conf["candidates"]] == [4.0] * 3
    # the seeded runs carry the chosen value in their config, and their ids hash that config
    rows = _rows(out)
    seeded = [r for r in rows if not is_tuning(r.labels)]
    tuning = [r for r in rows if is_tuning(r.labels)]
    assert len(seeded) == 4 and len(tuning) == 6
    for r in seeded:
        assert r.config["train"]["lr"] == BEST[r.labels["dynamics.name"]] and r.config["train"]["seed"] in (0, 1)
        assert r.config["train"]["kimg"] == 10 and "train.lr" not in r.labels and "phase" not in r.labels
    expected = study.runs(no_resolve, [{"train.lr": BEST["ddpm"]}, {"train.lr": BEST["ncsn"]}])
    assert [r.id for r in seeded] == [r.id for r in expected] == [run_id(r.config) for r in expected]
    # tuning runs: the held-out seed, every candidate, the tuning budget, only the deciding metric and setting
    assert sorted((r.labels["dynamics.name"], r.config["train"]["lr"]) for r in tuning) == sorted(
        (d, lr) for d in ("ddpm", "ncsn") for lr in LRS)
    for r in tuning:
        assert r.labels["seed"] == 100 and r.config["train"]["seed"] == 100 and r.config["train"]["kimg"] == 4
        assert r.config["train"]["keep_snapshots"] is False
        entries = [json.loads(l) for l in (Path(r.run_dir) / "metrics.jsonl").read_text().splitlines()]
        assert {(e["metric"], e["sampler"]) for e in entries} == {(metric, "heun")}
    printed = capsys.readouterr().out
    assert "chosen lr=0.0002" in printed and "chosen lr=0.002" in printed
    assert "progress: 6/6 done" in printed and "progress: 4/4 done" in printed and "/4 done" in printed.split("4 runs in")[1]
    assert "progress: 5/4" not in printed  # the seeded phase counts its own runs, not the tuning runs


def test_tuning_runs_are_no_seed_of_the_comparison(tmp_path):
    from diffatlas.study import statistics as S

    out = tmp_path / "out"
    Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    res = load_results(out)
    assert len(res.runs) == 4 and res.axes == ["dynamics.name"]
    records = res.records()
    assert records and {r["labels"]["seed"] for r in records} == {0, 1}
    assert all("phase" not in r["labels"] and "train.lr" not in r["labels"] for r in records)
    tuning_ids = {r.id for r in _rows(out) if is_tuning(r.labels)}
    assert not tuning_ids & {r["run"] for r in records}
    # a ledger without run_ids (older studies) still keeps tuning runs out
    with Ledger(out / "ledger.sqlite") as L:
        L._db.execute("DELETE FROM meta WHERE key = 'run_ids'")
    assert {r.id for r in load_results(out).runs} == {r.id for r in res.runs}
    comps = S.all_pairwise(records, res.axes, res.metrics)
    assert {c.n_pairs for c in comps} == {2}  # two seeds, never the held-out one


def test_a_tie_goes_to_the_first_candidate_and_non_finite_values_lose():
    assert TU.choose([3.0, 1.0, 1.0], higher_is_better=False) == 1
    assert TU.choose([1.0, 3.0, 3.0], higher_is_better=True) == 1
    assert TU.choose([2.0, 2.0], higher_is_better=False) == 0
    assert TU.choose([math.nan, 5.0, math.inf], higher_is_better=False) == 1
    assert TU.choose([math.inf, None, 7.0], higher_is_better=True) == 2
    assert TU.choose([math.nan, None], higher_is_better=False) == -1


def test_a_grid_without_effect_keeps_the_first_candidate(tmp_path):
    """The fake metric ignores the EMA half-life: every candidate ties, the first in grid order wins."""
    out = tmp_path / "out"
    study = {**TUNED, "tune": {"seed": 7, "grid": {"train.ema_halflife_kimg": [2.0, 0.5]}, "budget_kimg": 2}}
    Runner(study_from_dict(study), out, work=fake_work, resolve=no_resolve).run()
    for conf in _record(out)["configurations"]:
        assert conf["candidates"][0]["value"] == conf["candidates"][1]["value"]
        assert conf["chosen_index"] == 0 and conf["chosen"] == {"train.ema_halflife_kimg": 2.0}
    assert {r.config["train"]["ema_halflife_kimg"] for r in _rows(out) if not is_tuning(r.labels)} == {2.0}


def test_a_diverged_candidate_loses(tmp_path):
    def diverging(task: Task) -> None:
        fake_work(task)
        if task.config.train.lr == LRS[0]:  # DDPM's best candidate diverged (evaluation writes null): it loses
            path = task.run_dir / "metrics.jsonl"
            lines = [json.loads(l) for l in path.read_text().splitlines()]
            path.write_text("".join(json.dumps({**e, "value": None}) + "\n" for e in lines))

    out = tmp_path / "out"
    Runner(study_from_dict(TUNED), out, work=diverging, resolve=no_resolve).run()
    ddpm = _record(out)["configurations"][0]
    assert ddpm["candidates"][0]["value"] is None and "not finite" in ddpm["candidates"][0]["note"]
    assert ddpm["chosen"] == {"train.lr": LRS[1]}  # the better of the finite ones (x=1 costs 2, x=2 costs 8)


# ---- resuming --------------------------------------------------------------------------------

def test_resume_after_a_kill_between_the_phases(tmp_path, monkeypatch):
    """Killed after every tuning run is done but before tuning.json exists, then after tuning.json but
    before the seeded runs are in the ledger: each time `study run` continues without redoing a run."""
    ref = tmp_path / "ref"
    Runner(study_from_dict(TUNED), ref, work=fake_work, resolve=no_resolve).run()
    expected = _snapshot_state(ref)

    out = tmp_path / "out"
    real_decide, real_add = R.decide, R._add_seeded

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "decide", killed)
    with pytest.raises(KeyboardInterrupt):
        Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    assert not (out / TU.TUNING_FILE).exists()
    assert [r.status for r in _rows(out)] == ["done"] * 6
    assert cli.main(["study", "status", str(out)]) == 0

    monkeypatch.setattr(R, "decide", real_decide)
    monkeypatch.setattr(R, "_add_seeded", lambda ledger, where, runs: killed() if runs else real_add(ledger, where, runs))
    with pytest.raises(KeyboardInterrupt):
        Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    assert (out / TU.TUNING_FILE).exists() and len(_rows(out)) == 6

    monkeypatch.setattr(R, "_add_seeded", real_add)
    counts = Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    assert counts["done"] == 10 and counts["pending"] == counts["failed"] == 0
    assert _snapshot_state(out) == expected  # fake_work's exclusive DONE: no run was trained twice
    assert all(r.attempts == 1 for r in _rows(out))
    assert _record(out) == _record(ref)


def test_tuning_json_is_the_choice_once_written(tmp_path):
    """Metrics that change after the decision do not change the choice; a changed grid tunes again."""
    out = tmp_path / "out"
    Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    before = _record(out)
    seeded = {r.id for r in _rows(out) if not is_tuning(r.labels)}
    for r in _rows(out):  # the tuning runs' metrics rewritten to favour the last candidate everywhere
        if is_tuning(r.labels) and r.config["train"]["lr"] == LRS[-1]:
            path = Path(r.run_dir) / "metrics.jsonl"
            path.write_text("".join(json.dumps({**json.loads(l), "value": -100.0}) + "\n"
                                    for l in path.read_text().splitlines()))
    Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    assert _record(out) == before
    with Ledger(out / "ledger.sqlite") as L:
        assert set(L.get_meta("run_ids")) == seeded
    # a changed grid is another tuning: its new candidate runs, the old ones are read as they are
    more = _study(grid={"train.lr": [*LRS, 6e-3]})
    Runner(study_from_dict(more), out, work=fake_work, resolve=no_resolve).run()
    rec = _record(out)
    assert rec["tune"]["grid"] == {"train.lr": [*LRS, 6e-3]}
    assert [c["chosen"]["train.lr"] for c in rec["configurations"]] == [LRS[-1], LRS[-1]]  # the rewritten -100
    with Ledger(out / "ledger.sqlite") as L:
        assert not set(L.get_meta("run_ids")) & seeded and len(L.get_meta(TU.TUNING_IDS_KEY)) == 8


def test_a_changed_evaluation_section_finishes_reopened_tuning_runs(tmp_path, capsys):
    """A new evaluation setting reopens every finished run (test_study); the tuning runs are done
    again (nothing new to evaluate: only the deciding setting) and the recorded choice stays."""
    out = tmp_path / "out"
    Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    before = _record(out)
    more = {**TUNED, "evaluation": {**TUNED["evaluation"],
                                     "samplers": [*TUNED["evaluation"]["samplers"], {"sampler": "euler", "steps": 4}]}}
    counts = Runner(study_from_dict(more), out, work=fake_work, resolve=no_resolve).run()
    assert counts == {"pending": 0, "running": 0, "done": 10, "failed": 0}
    assert "6 tuning run(s) to finish first" in capsys.readouterr().out
    assert _record(out) == before
    for r in _rows(out):
        text = (Path(r.run_dir) / "metrics.jsonl").read_text()
        assert ('"euler"' in text) is (not is_tuning(r.labels))


def test_sigkill_in_either_phase_then_resume(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(TUNED))
    ref = tmp_path / "ref"
    Runner(load_study(study), ref, work=fake_work, resolve=no_resolve).run()
    expected = _snapshot_state(ref)
    out = tmp_path / "killed"

    def lines() -> int:
        return sum(len(p.read_text().splitlines()) for p in out.glob("runs/*/metrics.jsonl")) if out.is_dir() else 0

    kills, phases = 0, []
    # kill in the tuning phase (after some progress), then in the seeded phase (once tuning.json exists)
    for phase, wait in (("tuning", 0.0), ("tuning", 0.1), ("seeded", 0.0), ("seeded", 0.2)):
        before = lines()
        p = _runner_proc(study, out, workers=2 if kills % 2 else 1, delay=0.05)
        deadline = time.time() + 60
        while p.poll() is None and time.time() < deadline and (
                lines() <= before or (phase == "seeded" and not (out / TU.TUNING_FILE).exists())):
            time.sleep(0.005)
        time.sleep(wait)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
            phases.append((out / TU.TUNING_FILE).exists())
        p.wait()
    assert kills >= 3 and False in phases and True in phases, phases
    p = _runner_proc(study, out, workers=1)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    assert _snapshot_state(out) == expected and _record(out) == _record(ref)
    assert all(r.status == "done" for r in _rows(out)) and len(_rows(out)) == 10


def test_a_failed_tuning_run_holds_the_seeded_runs_back(tmp_path, capsys):
    def failing(task: Task) -> None:
        if is_tuning(task.labels) and task.config.train.lr == LRS[-1] and task.labels["dynamics.name"] == "ncsn":
            raise RuntimeError("diverged hard")
        fake_work(task)

    out = tmp_path / "out"
    counts = Runner(study_from_dict(TUNED), out, work=failing, resolve=no_resolve).run()
    assert counts["failed"] == 1 and counts["done"] == 5 and not (out / TU.TUNING_FILE).exists()
    assert "no seeded run is started" in capsys.readouterr().out
    counts = Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve, retry_failed=True).run()
    assert counts["done"] == 10 and (out / TU.TUNING_FILE).exists()


# ---- validation, plan, status, report ---------------------------------------------------------

@pytest.mark.parametrize("tune, msg", [
    ({"seed": 100, "grid": {"train.lr": [1e-3]}, "colour": 1}, "unknown key tune.colour"),
    ({"seed": 100, "grid": {}}, "tune.grid must be a non-empty mapping"),
    ({"seed": 100, "grid": {"train.lr": []}}, "empty"),
    ({"seed": 100, "grid": {"train.lr": [1e-3, 1e-3]}}, "repeats a value"),
    ({"seed": 1, "grid": {"train.lr": [1e-3]}}, "must be held out"),
    ({"grid": {"train.lr": [1e-3]}}, "tune.seed is missing"),
    ({"seed": "x", "grid": {"train.lr": [1e-3]}}, "tune.seed must be an integer"),
    ({"seed": 100, "grid": {"dynamics.name": ["ddpm"]}}, "also an axis"),
    ({"seed": 100, "grid": {"train.seed": [3]}}, "set by the study's `seeds`"),
    ({"seed": 100, "grid": {"train.lrr": [1e-3]}}, "train has no key"),
    ({"seed": 100, "grid": {"train.lr": [1e-3]}, "metric": "kid"}, "not one of evaluation.metrics"),
    ({"seed": 100, "grid": {"train.lr": [1e-3]}, "setting": 2}, "tune.setting must be the index"),
    ({"seed": 100, "grid": {"train.lr": [1e-3]}, "setting": True}, "tune.setting must be the index"),
    ({"seed": 100, "grid": {"train.lr": [1e-3]}, "budget_kimg": 0}, "tune.budget_kimg"),
    (None, "study `tune` must be a mapping"),
])
def test_tune_validation(tune, msg):
    with pytest.raises(UserError) as e:
        study_from_dict({**TUNED, "seeds": [0, 1], "tune": tune})
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_tune_in_an_evaluation_only_study_is_refused():
    with pytest.raises(UserError, match="trains nothing; remove tune"):
        study_from_dict({"name": "m", "models": {"a": "x"}, "tune": {"seed": 1, "grid": {"train.lr": [1e-3]}}})


def test_a_bad_tune_section_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TUNED, "tune": {"seed": 0, "grid": {"train.lr": LRS}}}))
    out = tmp_path / "out"
    assert cli.main(["study", "run", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be held out" in err and not out.exists()


def test_plan_lists_the_tuning_runs_and_counts_their_training(tmp_path, capsys):
    from diffatlas.study.plan import plan_text

    study = study_from_dict(TUNED)
    runs = TU.plan_runs(study, no_resolve)
    assert [is_tuning(r.labels) for r in runs] == [True] * 6 + [False] * 4
    assert [r.id for r in runs[:6]] == [r.id for r in study.tuning_runs(no_resolve)]
    text = plan_text(study, runs, startup_fn=lambda: 0.0,
                     calibrate_fn=lambda run, steps, threads, evaluation: {"images_per_s": 1000.0, "steps": 3,
                                                                           "setup_s": 0.0, "seconds": 0.1,
                                                                           "threads": threads})
    assert "study tuned: 4 runs = 2 configuration(s) x 2 seed(s)" in text
    assert "tuning first: 6 tuning run(s) = 2 configuration(s) x 3 candidate(s) (train.lr in [0.0002, 0.002, 0.02]) " \
           "on the held-out seed 100, 4 kimg each" in text
    assert "their train.lr is chosen from the grid" in text
    table = [l.split() for l in text.splitlines()]
    assert sum(1 for l in table if l[-1:] == ["tuning"] and "100" in l) == 6
    assert sum(1 for l in table if l[:2] == ["after", "tuning"] and l[-1] == "seeded" and "tuned" in l) == 4
    # training counted: 6 tuning runs x 4 kimg + 4 seeded runs x 10 kimg at 1000 images/s = 64 s
    assert "): training 1m04s + evaluation" in text, text
    # the CLI, with the real config resolution
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(TUNED))
    assert cli.main(["study", "plan", str(f), "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    assert "tuning first: 6 tuning run(s)" in out
    assert sum(1 for l in out.splitlines() if l.startswith("after tuning") and l.endswith("seeded")) == 4


def test_status_shows_the_tuning_as_its_own_phase(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(R, "decide", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    capsys.readouterr()
    assert cli.main(["study", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tuning runs (phase 1" in text and "6 done" in text and "phase=tuning" in text
    assert "seeded runs (phase 2): added with the chosen values" in text
    monkeypatch.undo()
    Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    capsys.readouterr()
    assert cli.main(["study", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chosen per configuration (tuning.json): dynamics=ddpm: lr=0.0002; dynamics=ncsn: lr=0.002" in text
    assert "runs: 4 done" in text and "nothing left to run" in text


def test_report_and_export_say_what_was_tuned(tmp_path):
    from diffatlas.report import write_report
    from diffatlas.report.export import export_study
    from diffatlas.report.tuning import tuning_sections, tuning_table

    out = tmp_path / "out"
    Runner(study_from_dict(TUNED), out, work=fake_work, resolve=no_resolve).run()
    text, header, rows = tuning_table(out)
    assert "held-out seed 100" in text[0] and "lr (train.lr) in [0.0002, 0.002, 0.02]" in text[0]
    assert "4 kimg" in text[0] and "heun x8 on fid" in text[0] and "the first candidate in grid order wins a tie" in text[0]
    # ddpm's best lr is the grid's smallest: the report says it may be mistuned; ncsn's is inside the grid
    assert text[1].startswith("The choice lies at the edge of the grid for 1 of 2 configuration(s) (dynamics=ddpm: "
                              "lr=0.0002, its smallest value)")
    assert header == ["configuration", "lr=0.0002: fid", "lr=0.002: fid", "lr=0.02: fid", "chosen"]
    rec = _record(out)
    assert rows == [[f"dynamics={c['labels']['dynamics.name']}", *(f"{x['value']:.4g}" for x in c["candidates"]),
                     f"lr={c['chosen']['train.lr']}"] for c in rec["configurations"]]
    assert [r[-1] for r in rows] == ["lr=0.0002", "lr=0.002"]
    dest = tmp_path / "export"
    paths = export_study(out, dest, samples=0)
    assert "tuning.json" in paths and json.loads((dest / "tuning.json").read_text()) == rec
    write_report(out, samples=0)
    write_report(dest, samples=0)
    live, exported = (out / "report.md").read_text(), (dest / "report.md").read_text()

    def part(md: str) -> str:
        return md[md.index("## What was tuned"):].split("\n## ")[0]

    assert part(live) == part(exported) and "dynamics=ncsn" in part(live) and "lr=0.002" in part(live)
    assert "What was tuned" in (out / "report.html").read_text()
    # without tuning.json no section; a damaged one is one line naming the file
    assert tuning_sections(tmp_path, None, None) == []
    (dest / "tuning.json").write_text('{"tune": {}}')
    with pytest.raises(UserError, match="tuning record .* is damaged"):
        tuning_table(dest)


def test_cluster_jobs_of_tuning_runs_evaluate_only_the_deciding_setting(tmp_path):
    from diffatlas.study.executors import ExecutorSpec
    from diffatlas.study.executors.remote import payload_for

    study = study_from_dict(_study(metric="is", setting=1))
    out = tmp_path / "out"
    ledger, runs, _ = R.prepare_study(study, out, no_resolve)
    rows = ledger.rows()
    ledger.close()
    assert runs == [] and len(rows) == 6 and all(is_tuning(r.labels) for r in rows)
    ev = payload_for(rows[0], study, ExecutorSpec(name="slurm"), fake_work).evaluation
    assert ev.metrics == ("is",) and ev.samplers == ({"sampler": "ddim", "steps": 10},)
    assert ev.n_sweep == () and ev.draws is None and ev.n == study.evaluation.n
    assert study.evaluation_for({"seed": 0}) is study.evaluation
