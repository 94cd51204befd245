"""Sample-quality metrics: feature extractors, float64 statistics, distances, cached references.

The one entry point evaluation code calls is :func:`compute_metrics`:

    ext = load_classifier("runs/classifiers/digits")
    ref = reference_stats(real_x, ext, "digits", "train")        # cached (mean, cov, n)
    compute_metrics(fake_x, real_x, ext, metrics=("fid", "is", "kid", "pr"), n_boot=100)

Every returned number is a record saying what it is: metric, value, interval, sample counts,
extractor name and weights hash, and which direction is better.

Each metric is a :class:`~.spec.Metric` in :data:`METRICS` (its direction, the record names it
yields, what it reads and what it is evidence of); :func:`~.spec.register_metric` adds one. One
metric needs the model rather than features: ``bpd`` (:mod:`.likelihood`, negative log-likelihood
through the probability-flow ODE), registered with ``needs_model``; it takes (denoiser, data, labels)
and :func:`diffatlas.evaluation.evaluate_run` calls it per snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from ..errors import UserError
from .extractors import (
    EXTRACTORS,
    ClassifierExtractor,
    FeatureExtractor,
    InceptionExtractor,
    load_classifier,
    save_classifier,
    train_classifier,
)
from .likelihood import evaluate_bpd
from .spec import METRICS, Metric, higher_is_better, register_metric
from .reference import RefKey, RefStats, load_reference_stats, reference_stats, save_reference_stats
from .stats import (
    FrechetReference,
    StreamingMoments,
    bootstrap_ci,
    fid_infinity,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
    precision_recall_indicators,
)

__all__ = [
    "EXTRACTORS", "METRICS", "ClassifierExtractor", "FeatureExtractor", "FrechetReference",
    "InceptionExtractor", "Metric", "RefKey", "RefStats", "StreamingMoments", "bootstrap_ci", "compute_metrics",
    "fid_infinity", "frechet_distance", "inception_score", "kid", "load_classifier", "load_reference_stats",
    "precision_recall", "reference_stats", "register_metric", "save_classifier", "save_reference_stats", "train_classifier",
]


@dataclass
class MetricContext:
    """What a metric function gets: fake features/logits, the real side, and the settings."""

    fake_features: np.ndarray  # (N, D) float64
    fake_logits: np.ndarray  # (N, K) float64
    real_features: np.ndarray | None  # (M, D) float64, None when only statistics are known
    reference: FrechetReference
    n_real: int
    extractor: FeatureExtractor
    n_boot: int
    seed: int
    alpha: float
    options: dict[str, Any] = field(default_factory=dict)

    def record(self, metric: str, value: float, what: str, *, boot: Any = None, **extra: Any) -> dict[str, Any]:
        """One record of `metric` (a name its registry entry yields; the direction comes from there),
        with the sample counts and extractor of this context and `boot`'s interval when given."""
        rec: dict[str, Any] = {
            "metric": metric,
            "value": float(value),
            "interval": None,
            "confidence": None,
            "n": int(self.fake_features.shape[0]),
            "n_real": int(self.n_real),
            "extractor": self.extractor.name,
            "weights_hash": self.extractor.weights_hash,
            "higher_is_better": higher_is_better(metric),
            "what": what,
        }
        if boot is not None:
            rec["interval"] = [boot.low, boot.high]
            rec["confidence"] = 1.0 - boot.alpha
            rec["n_boot"] = boot.n_boot
        rec.update(extra)
        return rec

    def need_real_features(self, metric: str) -> np.ndarray:
        if self.real_features is None:
            raise UserError(
                f"metric {metric!r} needs real images, not only cached statistics; pass real images or drop it"
            )
        return self.real_features


MetricFn = Callable[[MetricContext], list[dict[str, Any]]]


@register_metric("fid", "Frechet distance between Gaussian fits of real and fake features (lower is better)",
                 higher_is_better=False, role="quality")
def _fid(ctx: MetricContext) -> list[dict[str, Any]]:
    value = ctx.reference.distance_features(ctx.fake_features)
    boot = None
    if ctx.n_boot:
        boot = bootstrap_ci(ctx.reference.distance_features, ctx.fake_features,
                            n_boot=ctx.n_boot, seed=ctx.seed, alpha=ctx.alpha)
    return [ctx.record("fid", value, "Frechet distance of fake vs real features (Heusel et al. 2017)",
                       boot=boot, interval_resamples="fake")]


@register_metric("is", "Inception-style score exp(E KL(p(y|x) || p(y))) of the extractor's classes (higher is better)",
                 higher_is_better=True, role="quality")
def _is(ctx: MetricContext) -> list[dict[str, Any]]:
    splits = min(int(ctx.options.get("is_splits", 10)), ctx.fake_logits.shape[0])
    mean, std = inception_score(ctx.fake_logits, splits=splits)
    boot = None
    if ctx.n_boot:
        boot = bootstrap_ci(lambda l: inception_score(l, splits)[0], ctx.fake_logits,
                            n_boot=ctx.n_boot, seed=ctx.seed, alpha=ctx.alpha)
    return [ctx.record("is", mean, f"Inception score over {ctx.extractor.num_classes} classes (Salimans et al. 2016);"
                       " std is over splits", boot=boot, std=std, splits=splits)]


@register_metric("kid", "kernel distance, unbiased MMD^2 with a cubic polynomial kernel (lower is better)",
                 higher_is_better=False, role="quality", needs_real_features=True)
def _kid(ctx: MetricContext) -> list[dict[str, Any]]:
    real = ctx.need_real_features("kid")
    subsets = int(ctx.options.get("kid_subsets", 100))
    size = int(ctx.options.get("kid_subset_size", 1000))
    mean, stderr = kid(ctx.fake_features, real, subsets=subsets, subset_size=size, seed=ctx.seed)
    boot = None
    if ctx.n_boot:
        boot = bootstrap_ci(lambda f: kid(f, real, subsets=subsets, subset_size=size, seed=ctx.seed)[0],
                            ctx.fake_features, n_boot=ctx.n_boot, seed=ctx.seed, alpha=ctx.alpha)
    m = min(size, ctx.fake_features.shape[0], real.shape[0])
    return [ctx.record("kid", mean, "kernel distance, unbiased MMD^2 (Binkowski et al. 2018); stderr over subsets",
                       boot=boot, stderr=stderr, subsets=subsets, subset_size=m, interval_resamples="fake")]


@register_metric("pr", "precision and recall with k-NN manifolds, k=3 (higher is better)", higher_is_better=True,
                 produces=("precision", "recall"), role="coverage", needs_real_features=True)
def _pr(ctx: MetricContext) -> list[dict[str, Any]]:
    real = ctx.need_real_features("pr")
    k = int(ctx.options.get("pr_k", 3))
    in_real, in_fake = precision_recall_indicators(ctx.fake_features, real, k)
    out = []
    for name, ind, what in (
        ("precision", in_real, "fraction of fake samples inside the real k-NN manifold (Kynkaanniemi et al. 2019)"),
        ("recall", in_fake, "fraction of real samples inside the fake k-NN manifold (Kynkaanniemi et al. 2019)"),
    ):
        boot = None
        if ctx.n_boot:
            # resample the per-sample indicators; the manifolds are held fixed (resampling points with
            # replacement would shrink k-NN radii through duplicates)
            boot = bootstrap_ci(lambda v: float(v.mean()), ind.astype(np.float64),
                                n_boot=ctx.n_boot, seed=ctx.seed, alpha=ctx.alpha)
        out.append(ctx.record(name, float(ind.mean()), what, boot=boot, k=k,
                              interval_resamples="indicators"))
    return out


@register_metric("class_accuracy", "fraction of samples the extractor classifies as their requested class "
                                  "(class-conditional or guided sampling; higher is better)",
                 higher_is_better=True, role="class", needs_labels=True)
def _class_accuracy(ctx: MetricContext) -> list[dict[str, Any]]:
    # options["labels"]: (N,) the class each sample was asked for (e.g. labels cycling 0..K-1);
    # accuracy = mean_i [argmax_k logits_ik == y_i], the "class accuracy" of guided sampling
    # (Dhariwal & Nichol 2021, sec. 4; Ho & Salimans 2022 report the same quantity)
    labels = ctx.options.get("labels")
    if labels is None:
        raise UserError("metric 'class_accuracy' needs the class each sample was asked for (labels); "
                        "it applies to class-conditional or guided sampling only")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != ctx.fake_logits.shape[0]:
        raise UserError(f"class_accuracy: {y.shape[0]} labels for {ctx.fake_logits.shape[0]} samples")
    k = ctx.fake_logits.shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise UserError(f"class_accuracy: labels must lie in 0..{k - 1}, the extractor's classes")
    hit = (ctx.fake_logits.argmax(axis=1) == y).astype(np.float64)  # (N,) indicators
    boot = None
    if ctx.n_boot:
        boot = bootstrap_ci(lambda v: float(v.mean()), hit, n_boot=ctx.n_boot, seed=ctx.seed, alpha=ctx.alpha)
    return [ctx.record("class_accuracy", float(hit.mean()),
                       f"fraction of samples the {ctx.extractor.name} extractor assigns to their requested class"
                       f" (chance {1.0 / k:.3g})", boot=boot, chance=1.0 / k, interval_resamples="indicators")]


@register_metric("bpd", "negative log-likelihood in bits/dim through the probability-flow ODE (lower is better; "
                        "needs the model, not features)", higher_is_better=False, role="likelihood", needs_model=True)
def _bpd(denoiser: Any, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """A model metric: evaluated on data x (n, *shape) by the denoiser itself (likelihood.evaluate_bpd)."""
    return [evaluate_bpd(denoiser, x, labels, **kwargs)]


def compute_metrics(
    fake_x: Tensor,
    real: RefStats | Tensor,
    extractor: FeatureExtractor,
    metrics: Sequence[str] = ("fid", "is", "kid", "pr"),
    n_boot: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    labels: Tensor | np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate generated images against real data with one extractor.

    Args:
        fake_x: generated images (N, C, H, W) in [-1, 1].
        real: cached reference statistics (enough for "fid" and "is"), or real images (M, C, H, W)
            in [-1, 1] (needed for "kid" and "pr").
        extractor: a :class:`FeatureExtractor`; with RefStats its name and weights hash must match the key.
        metrics: names from METRICS: "fid", "is", "kid", "pr" ("pr" yields "precision" and "recall"),
            "class_accuracy" (needs `labels`).
        n_boot: bootstrap resamples for percentile intervals (0: no intervals).
        seed: seeds the bootstrap and the KID subsets.
        alpha: intervals cover 1 - alpha.
        labels: (N,) the class each generated image was asked for ("class_accuracy" needs them).
    Returns:
        {name: record}; each record has metric, value, interval ([low, high] or None), confidence,
        n, n_real, extractor, weights_hash, higher_is_better, what, and metric-specific fields
        (std and splits for IS, stderr/subsets/subset_size for KID, k for precision/recall).
    """
    names = list(dict.fromkeys(metrics))
    fns = [METRICS.get(m) for m in names]  # unknown names fail before any work
    model_metrics = [n for n, fn in zip(names, fns) if fn.needs_model]
    if model_metrics:
        raise UserError(f"metrics {model_metrics} need the model, not image features: use `diffatlas evaluate` or "
                        "diffatlas.metrics.likelihood.evaluate_bpd")
    if n_boot < 0:
        raise UserError(f"n_boot must be >= 0, got {n_boot}")
    if isinstance(real, RefStats):
        needing = [n for n, fn in zip(names, fns) if fn.needs_real_features]
        if needing:
            raise UserError(f"metrics {needing} need real images, not only cached statistics; pass real images")
    feats, logits = extractor.features_and_logits(fake_x)
    if feats.shape[0] < 2:
        raise UserError(f"metrics need at least 2 generated images, got {feats.shape[0]}")
    real_feats: np.ndarray | None = None
    if isinstance(real, RefStats):
        if (real.key.extractor, real.key.weights_hash) != (extractor.name, extractor.weights_hash):
            raise UserError(
                f"reference statistics were computed with {real.key.extractor}/{real.key.weights_hash},"
                f" not {extractor.name}/{extractor.weights_hash}"
            )
        reference, n_real = real.frechet(), real.n
    elif isinstance(real, Tensor):
        real_feats = extractor.features(real).double().numpy()
        m = StreamingMoments().update(real_feats)
        reference, n_real = FrechetReference(m.mean, m.cov), m.n
    else:
        raise UserError(f"real must be RefStats or an image tensor (M, C, H, W), got {type(real).__name__}")
    ctx = MetricContext(
        fake_features=feats.double().numpy(), fake_logits=logits.double().numpy(), real_features=real_feats,
        reference=reference, n_real=n_real, extractor=extractor, n_boot=n_boot, seed=seed, alpha=alpha,
        options={"is_splits": is_splits, "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "pr_k": pr_k,
                 "labels": None if labels is None else np.asarray(labels)},
    )
    out: dict[str, dict[str, Any]] = {}
    for fn in fns:
        for rec in fn(ctx):
            out[rec["metric"]] = rec
    return out
