"""Verdict statistics: the trained model is the unit, designs that cannot decide say so, claims are
tested without a built-in lean, and `diffatlas calibrate` measures the false-positive rate and power."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffatlas import cli
from diffatlas.errors import UserError
from diffatlas.study import statistics as S

SETTINGS = ("heun x18", "ddim x50", "ancestral x100", "euler x50")
DISCRETE = "DDPM-based beats NCSN-based (discrete: ddpm vs ncsn)"


def _study(rng, *, seeds: int, effect: float = 0.0, settings=SETTINGS, sd_model: float = 2.0, sd_setting: float = 0.7,
           variants: int = 1) -> list[dict]:
    """ddpm vs ncsn (each with `variants` configurations), seeds x settings; ncsn's FID worse by `effect`.
    Each trained model has its own level (sd_model): its settings are repeated measures of it."""
    recs = []
    for dyn in ("ddpm", "ncsn"):
        for v in range(variants):
            for s in range(seeds):
                level = 30.0 + rng.normal(0, sd_model) + (effect if dyn == "ncsn" else 0.0)
                for j, ev in enumerate(settings):
                    recs.append({"run": f"{dyn}{v}-{s}", "labels": {"dynamics.name": dyn, f"dynamics.{dyn}": v, "seed": s,
                                                                    S.EVAL_KEY: ev},
                                 "metric": "fid", "final": level + 3.0 * j + rng.normal(0, sd_setting),
                                 "converged_kimg": 100.0, "settled": True, "budget_kimg": 500.0})
    return recs


def _verdict(records, axes=("dynamics.name",), metrics=("fid",), **kw) -> dict[str, S.Verdict]:
    return {v.claim: v for v in S.verdicts(records, list(axes), list(metrics), **kw)}


def test_settings_of_one_model_are_not_replicates():
    """No true effect, 6 seeds x 4 evaluation settings: pairing every (seed, setting) as if independent
    declared a difference in about half of these studies; one number per trained model keeps the rate at alpha."""
    rng = np.random.default_rng(0)
    studies = 200
    wrong = sum(_verdict(_study(rng, seeds=6))[DISCRETE].verdict in ("supported", "contradicted") for _ in range(studies))
    assert wrong / studies <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / studies), wrong


def test_designs_that_cannot_decide_are_underpowered():
    rng = np.random.default_rng(1)
    # the quickstart's layout: 2 variants per dynamics, 2 seeds, 2 settings, a 52-point FID gap
    v = _verdict(_study(rng, seeds=2, effect=52.0, settings=SETTINGS[:2], variants=2))[DISCRETE]
    assert v.verdict == "underpowered" and v.n == 2
    assert "at least 6 seeds" in v.evidence[0]
    # the paper study's layout: 3 seeds x 4 settings; 12 pseudo-pairs would have "supported" it
    v = _verdict(_study(rng, seeds=3, effect=20.0))[DISCRETE]
    assert v.verdict == "underpowered" and v.n == 3
    # six seeds reach a verdict for a large effect, in either direction
    assert _verdict(_study(rng, seeds=6, effect=20.0))[DISCRETE].verdict == "supported"
    assert _verdict(_study(rng, seeds=6, effect=-20.0))[DISCRETE].verdict == "contradicted"
    assert S.min_pairs(0.05) == 6 and S.min_sign_flip_p(6) == pytest.approx(1 / 32)


def test_paired_t_sign_flip_and_effect_size_against_exact_values():
    d = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    from scipy import stats

    tt, ref = S.paired_t(d), stats.ttest_1samp(d, 0.0)
    assert tt.t == pytest.approx(ref.statistic) and tt.p == pytest.approx(ref.pvalue)
    assert tt.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert S.sign_flip_p(d) == pytest.approx(2 / 64)  # only all-positive and all-negative reach |sum| 21
    assert S.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    c = S.compare(_study(np.random.default_rng(2), seeds=6, effect=3.0), "dynamics.name", "ddpm", "ncsn", "fid")
    assert c.n_pairs == 6 and c.gain > 0 and c.dz < 0 and c.dz_ci[0] < c.dz < c.dz_ci[1]
    # the exact d_z interval covers the true d_z 95% of the time
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(1000):
        x = rng.normal(1.0, 1.0, 6)
        lo, hi = S.dz_interval(S.paired_t(x).t, 6)
        hits += lo <= 1.0 <= hi
    assert abs(hits / 1000 - 0.95) < 0.025


def test_holm_and_the_correction_across_claims():
    assert S.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert S.holm([0.2, float("nan")])[0] == pytest.approx(0.2)
    # one claim significant alone (p ~ 0.035) but not once a second decidable claim shares the family
    gaps = {"ddpm": [0.0] * 8, "ncsn": [1, 2, 0.5, 5, 1.5, 0.3, 7, 0.8], "vp": [0.0] * 8, "ve": [1, -1, 2, -2, 0.5, -0.5, 1, -1]}

    def recs(names):
        return [{"run": f"{n}{s}", "labels": {"dynamics.name": n, "seed": s, S.EVAL_KEY: "heun x18"}, "metric": "fid",
                 "final": 30.0 + gaps[n][s], "converged_kimg": 10.0, "budget_kimg": 100.0} for n in names for s in range(8)]

    alone = _verdict(recs(["ddpm", "ncsn"]))[DISCRETE]
    assert alone.verdict == "supported" and 0.025 < alone.p < 0.05
    both = _verdict(recs(["ddpm", "ncsn", "vp", "ve"]))
    assert both[DISCRETE].p == pytest.approx(alone.p) and both[DISCRETE].p_adj > 0.05
    assert both[DISCRETE].verdict == "no detectable difference"


def test_detectable_effect_matches_its_power():
    # beyond 10 pairs: the paired t-test's power from the noncentral t (G*Power: n = 20 -> d_z 0.66 at 80%)
    assert S.detectable_dz(20, 0.05) == pytest.approx(0.66, abs=0.01)
    assert S.detectable_dz(5, 0.05) == math.inf  # the sign-flip check cannot reach 0.05
    dz = S.detectable_dz(6, 0.05)
    assert S.detectable_dz(8, 0.05) < dz < S.detectable_dz(6, 0.01)
    # an independent simulation of the decision rule (t-test and sign-flip test) at that effect
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(1500):
        x = rng.normal(dz, 1.0, 6)
        hits += S.paired_t(x).p < 0.05 and x.mean() > 0 and S.sign_flip_p(x) < 0.05
    assert abs(hits / 1500 - 0.8) < 0.04


def test_direction_comes_from_the_metric_record():
    rng = np.random.default_rng(6)
    recs = [dict(r, metric="sliced_w2", higher_is_better=False) for r in _study(rng, seeds=6, effect=5.0)]
    v = _verdict(recs, metrics=("sliced_w2",))[DISCRETE]
    assert v.verdict == "supported", v.evidence  # ncsn's larger distance is worse
    assert S.direction("sliced_w2", recs) == -1
    with pytest.raises(UserError, match="'sliced_w2' is not one diffatlas computes"):
        S.direction("sliced_w2")   # no record says and no metric yields it: no guess
    assert S.direction("precision") == +1 and S.direction("kid") == -1   # from the metric registry


def test_a_curve_that_never_settles_counts_at_the_budget():
    """Schedule b never settles for 6 of 8 seeds; dropping those curves made b look as fast as a."""
    recs = []
    for s in range(8):
        for sched in ("a", "b"):
            never = sched == "b" and s < 6
            recs.append({"run": f"{sched}{s}", "labels": {"dynamics.schedule": sched, "seed": s, S.EVAL_KEY: "heun x18"},
                         "metric": "fid", "final": 10.0, "converged_kimg": None if never else 100.0 + s,
                         "settled": not never, "budget_kimg": 500.0})
    v = S.claim_similar_convergence(recs, ["dynamics.schedule"], ["fid"], 500.0)
    assert v.verdict == "contradicted", v.evidence
    assert any("b 2/8" in e for e in v.evidence)
    # every curve settled at similar points: similarity is shown
    for r in recs:
        s, b = r["labels"]["seed"], r["labels"]["dynamics.schedule"] == "b"
        r["converged_kimg"], r["settled"] = 100.0 + 3 * s + (5.0 + s % 3 if b else 0.0), True
    assert S.claim_similar_convergence(recs, ["dynamics.schedule"], ["fid"], 500.0).verdict == "supported"


def _draw_records(rng, runs: int, noise: dict[str, float], n: int = 250) -> tuple[list[dict], list[dict]]:
    """Runs whose FID and IS are each measured on 4 independent draws at n, plus an n sweep. FID carries
    its 1/n bias (Chong & Forsyth 2020); `noise` is each metric's draw noise relative to the between-run sd."""
    recs, sweeps = [], []
    for r in range(runs):
        fid, is_ = 20.0 + rng.normal(0, 2.0), 8.0 + rng.normal(0, 0.3)
        for m, v, sd, bias in (("fid", fid, 2.0, 4000.0 / n), ("is", is_, 0.3, 0.0)):
            values = (v + bias + noise[m] * sd * rng.standard_normal(4)).tolist()
            recs.append({"run": f"r{r}", "labels": {"dynamics.name": "ddpm", "seed": r, S.EVAL_KEY: "heun x18"}, "metric": m,
                         "final": v, "converged_kimg": 50.0, "budget_kimg": 100.0,
                         "draws": {"n": n, "values": values, "seeds": [10**6 + i * n for i in range(4)]}})
        sweeps.append({"fid": {n: fid + 4000.0 / n, 5000: fid + 0.8}, "is": {n: is_ - 0.02, 5000: is_}})
    return recs, sweeps


def test_is_stability_is_not_decided_by_fids_bias_in_n():
    claim = "IS is less sensitive to the number of samples than FID"
    rng = np.random.default_rng(7)
    equal, sweeps = _draw_records(rng, 24, {"fid": 0.5, "is": 0.5})
    v = _verdict(equal, sweeps=sweeps)[claim]
    assert v.verdict == "no detectable difference", v.evidence  # the n sweep's relative change would "support" it
    assert "not tested" in " ".join(v.evidence) and "ICC" in v.evidence[0]
    only_sweep = S.claim_is_stability(sweeps)  # without draws the claim is not tested at all
    assert only_sweep.verdict == "not tested" and "n sweep (not tested" in only_sweep.evidence[1]
    noisy_fid, _ = _draw_records(rng, 24, {"fid": 1.5, "is": 0.3})
    assert _verdict(noisy_fid)[claim].verdict == "supported"
    noisy_is, _ = _draw_records(rng, 24, {"fid": 0.3, "is": 1.5})
    assert _verdict(noisy_is)[claim].verdict == "contradicted"
    x = np.array([[1.0, 1.2], [3.0, 3.1], [5.0, 4.8]])
    assert S.icc1(x) == pytest.approx(S.icc1_jackknife(x)[0])
    assert S.icc1(np.repeat(np.arange(5.0)[:, None], 3, axis=1)) == pytest.approx(1.0)


def test_guidance_is_compared_within_each_model_on_the_same_sampler():
    rng = np.random.default_rng(8)
    recs = []
    for dyn in ("ddpm", "ncsn"):
        for s in range(4):
            level = rng.normal(0, 2.0)
            for ev, g, sampling in (("heun x18", "none", "heun x18"), ("em x250", "none", "em x250"),
                                    ("heun x18 classifier:2", "classifier:2", "heun x18")):
                guided = g != "none"
                lab = {"dynamics.name": dyn, "seed": s, S.EVAL_KEY: ev, "guidance": g, "sampling": sampling}
                fid = 30 + level + (8.0 if ev == "em x250" else 0.0) + (1.5 if guided else 0.0) + rng.normal(0, 0.2)
                acc = 0.6 + 0.02 * level + (0.2 if guided else 0.0) + rng.normal(0, 0.01)
                recs += [{"run": f"{dyn}{s}", "labels": lab, "metric": "fid", "final": fid, "converged_kimg": 50.0,
                          "budget_kimg": 100.0},
                         {"run": f"{dyn}{s}", "labels": lab, "metric": "class_accuracy", "final": acc,
                          "converged_kimg": 50.0, "budget_kimg": 100.0}]
    claim = "classifier guidance helps class accuracy but does not universally improve quality"
    v = _verdict(recs, axes=("dynamics.name", "guidance"), metrics=("fid", "class_accuracy"))[claim]
    assert v.verdict == "supported" and v.n == 8, v.evidence
    # matched on the sampler: guided heun against unguided heun (+1.5), not against the mean with em (-2.5)
    fid_test = next(c for c in v.tests if c.metric == "fid")
    assert fid_test.diff == pytest.approx(1.5, abs=0.2) and fid_test.settings == ["heun x18", "heun x18 classifier:2"]


def test_model_size_pairs_trained_models_across_datasets():
    rng = np.random.default_rng(3)
    recs = []
    for s in range(8):
        for data, gain in (("digits", 0.05), ("image-folder", 0.5)):
            for size in ("unet-xs", "unet-m"):
                level = 30.0 * (1 - gain if size == "unet-m" else 1.0) * (1 + rng.normal(0, 0.01))
                for ev in SETTINGS[:3]:
                    recs.append({"run": f"{data}{size}{s}", "labels": {"data.name": data, "network.preset": size, "seed": s,
                                                                       S.EVAL_KEY: ev},
                                 "metric": "fid", "final": level * (1 + rng.normal(0, 0.005)), "converged_kimg": None})
    v = S.claim_model_size(recs, ["data.name", "network.preset"], ["fid"])
    assert v.verdict == "supported" and v.n == 8, v.evidence
    assert S.claim_model_size([r for r in recs if r["labels"]["seed"] < 4], ["data.name", "network.preset"],
                              ["fid"]).verdict == "underpowered"


# ---- the calibration command and the study plan -------------------------------------------------

def test_calibrate_holds_its_false_positive_rate_and_detects_the_planted_effect(capsys, monkeypatch):
    from diffatlas.study import calibration

    monkeypatch.delitem(calibration.CHECKS, calibration.EXACT_DENOISER)   # tests/test_calibrate_exact.py runs it
    assert cli.main(["calibrate", "--null", "150", "--planted", "100"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"false positives ([0-9.]+) at alpha 0\.05 over 150 null studies; power ([0-9.]+) at effect "
                     r"d_z 3 \(fid [0-9.]+, 6 seeds\); exact-denoiser study: not run", out[-1])
    assert m, out[-1]
    assert float(m.group(1)) <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 150)
    assert float(m.group(2)) >= 0.8
    assert any(line.startswith("simulated layout: paper-fashion-mnist: 5 configurations x 6 seeds x 4") for line in out)


def test_calibrate_runs_registered_checks_and_rejects_bad_input(capsys, monkeypatch):
    from diffatlas.study import calibration

    monkeypatch.setitem(calibration.CHECKS, calibration.EXACT_DENOISER, lambda seed: ("no difference", ["row"]))
    assert cli.main(["calibrate", "--null", "10", "--planted", "0"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith("power not run at effect d_z 3 (fid 0, 6 seeds); exact-denoiser study: no difference")
    for bad in (["--null", "0"], ["--seeds", "1"], ["--effect", "-1"]):
        assert cli.main(["calibrate", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("diffatlas: error:") and len(err.splitlines()) == 1


def test_study_plan_warns_per_claim(tmp_path, capsys):
    here = Path(__file__).resolve().parent
    d = yaml.safe_load((here.parent / "studies" / "quickstart.yaml").read_text())
    p = tmp_path / "two-seeds.yaml"
    p.write_text(yaml.safe_dump(d))
    assert cli.main(["study", "plan", str(p), "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"warning: DDPM-based beats NCSN-based \(discrete: ddpm vs ncsn\): underpowered: .*at least 6", out)
    assert "warning: IS is less sensitive to the number of samples than FID: not tested" in out
    d["seeds"] = list(range(6))
    d["evaluation"]["draws"] = {"n": 200, "count": 3}
    p.write_text(yaml.safe_dump(d))
    assert cli.main(["study", "plan", str(p), "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\n  DDPM-based beats NCSN-based \(discrete: ddpm vs ncsn\): can reach a verdict \(6 pairs.*d_z", out)
    assert "3 independent draws at n=200" in out and "warning: IS is less" not in out


# ---- independent draws: from the study file through the runner to the records --------------------

def test_draws_are_evaluated_on_disjoint_seeds_and_read_apart_from_the_curves(tmp_path, monkeypatch):
    import diffatlas.evaluation as E
    import diffatlas.train as T
    from diffatlas.errors import UserError
    from diffatlas.study.results import load_results
    from diffatlas.study.runner import Runner
    from diffatlas.study.spec import study_from_dict

    d = {"name": "draws", "base": {"data": {"name": "digits"}}, "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}],
         "seeds": [0, 1], "budget_kimg": 1,
         "evaluation": {"metrics": ["fid", "is"], "n": 100, "n_sweep": [50, 100], "draws": {"n": 40, "count": 3},
                        "samplers": [{"sampler": "ddim", "steps": 5}]}}
    study = study_from_dict(d)
    assert study.evaluation.draws == {"n": 40, "count": 3, "seed": 100}  # after every other evaluation's seeds
    for bad in ({"n": 40}, {"n": 1, "count": 3}, {"n": 40, "count": 3, "extra": 1}, [40, 3]):
        with pytest.raises(UserError, match="evaluation.draws"):
            study_from_dict({**d, "evaluation": {**d["evaluation"], "draws": bad}})

    calls = []

    def fake_train(cfg, run_dir, **kw):
        Path(run_dir).mkdir(parents=True, exist_ok=True)

    def fake_evaluate(run_dir, *, metrics, n, snapshots, seed, sampler=None, steps=None, **kw):
        calls.append((n, seed, snapshots))
        with open(Path(run_dir) / "metrics.jsonl", "a") as f:
            for m in metrics:
                f.write(json.dumps({"kimg": 1.0, "metric": m, "value": 1000.0 * n + seed, "n": n, "seed": seed,
                                    "sampler": sampler, "steps": steps, "higher_is_better": m == "is"}) + "\n")
        return []

    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setattr(E, "evaluate_run", fake_evaluate)
    out = tmp_path / "out"
    Runner(study, out, resolve=lambda c: c).run()
    draws = sorted(c for c in calls if c[0] == 40)
    assert draws == sorted([(40, 100, "latest"), (40, 140, "latest"), (40, 180, "latest")] * 4)
    res = load_results(out)
    recs = res.records()
    assert len(recs) == 8 and all(r["final"] == 100000.0 for r in recs)   # the curves: n = 100 at seed 0 only
    for r in recs:
        assert r["draws"] == {"n": 40, "kimg": 1.0, "seeds": [100, 140, 180], "values": [40100.0, 40140.0, 40180.0]}
        assert r["higher_is_better"] == (r["metric"] == "is")
    assert all(set(s["fid"]) == {50, 100} for s in res.sweeps())
