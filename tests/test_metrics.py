"""Metrics: statistics against reference formulas, the digits classifier, caches and error paths."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from diffatlas.errors import UserError
from diffatlas.metrics import (
    EXTRACTORS,
    METRICS,
    FrechetReference,
    RefStats,
    StreamingMoments,
    bootstrap_ci,
    compute_metrics,
    fid_infinity,
    frechet_distance,
    inception_score,
    kid,
    load_classifier,
    precision_recall,
    reference_stats,
    save_classifier,
    train_classifier,
)
from diffatlas.metrics import extractors as ex
from diffatlas.metrics import knn_manifold as knn
from diffatlas.metrics import stats as st
from diffatlas.metrics.reference import RefKey, load_reference_stats
from diffatlas.metrics.sample_size import plot_sample_size, sample_size_table, sensitivity_summary
from diffatlas.registry import UnknownNameError


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def digits_split(seed: int = 0):
    """scikit-learn's 8x8 digits in [-1, 1], shaped (N, 1, 8, 8); a seeded 1437/360 train/test split.
    (The dataset's own split is used by test_digits_dataset_split_reaches_97_percent.)"""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    p = torch.randperm(len(x), generator=g)
    tr, te = p[:1437], p[1437:]
    return x[tr], y[tr], x[te], y[te]


def scipy_fid(mu1, s1, mu2, s2):
    """The textbook formula with scipy.linalg.sqrtm, as in the reference FID code."""
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_features(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a * scale + shift


@pytest.fixture(scope="session")
def digits():
    return digits_split()


@pytest.fixture(scope="session")
def classifier(digits):
    x_tr, y_tr, x_te, y_te = digits
    return train_classifier(x_tr, y_tr, x_te, y_te, epochs=12, batch_size=64, lr=2e-3, seed=0, dataset="digits")


# ------------------------------------------------------------------------------------------------
# streaming moments
# ------------------------------------------------------------------------------------------------
def test_streaming_moments_equal_batch_numpy():
    x = random_features(1000, 12, 0, shift=1e4)  # large mean: cancellation would show here
    m = StreamingMoments()
    for lo, hi in [(0, 1), (1, 64), (64, 500), (500, 501), (501, 1000)]:
        m.update(torch.from_numpy(x[lo:hi]))
    assert m.n == 1000
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    # merging two accumulators == one pass
    a, b = StreamingMoments().update(x[:300]), StreamingMoments().update(x[300:])
    a.merge(b)
    np.testing.assert_allclose(a.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(UserError):
        m.update(np.zeros((3, 5)))
    with pytest.raises(UserError):
        _ = StreamingMoments().update(np.zeros((1, 3))).cov


# ------------------------------------------------------------------------------------------------
# Frechet distance
# ------------------------------------------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero():
    x = random_features(400, 32, 1)
    mu, cov = st.mean_cov(x)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6
    assert abs(frechet_distance(mu, cov, mu, cov, method="sqrtm")) < 1e-6


def test_fid_matches_scipy_sqrtm_and_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    mu1, s1 = st.mean_cov(random_features(500, 24, 2))
    mu2, s2 = st.mean_cov(random_features(600, 24, 3, shift=0.3, scale=1.5))
    ref = scipy_fid(mu1, s1, mu2, s2)
    assert ref > 1.0
    for method in ("eigh", "sqrtm"):
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(ref, rel=1e-6)
    # symmetric in its two arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ref, rel=1e-6)
    t = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
    assert float(_compute_fid(*t)) == pytest.approx(ref, rel=1e-6)


def test_fid_gaussians_analytic():
    # diagonal covariances: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    exact = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-12)
    # a singular (rank-deficient) covariance is handled
    assert frechet_distance(mu1, np.diag([1.0, 0.0, 0.0]), mu1, np.diag([4.0, 0.0, 0.0])) == pytest.approx(1.0)
    with pytest.raises(UserError):
        FrechetReference(mu1, np.diag(a)).distance(np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------------------------------
# Inception score
# ------------------------------------------------------------------------------------------------
def reference_is(logits: np.ndarray, splits: int):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0)
        kl = [sum(pi * math.log(pi / qi) for pi, qi in zip(row, py)) for row in part]
        scores.append(math.exp(sum(kl) / len(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_reference_formula():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(103, 7)) * 3
    mean, std = inception_score(torch.from_numpy(logits), splits=5)
    rmean, rstd = reference_is(logits, 5)
    assert mean == pytest.approx(rmean, rel=1e-10) and std == pytest.approx(rstd, rel=1e-8)
    # probabilities give the same answer as logits
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert inception_score(p, splits=5, from_logits=False)[0] == pytest.approx(rmean, rel=1e-10)
    # extremes: confident and balanced over K classes -> K; every sample alike -> 1
    onehot = np.eye(7)[np.arange(70) % 7] * 60.0
    assert inception_score(onehot, splits=2)[0] == pytest.approx(7.0, rel=1e-6)
    assert inception_score(np.tile(logits[:1], (50, 1)), splits=1)[0] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(UserError):
        inception_score(logits, splits=0)


# ------------------------------------------------------------------------------------------------
# KID
# ------------------------------------------------------------------------------------------------
def reference_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_matches_reference_formula():
    x = random_features(15, 5, 5)
    y = random_features(15, 5, 6, shift=0.5)
    ref = reference_mmd2(x, y)
    assert st.polynomial_mmd2_unbiased(x, y) == pytest.approx(ref, rel=1e-10)
    # subsets as large as the sets are permutations of them: every subset gives the same value
    mean, stderr = kid(x, y, subsets=4, subset_size=100, seed=0)
    assert mean == pytest.approx(ref, rel=1e-10) and stderr == pytest.approx(0.0, abs=1e-12)
    # same distribution -> about 0; shifted -> clearly positive
    mix = np.random.default_rng(7).normal(size=(8, 8)) / np.sqrt(8)
    a = np.random.default_rng(70).normal(size=(800, 8)) @ mix
    b = np.random.default_rng(71).normal(size=(800, 8)) @ mix
    same, se = kid(a, b, subsets=10, subset_size=200, seed=1)
    far, _ = kid(a, a + 1.0, subsets=10, subset_size=200, seed=1)
    assert abs(same) < 5 * se + 1e-3 and far > 50 * max(se, 1e-3)


# ------------------------------------------------------------------------------------------------
# precision / recall
# ------------------------------------------------------------------------------------------------
def test_precision_recall_geometric_cases(monkeypatch):
    real = random_features(200, 4, 8)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real + 100.0, real) == (0.0, 0.0)
    # half of the fakes are real points, half are far away: precision is exactly 1/2
    fake = np.concatenate([real[:100], real[100:] + 100.0])
    p, r = precision_recall(fake, real)
    assert p == 0.5 and 0.0 < r < 1.0
    # chunked evaluation (tiny blocks) gives the same numbers; the block size is read where the blocks are cut
    monkeypatch.setattr(knn, "_BLOCK_ELEMENTS", 64)
    assert precision_recall(fake, real) == (p, r)


def test_knn_radii_match_brute_force():
    x = random_features(50, 3, 9)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    expect = np.sort(d, axis=1)[:, 3]  # column 0 is the point itself
    np.testing.assert_allclose(st.knn_radii(x, 3).numpy(), expect, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# FID-infinity and bootstrap
# ------------------------------------------------------------------------------------------------
def test_extrapolation_recovers_intercept():
    ns = [100, 200, 400, 800]
    a, b = st.extrapolate_to_infinity(ns, [3.0 + 50.0 / n for n in ns])
    assert a == pytest.approx(3.0, rel=1e-12) and b == pytest.approx(50.0, rel=1e-10)


def test_fid_infinity_removes_small_sample_bias():
    d = 8
    ref = FrechetReference(np.zeros(d), np.eye(d))  # the exact distribution of the fakes
    fake = torch.randn(4000, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = fid_infinity(fake, ref, num_points=8, min_n=200, seed=0)
    assert res.values[0] > 0.05  # FID_N is biased upwards at small N ...
    assert abs(res.value) < 0.25 * res.values[0]  # ... FID_inf much less
    assert res.slope > 0


def test_bootstrap_interval_of_a_mean():
    x = np.random.default_rng(10).normal(size=(2000, 1))
    b = bootstrap_ci(lambda a: float(a.mean()), x, n_boot=400, seed=0)
    half = 1.96 * x.std() / math.sqrt(len(x))
    assert b.low < b.value < b.high
    assert (b.high - b.low) / 2 == pytest.approx(half, rel=0.2)
    b2 = bootstrap_ci(lambda a: float(a.mean()), x, n_boot=400, seed=0)
    assert (b2.low, b2.high) == (b.low, b.high)  # seeded
    with pytest.raises(UserError):
        bootstrap_ci(lambda a: 0.0, x, n_boot=0)


# ------------------------------------------------------------------------------------------------
# classifier extractor on digits
# ------------------------------------------------------------------------------------------------
def test_random_shift_is_a_translation():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    out = ex.random_shift(x, 1, torch.Generator().manual_seed(3))
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    for i in range(2):
        cands = [pad[i, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], c) for c in cands)


def test_digits_classifier_accuracy(classifier):
    ext, info = classifier
    assert info["test_accuracy"] >= 0.97
    assert ext.feature_dim == 128 and ext.num_classes == 10 and len(ext.weights_hash) == 16
    assert ext.info["test_accuracy"] == info["test_accuracy"]


def test_extractor_pinned_to_eval_mode(classifier, digits):
    ext, _ = classifier
    x = digits[2][:64]
    ext.train()
    assert not ext.training and not ext.net.training
    ext.net.train()  # even a child flipped directly is put back
    with torch.enable_grad():
        f1 = ext.features(x)
    f2 = ext.features(x)
    assert not ext.net.training and not f1.requires_grad
    assert torch.equal(f1, f2) and f1.shape == (64, 128) and f1.dtype == torch.float32
    assert ext.logits(x).shape == (64, 10)
    with pytest.raises(UserError):
        ext.features(torch.zeros(2, 1, 16, 16))
    with pytest.raises(UserError):
        ext.features(torch.zeros(2, 8, 8))


def test_classifier_save_load_without_pickle(classifier, digits, tmp_path, monkeypatch):
    ext, info = classifier
    save_classifier(tmp_path / "clf", ext, info)
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert meta["weights_hash"] == ext.weights_hash and meta["info"]["test_accuracy"] == info["test_accuracy"]
    assert meta["kwargs"]["image_size"] == 8 and meta["dataset"] == "digits"

    def no_unpickling(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = EXTRACTORS.get("classifier")(tmp_path / "clf")
    monkeypatch.undo()
    assert loaded.weights_hash == ext.weights_hash
    x = digits[2][:32]
    assert torch.equal(loaded.features(x), ext.features(x))

    meta["weights_hash"] = "0" * 16
    (tmp_path / "clf" / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="hash"):
        load_classifier(tmp_path / "clf")
    with pytest.raises(UserError, match="no classifier"):
        load_classifier(tmp_path / "nothing-here")


def test_frechet_halves_of_real_digits_vs_noise(classifier, digits):
    ext, _ = classifier
    x = torch.cat([digits[0], digits[2]])
    half = x.shape[0] // 2
    noise = torch.rand(half, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f_a, f_b, f_n = ext.features(x[:half]), ext.features(x[half : 2 * half]), ext.features(noise)
    ref = FrechetReference(*st.mean_cov(f_a))
    real_real, real_noise = ref.distance_features(f_b), ref.distance_features(f_n)
    assert real_real < 0.05 * real_noise


def test_inception_score_of_real_test_digits(classifier, digits):
    ext, _ = classifier
    mean, _ = inception_score(ext.logits(digits[2]), splits=1)
    assert 8.0 < mean <= 10.0


# ------------------------------------------------------------------------------------------------
# reference statistics cache
# ------------------------------------------------------------------------------------------------
def test_reference_stats_cache(classifier, digits, tmp_path, monkeypatch):
    ext, _ = classifier
    x = digits[0]
    stats = reference_stats(x, ext, "digits", "train", n=1000, cache_dir=tmp_path)
    assert stats.path is not None and stats.path.exists() and stats.n == 1000
    mu, cov = st.mean_cov(ext.features(x[:1000]))
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.cov, cov, rtol=1e-9, atol=1e-12)
    assert not list(tmp_path.glob("*.tmp"))

    # a second call with the same key reads the file: the extractor is not run
    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(ext, "features", fail)
    again = reference_stats(x, ext, "digits", "train", n=1000, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.cov, stats.cov)
    monkeypatch.undo()
    # a different key misses; a data set object with get_batch works too
    assert load_reference_stats(RefKey("digits", "train", "classifier", ext.weights_hash, 999), tmp_path) is None

    class Source:
        def __len__(self):
            return len(x)

        def get_batch(self, idx):
            return x[idx], None

    other = reference_stats(Source(), ext, "digits", "train", n=999, cache_dir=tmp_path, batch_size=100)
    assert other.n == 999 and len(list(tmp_path.glob("*.npz"))) == 2
    with pytest.raises(UserError):
        reference_stats(x, ext, "digits", "train", n=10**6, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# compute_metrics and the sample-size study
# ------------------------------------------------------------------------------------------------
def test_compute_metrics_records(classifier, digits, tmp_path):
    ext, _ = classifier
    x_tr, _, x_te, _ = digits
    out = compute_metrics(x_te, x_tr, ext, n_boot=5, seed=0, kid_subsets=5, kid_subset_size=200)
    assert set(out) == {"fid", "is", "kid", "precision", "recall"}
    for rec in out.values():
        assert rec["extractor"] == "classifier" and rec["weights_hash"] == ext.weights_hash
        assert rec["n"] == 360 and rec["n_real"] == 1437 and rec["what"]
        lo, hi = rec["interval"]
        assert lo <= hi and rec["confidence"] == pytest.approx(0.95)
    assert out["is"]["value"] > 7 and out["precision"]["value"] > 0.8 and out["recall"]["value"] > 0.8
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    bad = compute_metrics(noise, x_tr, ext, metrics=("fid", "kid"), kid_subsets=5, kid_subset_size=200)
    assert bad["fid"]["value"] > 10 * out["fid"]["value"] and bad["kid"]["value"] > 10 * out["kid"]["value"]
    assert bad["fid"]["interval"] is None

    stats = reference_stats(x_tr, ext, "digits", "train", cache_dir=tmp_path)
    from_stats = compute_metrics(x_te, stats, ext, metrics=("fid",))
    assert from_stats["fid"]["value"] == pytest.approx(out["fid"]["value"], rel=1e-5)  # float32 batching
    with pytest.raises(UserError, match="real images"):
        compute_metrics(x_te, stats, ext, metrics=("fid", "kid"))
    with pytest.raises(UnknownNameError):
        compute_metrics(x_te, stats, ext, metrics=("fidd",))
    wrong = RefStats(RefKey("digits", "train", "classifier", "0" * 16, stats.n), stats.mu, stats.cov, stats.n)
    with pytest.raises(UserError, match="computed with"):
        compute_metrics(x_te, wrong, ext, metrics=("fid",))
    assert set(METRICS.names()) == {"fid", "is", "kid", "pr", "class_accuracy", "bpd"}


def test_sample_size_table_and_plot(classifier, digits, tmp_path):
    ext, _ = classifier
    x_tr, _, x_te, _ = digits
    ref = FrechetReference(*st.mean_cov(ext.features(x_te)))
    f, lg = ext.features_and_logits(x_tr)  # 1437 "generated" samples, well above D = 128
    rows = sample_size_table(f, lg, ref, ns=[200, 400, 800, 1437], n_boot=3, seed=0)
    by = {(r["metric"], r["n"]): r for r in rows}
    assert {m for m, _ in by} == {"fid", "is", "fid_infinity"}
    assert by[("fid", 1437)]["rel_change"] == 0.0 and by[("is", 1437)]["rel_change"] == 0.0
    assert by[("fid", 200)]["value"] > by[("fid", 1437)]["value"]  # FID_N is biased upwards at small N
    assert by[("fid", 1437)]["value"] == pytest.approx(ref.distance_features(f), rel=1e-6)  # row order
    assert by[("fid_infinity", None)]["value"] < by[("fid", 1437)]["value"]
    assert all(r["low"] <= r["high"] for r in rows if r["low"] is not None)
    summary = sensitivity_summary(rows)
    assert set(summary) == {"fid", "is"} and all(v >= 0 for v in summary.values())
    out = plot_sample_size(rows, tmp_path / "n.png")
    assert out == rows and (tmp_path / "n.png").stat().st_size > 1000
    with pytest.raises(UserError):
        sample_size_table(f, lg, ref, ns=[5, 10**5])


def test_digits_dataset_split_reaches_97_percent():
    """The evaluation classifier on diffatlas's own digits train/test split (as `evaluate` trains it)."""
    from diffatlas.data import load_dataset

    tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    x_tr, y_tr = tr.get_batch(torch.arange(len(tr)))
    x_te, y_te = te.get_batch(torch.arange(len(te)))
    _, info = train_classifier(x_tr, y_tr, x_te, y_te, epochs=12, batch_size=64, lr=2e-3, seed=0, dataset="digits")
    assert info["test_accuracy"] >= 0.97
