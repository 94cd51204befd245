"""Report figures with matplotlib's Agg backend; each returns PNG bytes (or None when there is nothing to draw)."""

from __future__ import annotations

import functools
import inspect
import io
from collections import defaultdict
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..dynamics import DYNAMICS
from ..study.spec import short_key  # noqa: E402


def _plain_text(fn: Any) -> Any:
    """Draw with mathtext off: labels carry user strings (axis values), and '$x^$' is text, not math."""
    @functools.wraps(fn)
    def draw(*args: Any, **kwargs: Any) -> Any:
        with plt.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return draw


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@_plain_text
def curves_per_axis(runs: Sequence[Any], axes: Sequence[str], metric: str, eval_setting: str) -> bytes | None:
    """metric vs kimg, one panel per axis, one line per axis value (mean over runs; band = min..max)."""
    axes = [a for a in axes if a != "guidance"] or ["seed"]
    fig, panels = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.2), squeeze=False)
    drawn = False
    for ax, key in zip(panels[0], axes):
        groups: dict[str, list[list[tuple[float, float]]]] = defaultdict(list)
        for r in runs:
            c = r.curves.get((metric, eval_setting))
            if c and key in r.labels:
                groups[str(r.labels[key])].append(c)
        for value, curves in groups.items():
            ks = sorted({k for c in curves for k, _ in c})
            table = np.full((len(curves), len(ks)), np.nan)
            for i, c in enumerate(curves):
                for k, v in c:
                    table[i, ks.index(k)] = v
            with np.errstate(all="ignore"):
                mean = np.nanmean(table, axis=0)
            ax.plot(ks, mean, marker="o", ms=3, label=value)
            if len(curves) > 1:
                ax.fill_between(ks, np.nanmin(table, axis=0), np.nanmax(table, axis=0), alpha=0.2)
            drawn = True
        ax.set_title(short_key(key))
        ax.set_xlabel("kimg")
        ax.set_ylabel(metric)
        if groups:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    fig.suptitle(f"{metric} during training ({eval_setting})", fontsize=10, y=1.04)
    return _png(fig)


@_plain_text
def metric_vs_nfe(points: dict[str, list[tuple[float, float]]], metric: str) -> bytes | None:
    """Final metric vs NFE, one line per sampler. points: sampler -> [(nfe, value)]."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for sampler, pts in sorted(points.items()):
        pts = sorted(pts)
        by: dict[float, list[float]] = defaultdict(list)
        for n, v in pts:
            by[n].append(v)
        xs = sorted(by)
        ax.plot(xs, [np.mean(by[x]) for x in xs], marker="o", label=sampler)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(metric)
    ax.set_title(f"final {metric} vs sampling cost")
    ax.legend(fontsize=7)
    return _png(fig)


def build_dynamics_from_config(d: dict) -> Any:
    """The run's dynamics from its resolved config section {name, options}."""
    cls = DYNAMICS.get(d["name"])
    params = inspect.signature(cls.__init__).parameters
    opts = {k: v for k, v in (d.get("options") or {}).items() if k in params}
    return cls(**opts)


@_plain_text
def log_snr_plot(dynamics_configs: dict[str, dict]) -> bytes | None:
    """log-SNR(t) = 2 log(alpha/sigma) of each distinct dynamics (label -> config section)."""
    import torch

    if not dynamics_configs:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    drawn = False
    for label, d in dynamics_configs.items():
        try:
            dyn = build_dynamics_from_config(d)
        except Exception:  # noqa: BLE001 - a dynamics this version cannot build is left out of the plot
            continue
        t = torch.linspace(max(dyn.t_min, 1e-5), dyn.t_max, 400, dtype=torch.float64)
        lam = dyn.log_snr(t).numpy()
        u = (t.numpy() - t.numpy()[0]) / (t.numpy()[-1] - t.numpy()[0])
        ax1.plot(u, lam, label=label)
        ax2.plot(u, dyn.sigma_hat(t).numpy(), label=label)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax1.set_xlabel("normalized time (t - t_min) / (t_max - t_min)")
    ax1.set_ylabel("log-SNR = 2 log(alpha / sigma)")
    ax2.set_yscale("log")
    ax2.set_xlabel("normalized time")
    ax2.set_ylabel("sigma / alpha")
    ax1.legend(fontsize=7)
    fig.suptitle("noise schedules", fontsize=10)
    return _png(fig)
