"""How metrics depend on the number of samples N: "is IS less sensitive to N than FID?".

FID is biased in N: FID_N = FID_inf + b / N + o(1/N) (Chong & Forsyth 2020, sec. 3.1), so two models
compared at different N (or at small N) can swap order.  The paper behind this project (arXiv 2402.13369)
reports that IS is less sensitive to N than FID.  :func:`sample_size_table` measures each metric on
nested random subsets of one set of generated samples, with bootstrap intervals, and the relative
change with respect to the largest N; :func:`plot_sample_size` draws it; FID-infinity is added as its
own row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .stats import FrechetReference, as_float64, bootstrap_ci, fid_infinity, inception_score, kid


def sample_size_table(
    fake_features: Tensor | np.ndarray,
    fake_logits: Tensor | np.ndarray,
    reference: FrechetReference,
    ns: Sequence[int],
    real_features: Tensor | np.ndarray | None = None,
    n_boot: int = 20,
    seed: int = 0,
    alpha: float = 0.05,
    is_splits: int = 10,
    kid_subsets: int = 20,
    kid_subset_size: int = 1000,
) -> list[dict[str, Any]]:
    """FID, IS (and KID when real features are given) at each sample count in ns.

    The subsets are nested prefixes of one random permutation (seeded), so the curves vary only by N.
    Each row: metric, n, value, low, high (percentile bootstrap of the fake side, None if n_boot = 0),
    rel_change = (value - value at the largest n) / |value at the largest n|, and rel_width =
    (high - low) / |value|.  A last row "fid_infinity" holds the extrapolated FID (n = None), fitted on ns.

    Args:
        fake_features: (N, D) features of generated samples; fake_logits: (N, K) their logits.
        reference: the real side of the Frechet distance.
        ns: sample counts, each in [max(2, is_splits), N].  The 1/N law behind FID-infinity holds for
            N well above the feature dimension D (Chong & Forsyth use 5k..50k for D = 2048); with
            N <= D the covariance is rank-deficient and FID_N is not linear in 1/N.
    """
    f = as_float64(fake_features, "fake features")
    lg = as_float64(fake_logits, "fake logits")
    n_all = f.shape[0]
    if lg.shape[0] != n_all:
        raise UserError(f"{n_all} feature rows but {lg.shape[0]} logit rows")
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < max(2, is_splits) or ns[-1] > n_all:
        raise UserError(f"sample counts must lie in [{max(2, is_splits)}, {n_all}], got {ns}")
    real = as_float64(real_features, "real features") if real_features is not None else None
    g = torch.Generator()
    g.manual_seed(seed)
    perm = torch.randperm(n_all, generator=g).numpy()

    metrics: dict[str, Any] = {
        "fid": lambda x, l: reference.distance_features(x),
        "is": lambda x, l: inception_score(l, is_splits)[0],
    }
    if real is not None:
        metrics["kid"] = lambda x, l: kid(x, real, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)[0]

    rows: list[dict[str, Any]] = []
    for name, fn in metrics.items():
        these = []
        for n in ns:
            idx = perm[:n]
            if n_boot:
                b = bootstrap_ci(fn, f[idx], lg[idx], n_boot=n_boot, seed=seed, alpha=alpha, paired=True)
                value, low, high = b.value, b.low, b.high
            else:
                value, low, high = float(fn(f[idx], lg[idx])), None, None
            these.append({"metric": name, "n": n, "value": value, "low": low, "high": high})
        last = these[-1]["value"]
        for r in these:
            r["rel_change"] = (r["value"] - last) / abs(last) if last != 0 else math.nan
            r["rel_width"] = (
                (r["high"] - r["low"]) / abs(r["value"]) if r["low"] is not None and r["value"] != 0 else None
            )
        rows.extend(these)
    if len(ns) >= 2:
        ext = fid_infinity(f, reference, ns=ns, seed=seed)
        rows.append({"metric": "fid_infinity", "n": None, "value": ext.value, "low": None, "high": None,
                     "rel_change": None, "rel_width": None, "slope": ext.slope})
    return rows


def sensitivity_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean |relative change| against the largest N, per metric: smaller = less sensitive to N."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r.get("rel_change") is not None and not math.isnan(r["rel_change"]):
            out.setdefault(r["metric"], []).append(abs(r["rel_change"]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def plot_sample_size(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> list[dict[str, Any]]:
    """Plot |relative change| vs N (left) and relative interval width vs N (right) for each metric.

    Writes a PNG (matplotlib, Agg backend, imported only here) and returns the rows unchanged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("n") is not None:
            per.setdefault(r["metric"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rs in per.items():
        ns = [r["n"] for r in rs]
        axes[0].plot(ns, [abs(r["rel_change"]) for r in rs], marker="o", label=name.upper())
        widths = [r["rel_width"] for r in rs]
        if all(w is not None for w in widths):
            axes[1].plot(ns, widths, marker="o", label=name.upper())
    axes[0].set(xscale="log", xlabel="number of samples N", ylabel="|value(N) - value(N_max)| / |value(N_max)|",
                title="bias relative to the largest N")
    axes[1].set(xscale="log", xlabel="number of samples N", ylabel="bootstrap interval width / value",
                title="relative spread")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return list(rows)

