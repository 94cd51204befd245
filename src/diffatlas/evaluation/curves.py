"""Metric-vs-kimg curves of a run, from its evaluation log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import validate
from ..errors import UserError
from ..io import atomic_write
from ..rundir import METRICS_FILE
from .log import read_metrics


def setting_label(entry: dict[str, Any], with_n: bool = False) -> str:
    """'sampler xSTEPS grid [guidance] [options] [n=N]' of an entry: one curve per label."""
    label = f"{entry.get('sampler')} x{entry.get('steps')} {entry.get('grid')}"
    if entry.get("guidance"):
        label += f" {entry['guidance']}"
    if entry.get("options"):
        label += " " + ",".join(f"{k}={v}" for k, v in sorted(entry["options"].items()))
    if with_n:
        label += f" n={entry.get('n')}"
    return label


def metric_curves(run_dir: str | Path, metric: str = "fid") -> dict[str, list[dict[str, Any]]]:
    """{setting label: entries of `metric` sorted by kimg} from RUN/metrics.jsonl (deduplicated).
    Settings that differ in n, extractor or seed get n / extractor / seed in their label."""
    entries = [e for e in read_metrics(run_dir) if e.get("metric") == metric and e.get("value") is not None]
    many_n = len({e.get("n") for e in entries}) > 1
    many_ext = len({(e.get("extractor"), e.get("extractor_hash")) for e in entries}) > 1
    many_seed = len({e.get("seed") for e in entries}) > 1
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        label = setting_label(e, with_n=many_n)
        if many_ext:
            label += f" {e.get('extractor')}:{str(e.get('extractor_hash'))[:6]}"
        if many_seed:
            label += f" seed={e.get('seed')}"
        out.setdefault(label, []).append(e)
    for v in out.values():
        v.sort(key=lambda e: float(e["kimg"]))
    return out


def plot_curves(run_dir: str | Path, metric: str = "fid", out: str | Path | None = None) -> Path:
    """Plot `metric` against kimg, one line per evaluation setting, with bootstrap bands where logged.
    Writes a PNG (matplotlib Agg) to `out` (default RUN/curves-<metric>.png) and returns its path."""
    curves = metric_curves(run_dir, metric)
    if not curves:
        have = sorted({e.get("metric") for e in read_metrics(run_dir)})
        raise UserError(f"run {str(run_dir)!r} has no {metric!r} entries in {METRICS_FILE}"
                        + (f"; it has: {', '.join(map(str, have))}" if have else "; run `diffatlas evaluate` first"))
    path = Path(out) if out is not None else Path(run_dir) / f"curves-{metric}.png"
    validate.figure_path(path, "curves plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"text.parse_math": False}):  # labels hold user strings: '$' is not math here
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for label, es in curves.items():
            ks = [float(e["kimg"]) for e in es]
            vs = [float(e["value"]) for e in es]
            (line,) = ax.plot(ks, vs, marker="o", ms=3, label=label)
            iv = [e.get("interval") for e in es]
            if all(isinstance(v, list) and len(v) == 2 and None not in v for v in iv):
                ax.fill_between(ks, [v[0] for v in iv], [v[1] for v in iv], color=line.get_color(), alpha=0.2)
        hib = next(iter(curves.values()))[0].get("higher_is_better")
        better = "" if hib is None else (" (higher is better)" if hib else " (lower is better)")
        ax.set(xlabel="training images seen (kimg)", ylabel=f"{metric}{better}",
               title=f"{metric} over training: {Path(run_dir).name}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path
