"""`diffatlas study plan`'s time estimate: the work each run does (counted against what training and
sampling really do), the evaluation's measured unit costs and how the estimate scales with NFE, n
and settings, classifier guidance's one-off, the workers' wall time, and the GPU prediction's FLOP
arithmetic."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml

from diffatlas import cli
from diffatlas.study import cost
from diffatlas.study.plan import plan_text
from diffatlas.study.spec import Evaluation, study_from_dict
from diffatlas.study.status import format_duration

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _one_thread_each_test():
    """The tiny run's fixture leaves 2 threads set; tiny tensors run faster (and steadier) on one."""
    torch.set_num_threads(1)

DIGITS = {"data": {"name": "digits"}, "network": {"preset": "unet-xs", "dropout": 0.0},
          "dynamics": {"name": "ddpm", "steps": 50},
          "train": {"batch": 32, "tick_kimg": 0.064, "warmup_kimg": 0.0, "doctor": False, "device": "cpu",
                    "tensorboard": False}}


def study(evaluation: dict, base: dict = DIGITS, **extra) -> object:
    d = {"name": "plan-test", "base": base, "seeds": [0], "budget_kimg": 0.256, "evaluation": evaluation, **extra}
    return study_from_dict(yaml.safe_load(yaml.safe_dump(d)))


# ---- counting --------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", [{"sampler": "ddim", "steps": 7}, {"sampler": "heun", "steps": 6},
                                     {"sampler": "heun", "nfe": 35}, {"sampler": "euler-maruyama", "nfe": 250},
                                     {"sampler": "pc", "nfe": 20}, {}])
def test_setting_nfe_is_what_the_evaluation_spends(tiny_run, setting):
    """The NFE counted on a stand-in equals what sampling the trained run with the evaluation's plan reports."""
    from diffatlas.sampling import generate, load_run, run_plan

    run = load_run(tiny_run, None)
    plan = run_plan(run.cfg, run.denoiser.dynamics, **setting)
    _, nfe = generate(run.denoiser, run.shape, [0, 1], sampler=plan.sampler, grid=plan.grid, steps=plan.steps,
                      options=plan.options, clip="auto")
    assert cost.setting_nfe(run.cfg, run.denoiser.dynamics, setting) == nfe


def test_snapshot_count_is_what_training_keeps(tmp_path):
    from diffatlas.checkpoint import list_snapshots
    from diffatlas.config import load_config
    from diffatlas.train import train

    for overrides in (["train.kimg=0.2", "train.snapshot_kimg=0.064"], ["train.kimg=0.2", "train.snapshot_kimg=0.09"],
                      ["train.kimg=0.2", "train.snapshot_kimg=0.064", "train.keep_snapshots=false"]):
        cfg = load_config(None, ["data.name=toy2d", "network.preset=mlp-xs", "train.batch=32", "train.tick_kimg=0.032",
                                 "train.doctor=false", "train.device=cpu", "train.tensorboard=false", *overrides])
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        train(cfg, d, progress=False, log=lambda *_: None)
        assert cost.snapshot_count(cfg) == len(list_snapshots(d)), overrides


def test_run_work_counts_settings_sweeps_and_draws():
    st = study({"metrics": ["fid", "kid"], "n": 300, "every_kimg": 0.064, "n_sweep": [100, 300],
                "draws": {"n": 50, "count": 3},
                "samplers": [{"sampler": "ddim", "steps": 7}, {"sampler": "heun", "steps": 6, "guidance": "classifier:1"}]})
    run = st.runs()[0]
    w = cost.run_work(run, st.evaluation)
    assert w.snapshots == 4 and w.train_images == 256 and w.train_steps == 8
    jobs = [(j.n, j.nfe, j.guidance, j.count) for j in w.jobs]
    assert jobs == [(300, 7, None, 4), (300, 11, "classifier", 4), (100, 7, None, 1), (50, 7, None, 3)]
    assert w.calls == 2 + 1 + 3                       # n=300 is in the sweep already: not evaluated twice
    assert w.real_images == 2 * 300 + 100 + 3 * 50    # KID's real subset, once per evaluate_run call
    assert w.sample_nfe == 4 * 300 * 7 + 4 * 300 * 11 + 100 * 7 + 3 * 50 * 7
    assert w.noisy_classifier


def test_network_and_data_labels_show_overrides():
    st = study({"metrics": ["fid"], "n": 50}, axes=[{"product": {"network.base_channels": [8, 16]}}])
    assert [cost.network_label(r.config) for r in st.runs()] == ["unet-xs base_channels=8 dropout=0.0",
                                                                 "unet-xs base_channels=16 dropout=0.0"]
    base = {**DIGITS, "data": {"name": "digits", "resolution": 16}}
    assert cost.data_label(study({"metrics": ["fid"]}, base=base).runs()[0].config) == "digits resolution=16"


# ---- measured evaluation units ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def units(tiny_run):
    ev = Evaluation(metrics=("fid", "is"), n=200, samplers=({"sampler": "ddim", "steps": 5},
                                                           {"sampler": "ddim", "steps": 5, "guidance": "classifier:1"}))
    return cost.measure_evaluation(tiny_run, ev, threads=1)


def test_measured_units_are_positive_and_guidance_costs_more(units):
    assert units.nfe_s[None] > 0 and units.feature_s > 0 and units.load_s > 0 and units.call_s > 0
    assert units.nfe_s["classifier"] > units.nfe_s[None]   # a classifier gradient on every call
    assert units.noisy_s > 0 and any("noise-aware classifier: 2000 steps of batch 128" in n for n in units.notes)
    assert 200 in units.metrics_s


def test_evaluation_estimate_grows_with_nfe_n_and_settings(units):
    def seconds(**ev) -> float:
        st = study({"metrics": ["fid", "is"], "every_kimg": 0.128, **ev})
        return units.run_s(cost.run_work(st.runs()[0], st.evaluation))

    one = seconds(n=200, samplers=[{"sampler": "ddim", "steps": 5}])
    assert seconds(n=200, samplers=[{"sampler": "ddim", "steps": 10}]) > one
    assert seconds(n=400, samplers=[{"sampler": "ddim", "steps": 5}]) > one
    two = seconds(n=200, samplers=[{"sampler": "ddim", "steps": 5}, {"sampler": "euler", "steps": 5}])
    assert two == pytest.approx(2 * one, rel=1e-9)   # every cost of a setting is paid again
    guided = seconds(n=200, samplers=[{"sampler": "ddim", "steps": 5, "guidance": "classifier:1"}])
    assert guided > one
    # exact arithmetic: calls, and per snapshot evaluation load + sampling + features + metrics + log
    w = cost.run_work(study({"metrics": ["fid", "is"], "every_kimg": 0.128, "n": 200,
                             "samplers": [{"sampler": "ddim", "steps": 5}]}).runs()[0], Evaluation(
        metrics=("fid", "is"), n=200, every_kimg=0.128, samplers=({"sampler": "ddim", "steps": 5},)))
    per = units.load_s + 200 * 5 * units.nfe_s[None] + 200 * units.feature_s + units.metrics_s[200] + units.log_s
    assert w.snapshots == 2 and units.run_s(w) == pytest.approx(units.call_s + 2 * per, rel=1e-12)


# ---- the plan's text with injected measurements ----------------------------------------------------

def _fake_units(threads: int, noisy: float | None = None) -> cost.EvalUnits:
    return cost.EvalUnits(threads, load_s=0.1, nfe_s={None: 1e-3, "classifier": 3e-3}, feature_s=1e-4,
                          metrics_s={100: 0.01}, log_s=0.0, call_s=0.5, noisy_s=noisy, dataset_s=7.0,
                          dataset_what="evaluation classifier")


def test_plan_adds_training_evaluation_and_one_offs(monkeypatch):
    """One thread (the module's fixture) on two cores: one worker and each of two workers use 1 thread."""
    monkeypatch.setattr("diffatlas.study.plan.cpu_count", lambda: 2)
    calls = []

    def fake_calibrate(run, steps, threads, evaluation):
        calls.append((run.seed, threads, evaluation is not None))
        res = {"images_per_s": 100.0, "steps": 9, "setup_s": 1.0, "seconds": 2.0, "threads": threads}
        if evaluation is not None:
            res["eval"] = _fake_units(threads, noisy=30.0)
        return res

    st = study({"metrics": ["fid"], "n": 100, "every_kimg": 0.128,
                "samplers": [{"sampler": "ddim", "steps": 5}, {"sampler": "ddim", "steps": 5, "guidance": "classifier:1"}]},
               seeds=[0, 1, 2])
    text = plan_text(st, st.runs(), workers=2, calibrate_fn=fake_calibrate,
                     contention_fn=lambda run, threads, others: {"alone": 100.0, "loaded": 80.0, "factor": 1.25},
                     startup_fn=lambda: 4.0)
    assert calls == [(0, 1, True)]   # one data/network/batch: measured once, the evaluation with it
    snaps = 2
    ev_run = 2 * 0.5 + snaps * (0.1 + 100 * 5 * 1e-3 + 100 * 1e-4 + 0.01) + snaps * (0.1 + 100 * 5 * 3e-3 + 100 * 1e-4 + 0.01)
    train_run = 256 / 100.0 + 1.0
    m = re.search(r"estimated time, one worker \(1 thread\): training (\S+) \+ evaluation (\S+) \+ one-off "
                  r"classifiers and statistics (\S+) \+ process start (\S+) = (\S+)\n", text)
    assert m, text
    # the noise-aware classifier (30 s) is shared by the runs of one dataset and process: the first pays
    assert m.groups() == (format_duration(3 * train_run), format_duration(3 * ev_run), format_duration(30.0 + 7.0),
                          format_duration(4.0), format_duration(3 * (train_run + ev_run) + 30.0 + 7.0 + 4.0))
    # two workers start two runs at once: both reach evaluation before the dataset's classifier is cached;
    # one trains it, the other waits as long; the third run finds it
    rows = [cost.RunTime(train_run * 1.25, (ev_run + 30.0) * 1.25, "digits", 7.0 * 1.25)]
    rows += [cost.RunTime(train_run * 1.25, ev_run * 1.25, "digits", 7.0 * 1.25)] * 2
    wall = 4.0 + 4.0 * 1.25 + cost.wall_time(rows, 2)   # the runner's start, then the workers' (slowed)
    assert cost.wall_time(rows, 2) == pytest.approx(max(train_run + 7.0 + ev_run + 30.0,
                                                        2 * (train_run + ev_run) + 7.0) * 1.25)
    assert (f"estimated wall time, 2 workers (1 thread each): {format_duration(wall)}: process starts "
            f"{format_duration(9.0)} (the runner's, then the workers' side by side), then the runs' training "
            f"{format_duration(3 * train_run * 1.25)} + evaluation {format_duration(3 * ev_run * 1.25)}" in text)
    assert ("slowed by the other workers x1.25 in training (the training rate with 1 thread alone 100 img/s, beside 1 "
            "more worker training 80 img/s) and x1.25 in evaluation" in text)
    assert "the noise-aware classifier of its dataset and process (classifier guidance, trained once)" in text


def test_makespan_takes_runs_in_order():
    assert cost.makespan([3, 1, 1, 1], 2) == 3
    assert cost.makespan([1, 1, 1, 1], 2) == 2
    assert cost.makespan([2, 2, 2], 1) == 6
    assert cost.makespan([5, 1, 1], 4) == 5


def test_wall_time_pays_a_datasets_classifier_once_and_others_wait_for_it():
    R = cost.RunTime
    # one worker: the first run of each dataset pays
    assert cost.wall_time([R(1, 1, "a", 10), R(1, 1, "a", 10), R(1, 1, "b", 5)], 1) == 2 + 10 + 2 + 2 + 5
    # two workers: runs 1 and 2 start together and reach evaluation at t=1; run 1 trains a's classifier
    # (ready at t=11), run 2 waits for it (io.build_once) and ends at 12 too; run 3 starts at 12 and finds it
    assert cost.wall_time([R(1, 1, "a", 10), R(1, 1, "a", 10), R(1, 1, "a", 10)], 2) == 12 + 2
    # a run that waits evaluates from the moment the classifier is ready: 1 + 10 then 5 of evaluation
    assert cost.wall_time([R(1, 1, "a", 10), R(2, 5, "a", 10)], 2) == 11 + 5
    # a run of another dataset is not held up by it; a run reaching evaluation after it is cached does not pay
    assert cost.wall_time([R(1, 1, "a", 10), R(20, 1, "a", 10)], 2) == 21
    # no one-off: the makespan
    assert cost.wall_time([R(2, 1), R(1, 0), R(1, 0)], 2) == cost.makespan([3, 1, 1], 2)


# ---- GPU predictions ------------------------------------------------------------------------------

def test_gpu_flop_scaling_arithmetic():
    """Training in CUDA-graph mode (no per-step floor) and evaluation, each from the recorded rates by FLOPs."""
    base = {**DIGITS, "train": {**DIGITS["train"], "precision": "bf16", "compile": True,
                                "compile_mode": "reduce-overhead", "device": "cuda"}}
    st = study({"metrics": ["fid"], "n": 300, "every_kimg": 0.128, "samplers": [{"sampler": "ddim", "steps": 9}],
                "draws": {"n": 100, "count": 2}}, base=base)
    runs = st.runs()
    works = [cost.run_work(r, st.evaluation) for r in runs]
    t = cost.gpu_times(runs, works, st.evaluation, "h200")
    h = cost.GPU_RATES["h200"]
    f = next(iter(t["models"].values()))
    from diffatlas.networks import build_network, count_flops
    assert f["network"] == count_flops(build_network("unet-xs", shape=(1, 8, 8), dropout=0.0), (1, 8, 8))
    img_s = (3870 + 3935) / 2 * 5058.7 / 5058.7 * 12.44e9 / f["network"]
    assert t["runs"][0]["train"] == pytest.approx(8 * 32 / img_s, rel=1e-12)
    fwd = 3 * 12.44e9 * 2063.1
    flop = 2 * 300 * (9 * f["network"] + f["extractor"]) + 2 * 100 * (9 * f["network"] + f["extractor"])
    assert t["runs"][0]["eval"] == pytest.approx(flop / fwd, rel=1e-12)
    assert h.step_img_s["fp32 eager"] == 2063.1 and h.reference_gflop == 12.44
    # outside CUDA graphs a step takes at least the small network's measured step time
    eager = study(st.raw["evaluation"], base={**DIGITS, "train": {**DIGITS["train"], "device": "cuda"}})
    te = cost.gpu_times(eager.runs(), [cost.run_work(r, eager.evaluation) for r in eager.runs()], eager.evaluation, "h200")
    assert te["runs"][0]["train"] == pytest.approx(8 * h.small_step_s, rel=1e-12) and te["floor_steps"] == 8


def test_cli_prints_a_gpu_line_for_a_gpu_study(tmp_path, capsys):
    d = {"name": "gpu-study", "base": {**DIGITS, "train": {**DIGITS["train"], "device": "cuda"}}, "seeds": [0, 1],
         "budget_kimg": 1.0, "evaluation": {"metrics": ["fid", "is"], "n": 100, "samplers": [{"sampler": "heun", "nfe": 35}]}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d))
    assert cli.main(["study", "plan", str(p), "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    assert "GPU estimate, one NVIDIA H200" in out and re.search(r"\n  training: \S+: `diffatlas train` end to end", out)
    assert re.search(r"\n  total, one NVIDIA H200: \S+", out)
    d["base"]["train"]["device"] = "cpu"
    p.write_text(yaml.safe_dump(d))
    assert cli.main(["study", "plan", str(p), "--no-calibrate"]) == 0
    assert "GPU estimate" not in capsys.readouterr().out
    assert cli.main(["study", "plan", str(p), "--no-calibrate", "--gpu", "h200", "--workers", "2"]) == 0
    assert "; 2 workers on 2 GPUs: " in capsys.readouterr().out
    assert cli.main(["study", "plan", str(p), "--no-calibrate", "--gpu", "a100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpu 'a100'" in err and "h200" in err


def test_contention_is_measured_beside_real_concurrent_workers():
    """One more process trains the same config while the rate is timed again; the processes end with it."""
    import multiprocessing as mp

    from diffatlas.study.cost.training import measure_contention

    base = {"data": {"name": "toy2d"}, "network": {"preset": "mlp-xs"},
            "train": {"batch": 64, "doctor": False, "device": "cpu", "tensorboard": False}}
    st = study({"metrics": ["bpd"]}, base=base)
    c = measure_contention(st.runs()[0], threads=1, others=1)
    assert c["alone"] > 0 and c["loaded"] > 0 and c["factor"] == max(1.0, c["alone"] / c["loaded"])
    assert c["sampling_factor"] >= 1.0
    assert not mp.active_children()


def test_cli_plan_measures_and_estimates_a_tiny_study(tmp_path, capsys):
    """The whole path with real measurements: training steps, the evaluation's pieces, a process start."""
    d = {"name": "tiny", "base": DIGITS, "seeds": [0, 1], "budget_kimg": 0.256,
         "evaluation": {"metrics": ["fid", "is"], "n": 100, "every_kimg": 0.128,
                        "samplers": [{"sampler": "ddim", "steps": 5}, {"sampler": "heun", "steps": 3}]}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d))
    assert cli.main(["study", "plan", str(p), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\n  2 run\(s\): 256 training images, 2 snapshot\(s\); snapshot evaluations: 2 x n=100 at 5 NFE "
                     r"\(setting ddim x5\); 2 x n=100 at 5 NFE \(setting heun x3\) = 400 samples, 2,000 sample-NFE", out)
    assert re.search(r"\n  training unet-xs dropout=0.0 on digits, batch 32 \(1 thread\): \d+ img/s", out)
    assert re.search(r"\n  evaluation of unet-xs dropout=0.0 on digits \(1 thread\): sampling [\d.]+ ms per sample", out)
    m = re.search(r"\n  process start: ([\d.]+) s", out)
    assert m and float(m.group(1)) > 0
    assert re.search(r"\nestimated time, one worker \(1 thread\): training \S+ \+ evaluation \S+ \+ one-off .* = \S+\n", out)
    assert "GPU estimate" not in out and "wall time" not in out
