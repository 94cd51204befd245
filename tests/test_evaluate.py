"""Evaluation over training: metrics.jsonl entries, resuming without recomputation or duplicates,
the class-accuracy metric, the CLI (train-classifier, evaluate, curves, sample-size) and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import diffatlas.evaluation as E
import diffatlas.evaluation.inputs as EI
import diffatlas.metrics.eval_classifier as EC
from diffatlas.sampling import read_run_config
from diffatlas.cli import main
from diffatlas.data import load_dataset
from diffatlas.errors import UserError
from diffatlas.metrics import (
    METRICS,
    ClassifierExtractor,
    MetricContext,
    compute_metrics,
    load_classifier,
    save_classifier,
    train_classifier,
)
from diffatlas.metrics.stats import FrechetReference

SETTING = {"sampler": "ddim", "steps": 3, "n": 24, "device": "cpu", "log": None}
REQUIRED = ("kimg", "snapshot", "metric", "value", "interval", "n", "n_real", "extractor", "extractor_hash",
            "sampler", "grid", "steps", "nfe", "guidance", "seed", "wall_s", "what", "higher_is_better")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("DIFFATLAS_CACHE", str(root))
        mp.setenv("DIFFATLAS_INCEPTION_WEIGHTS", str(root / "no-such-weights.pth"))
        yield root


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory) -> Path:
    tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    x, y = tr.get_batch(torch.arange(len(tr)))
    xt, yt = te.get_batch(torch.arange(len(te)))
    ext, info = train_classifier(x, y, xt, yt, epochs=2, seed=0, dataset="digits")
    return save_classifier(tmp_path_factory.mktemp("clf") / "digits", ext, info)


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("metrics.jsonl"))
    return dst


def _lines(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated(run, clf_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    d = _copy(run, tmp_path_factory.mktemp("a") / "run")
    out = E.evaluate_run(d, metrics=("fid", "is", "class_accuracy"), extractor_path=clf_dir, **SETTING)
    return d, out


def test_evaluate_is_deterministic_and_never_duplicates(run, clf_dir, evaluated, tmp_path):
    d, first = evaluated
    kimgs = [k for k, _ in E.select_snapshots(run)]
    assert len(kimgs) >= 2
    lines = _lines(d)
    assert len(lines) == 3 * len(kimgs) == len(first)
    assert {(e["kimg"], e["metric"]) for e in lines} == {(k, m) for k in kimgs for m in ("fid", "is", "class_accuracy")}
    for e in lines:  # every line says what it is
        assert all(f in e for f in REQUIRED), set(REQUIRED) - set(e)
        assert e["sampler"] == "ddim" and e["steps"] == 3 and e["nfe"] == 3 and e["n"] == 24 and e["seed"] == 0
        assert e["extractor"] == "classifier" and e["extractor_hash"] == load_classifier(clf_dir).weights_hash
        assert e["extractor_accuracy"] > 0.3 and e["reference_split"] == "train" and e["seeds"] == [0, 23]
        assert np.isfinite(e["value"]) and e["interval"] is None
    fid = [e for e in lines if e["metric"] == "fid"]
    assert all(e["n_real"] == 1500 and e["value"] > 0 for e in fid)  # the whole train split
    acc = [e for e in lines if e["metric"] == "class_accuracy"]
    assert all(e["conditioned"] is False and "chance baseline" in e["what"] for e in acc)
    # again in the same run: nothing recomputed, nothing appended, the same entries returned
    before = (d / "metrics.jsonl").read_text()
    again = E.evaluate_run(d, metrics=("fid", "is", "class_accuracy"), extractor_path=clf_dir, **SETTING)
    assert (d / "metrics.jsonl").read_text() == before
    assert [(e["kimg"], e["metric"], e["value"]) for e in again] == [(e["kimg"], e["metric"], e["value"]) for e in first]
    # a fresh copy of the run gives identical numbers
    other = _copy(run, tmp_path / "b")
    fresh = E.evaluate_run(other, metrics=("fid", "is", "class_accuracy"), extractor_path=clf_dir, **SETTING)
    assert [(e["kimg"], e["metric"], e["value"]) for e in fresh] == [(e["kimg"], e["metric"], e["value"]) for e in first]
    # another setting (more samples) is a new entry, not a duplicate
    E.evaluate_run(d, metrics=("is",), snapshots="last", extractor_path=clf_dir, **{**SETTING, "n": 30})
    assert len(E.read_metrics(d)) == len(_lines(d)) == len(lines) + 1


def test_every_evaluated_snapshot_writes_its_sample_grid(run, evaluated, tmp_path):
    """The report's sample grids are files the evaluation wrote: one PNG per snapshot and setting, the
    first 16 samples (a sample depends on its seed alone, so they are `diffatlas sample`'s at seeds 0..15),
    with a record of what drew them; sample_grid=0 writes none."""
    from diffatlas.rundir import RunDir
    from diffatlas.sampling import sample_run, save_image_grid

    d, _ = evaluated
    grids = RunDir(d).eval_grids()
    kimgs = [k for k, _ in E.select_snapshots(run)]
    assert sorted(meta["kimg"] for _, meta in grids) == kimgs
    for png, meta in grids:
        assert png.name == f"eval-kimg{meta['kimg']:g}-seed0-ddim_x3.png" and png.parent == d / "samples"
        assert meta["label"] == "ddim x3" and meta["seeds"] == [0, 15] and meta["n"] == 16
        assert meta["n_evaluated"] in (24, 30)  # an evaluation at n = 30 (same seeds) rewrites the same grid
        assert meta["sampler"] == "ddim" and meta["steps"] == 3 and meta["nfe"] == 3 and meta["guidance"] is None
    png, meta = grids[-1]
    same = sample_run(d, n=16, seed=0, sampler="ddim", steps=3, snapshot=meta["kimg"])
    assert save_image_grid(same["x"], tmp_path / "same.png").read_bytes() == png.read_bytes()
    quiet = _copy(run, tmp_path / "quiet")
    E.evaluate_run(quiet, metrics=("is",), snapshots="last", sample_grid=0, **SETTING)
    assert not (quiet / "samples").exists() and RunDir(quiet).eval_grids() == []
    with pytest.raises(UserError, match="sample_grid"):
        E.evaluate_run(quiet, metrics=("is",), sample_grid=-1, **SETTING)


def test_interrupted_evaluation_resumes_without_recomputing(run, clf_dir, evaluated, tmp_path, monkeypatch):
    d = _copy(run, tmp_path / "run")
    n_snaps = len(E.select_snapshots(run))
    real_generate = EI.generate
    calls = {"generate": 0, "extract": 0}

    def dying_generate(*a, **k):
        calls["generate"] += 1
        if calls["generate"] == 2:
            raise KeyboardInterrupt  # killed while sampling the second snapshot
        return real_generate(*a, **k)

    monkeypatch.setattr(EI, "generate", dying_generate)
    with pytest.raises(KeyboardInterrupt):
        E.evaluate_run(d, metrics=("fid", "is", "class_accuracy"), extractor_path=clf_dir, **SETTING)
    assert len(_lines(d)) == 3  # the first snapshot only, all of its metrics

    def counting_generate(*a, **k):
        calls["generate"] += 1
        return real_generate(*a, **k)

    real_fl = ClassifierExtractor.features_and_logits

    def counting_fl(self, x):
        calls["extract"] += 1
        return real_fl(self, x)

    monkeypatch.setattr(EI, "generate", counting_generate)
    monkeypatch.setattr(ClassifierExtractor, "features_and_logits", counting_fl)
    calls.update(generate=0, extract=0)
    out = E.evaluate_run(d, metrics=("fid", "is", "class_accuracy"), extractor_path=clf_dir, **SETTING)
    # only the unfinished snapshots were sampled and extracted (reference statistics come from the cache)
    assert calls == {"generate": n_snaps - 1, "extract": n_snaps - 1}
    keys = [E.entry_key(e) for e in _lines(d)]
    assert len(keys) == len(set(keys)) == 3 * n_snaps
    want = [(e["kimg"], e["metric"], e["value"]) for e in evaluated[1]]
    assert [(e["kimg"], e["metric"], e["value"]) for e in out] == want  # same numbers as uninterrupted


def test_kid_pr_intervals_guidance_and_snapshot_choice(run, clf_dir, tmp_path):
    d = _copy(run, tmp_path / "run")
    kimgs = [k for k, _ in E.select_snapshots(run)]
    assert [k for k, _ in E.select_snapshots(run, "last")] == kimgs[-1:]
    assert [k for k, _ in E.select_snapshots(run, f"{kimgs[0]:g}")] == kimgs[:1]
    assert [k for k, _ in E.select_snapshots(run, "every 1000")] == [kimgs[0], kimgs[-1]]
    with pytest.raises(UserError, match="no snapshot at kimg"):
        E.select_snapshots(run, "123.5")
    out = E.evaluate_run(d, metrics="kid,pr", snapshots="last", n_boot=3, extractor_path=clf_dir,
                         guidance="classifier:1.0", classifier_dir="untrained", **{**SETTING, "n": 20})
    assert [e["metric"] for e in out] == ["kid", "precision", "recall"]
    for e in out:
        assert e["kimg"] == kimgs[-1] and e["n_real"] == 20 and e["n_boot"] == 3
        assert e["guidance"] == "classifier:1" and len(e["guidance_classifier"]) == 16
        lo, hi = e["interval"]
        assert lo <= hi
    assert 0.0 <= out[1]["value"] <= 1.0 and 0.0 <= out[2]["value"] <= 1.0


def test_class_accuracy_metric_counts_hits():
    k, y = 4, np.array([0, 1, 2, 3, 0, 1, 2, 3])
    logits = np.full((8, k), -5.0)
    pred = np.array([0, 1, 2, 0, 0, 3, 2, 3])  # 6 of 8 right
    logits[np.arange(8), pred] = 5.0
    ext = type("X", (), {"name": "toy", "weights_hash": "0" * 16, "num_classes": k})()
    ctx = MetricContext(fake_features=np.zeros((8, 2)), fake_logits=logits, real_features=None,
                        reference=FrechetReference(np.zeros(2), np.eye(2)), n_real=0, extractor=ext, n_boot=0,
                        seed=0, alpha=0.05, options={"labels": y})
    (rec,) = METRICS.get("class_accuracy")(ctx)
    assert rec["value"] == pytest.approx(6 / 8) and rec["chance"] == pytest.approx(0.25) and rec["higher_is_better"]
    ctx.options["labels"] = None
    with pytest.raises(UserError, match="labels"):
        METRICS.get("class_accuracy")(ctx)


def test_class_accuracy_through_compute_metrics(clf_dir):
    ext = load_classifier(clf_dir)
    te = load_dataset("digits", split="test")
    x, y = te.get_batch(torch.arange(len(te)))
    rec = compute_metrics(x, x, ext, metrics=("class_accuracy",), labels=y)["class_accuracy"]
    assert rec["value"] == pytest.approx(ext.info["test_accuracy"])  # real test images: the test accuracy


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_errors_are_one_line(run, clf_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.yaml", "dataset.json"):
        shutil.copy(run / f, bare / f)
    cases = [
        (["evaluate", run, "--metrics", "fid,fidd"], "fidd"),
        (["evaluate", run, "--n", "0"], "--n"),
        (["evaluate", bare, "--extractor-path", clf_dir], "no complete snapshot"),
        (["evaluate", run, "--extractor", "inception", "--snapshots", "last"], "Inception"),
        (["evaluate", run, "--snapshots", "every x"], "every K"),
        (["evaluate", run, "--guidance", "cfg:2", "--extractor-path", clf_dir], "unconditional"),
        (["curves", bare, "--metric", "fid"], "no 'fid' entries"),
        (["sample-size", run, "--metrics", "pr"], "sample-size"),
        (["train-classifier"], "DATASET"),
        (["train-classifier", "digits", "--epochs", "0"], "--epochs"),
    ]
    for argv, needle in cases:
        rc, out, err = _cli(capsys, *argv)
        assert rc == 2, (argv, out, err)
        assert err.startswith("diffatlas: error:") and err.count("\n") == 1, err
        assert needle.lower() in err.lower(), (needle, err)
    assert not (run / "metrics.jsonl").exists()


def test_cli_train_classifier_default_dir_and_noisy(run, cache, tmp_path, capsys):
    rc, out, _ = _cli(capsys, "train-classifier", "digits", "--epochs", "1")
    assert rc == 0 and "test accuracy" in out
    path = cache / "classifiers" / "digits-0"
    assert EC.default_classifier_dir("digits") == path
    ext = load_classifier(path)
    assert ext.num_classes == 10 and ext.info["epochs"] == 1 and 0.0 <= ext.info["test_accuracy"] <= 1.0
    assert str(path) in out
    rc, out, _ = _cli(capsys, "train-classifier", "--noisy", run, "-o", tmp_path / "noisy", "--steps", "3")
    assert rc == 0 and out.count("sigma_hat") >= 8
    assert (tmp_path / "noisy").is_dir()


def test_evaluate_auto_trains_the_evaluation_classifier_once(run, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFATLAS_CACHE", str(tmp_path / "cache"))
    real, trained, said = EC.train_eval_classifier, [], []

    def quick(*a, **k):  # one epoch keeps the test fast; otherwise the real training
        trained.append(1)
        return real(*a, **{**k, "epochs": 1})

    monkeypatch.setattr(EC, "train_eval_classifier", quick)
    d = _copy(run, tmp_path / "run")
    setting = {**SETTING, "log": said.append}
    a = E.evaluate_run(d, metrics=("fid",), snapshots="last", **setting)
    assert trained == [1] and any("training one" in s for s in said)
    assert (tmp_path / "cache" / "classifiers" / "digits-0" / "classifier.json").is_file()
    b = E.evaluate_run(d, metrics=("is",), snapshots="last", **setting)
    assert trained == [1] and a[0]["extractor_hash"] == b[0]["extractor_hash"]


def test_cli_evaluate_curves_and_sample_size(run, clf_dir, evaluated, tmp_path, capsys):
    d, _ = evaluated
    rc, out, _ = _cli(capsys, "evaluate", d, "--metrics", "fid", "--sampler", "ddim", "--steps", "3", "--n", "24",
                      "--extractor-path", clf_dir, "--device", "cpu", "--progress", "none")
    assert rc == 0 and "entries in" in out  # already evaluated: printed, not recomputed
    png = tmp_path / "fid.png"
    rc, out, _ = _cli(capsys, "curves", d, "--metric", "fid", "--out", png)
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = E.sample_size_run(run, metrics="fid,is", ns=(10, 20, 40), n_boot=2, sampler="ddim", steps=3,
                            extractor_path=clf_dir, device="cpu", out=tmp_path / "ss.png", log=None)
    by = {(r["metric"], r["n"]): r for r in res["rows"]}
    assert {m for m, _ in by} == {"fid", "is", "fid_infinity"}
    assert by[("fid", 40)]["rel_change"] == 0.0 and by[("is", 40)]["rel_change"] == 0.0
    assert "sensitive to the number of samples" in res["verdict"]
    assert Path(res["png"]).read_bytes()[:4] == b"\x89PNG" and Path(res["md"]).is_file()
    assert json.loads(Path(res["json"]).read_text())["ns"] == [10, 20, 40]


def test_bpd_of_an_image_run(run, tmp_path):
    """bpd on 8-bit images: uniform dequantisation (+7 bits), Hutchinson above 16 dimensions, test split."""
    d = _copy(run, tmp_path / "run")
    (e,) = E.evaluate_run(d, metrics=("bpd",), n=8, snapshots="last", likelihood={"solver": "heun", "steps": 4},
                          device="cpu", log=None)
    assert e["options"]["dequantization"] == "uniform" and e["discretization_bits"] == 7.0
    assert e["options"]["divergence"] == "hutchinson" and e["vjps_per_nfe"] == 1 and e["dims"] == 64
    assert (e["sampler"], e["grid"], e["steps"], e["nfe"]) == ("heun", "logsnr", 4, 6)
    assert e["n_real"] == 8 and e["reference_split"] == "test" and e["extractor"] is None and np.isfinite(e["value"])


def test_default_guidance_classifier_is_trained_once_per_dataset_and_process(run, clf_dir, tmp_path, monkeypatch):
    """Runs with the same data and process share one noise-aware classifier (it depends on nothing
    else): the second run's guided evaluation loads the first one's instead of training its own,
    and both entries name the same classifier; another process gets its own."""
    import diffatlas.guidance as G

    calls = []

    def quick(run_dir, out_dir, **kw):
        calls.append(Path(out_dir).parent)
        return real(run_dir, out_dir, **{**kw, "steps": 5, "batch": 16})

    real = G.train_noisy_classifier_for
    monkeypatch.setattr(G, "train_noisy_classifier_for", quick)
    a, b = _copy(run, tmp_path / "a"), _copy(run, tmp_path / "b")
    kw = {**SETTING, "n": 8, "metrics": "fid", "snapshots": "last", "extractor_path": clf_dir, "guidance": "classifier:1"}
    ea, eb = E.evaluate_run(a, **kw), E.evaluate_run(b, **kw)
    assert len(calls) == 1 and ea[0]["guidance_classifier"] == eb[0]["guidance_classifier"]
    shared = E.default_noisy_classifier_dir(read_run_config(a))
    assert shared.is_dir() and calls[0] == shared.parent and not (a / E.NOISY_CLASSIFIER_DIR).exists()
    assert not [p for p in shared.parent.iterdir() if p.name.startswith(".tmp-")]
    cfg = read_run_config(a)
    import dataclasses
    other = dataclasses.replace(cfg, dynamics=dataclasses.replace(cfg.dynamics, name="ncsn", options={}))
    assert E.default_noisy_classifier_dir(other) != shared


def test_evaluation_classifier_weights_do_not_depend_on_the_callers_threads(tmp_path):
    """A study worker trains the classifier at cores // workers threads, `diffatlas train-classifier` at
    all cores: the same weights either way (training runs at TRAIN_THREADS), and the caller's thread
    count is restored."""
    before = torch.get_num_threads()
    hashes = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            _, info, _ = EC.train_eval_classifier("digits", epochs=1, out_dir=tmp_path / f"t{t}", device="cpu", log=None)
            assert torch.get_num_threads() == t and info["threads"] == EC.TRAIN_THREADS
            hashes.append(info["weights_hash"])
    finally:
        torch.set_num_threads(before)
    assert hashes[0] == hashes[1]
