"""Plot log-SNR schedules of several processes on one axis.

log-SNR lambda(t) = 2 log(alpha / sigma) is the one quantity every process shares (Kingma et al.
2021, eq. 2): two processes with the same lambda along their sampling path differ only by a
rescaling of x. Time ranges differ (VP in [1e-3, 1], EDM in [0.002, 80]), so the time axis is
normalized, (t - t_min) / (t_max - t_min); the second view puts each process's default sampling
grid on the fraction of steps taken, which is where sampling effort actually goes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import UserError
from ..samplers.plan import plan_sampling
from ..schedules import GRID_SIGMA_HAT_MAX
from .base import Dynamics

X_AXES = ("t", "fraction")
# log-SNR is -inf where alpha = 0 (rectified flow at t = 1); plots clip it where sampling grids start.
_LOG_SNR_FLOOR = -2 * math.log(GRID_SIGMA_HAT_MAX)


def log_snr_curve(dynamics: Dynamics, *, x: str = "t", points: int = 400,
                  grid: str | None = None, steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, log-SNR) float64 tensors of one process for `plot_log_snr`.

    x="t": `points` times uniform in [t_min, t_max], x = (t - t_min)/(t_max - t_min) in [0, 1].
    x="fraction": the process's default sampling grid (or `grid`/`steps`), x = i / (len - 1) for
    grid point i, so x = 0 is the first (noisiest) step and x = 1 the last.
    """
    if x == "t":
        t = torch.linspace(dynamics.t_min, dynamics.t_max, points, dtype=torch.float64)
        xs = (t - dynamics.t_min) / (dynamics.t_max - dynamics.t_min)
    elif x == "fraction":
        t = plan_sampling(dynamics, "auto", steps=steps, grid=grid).times(dynamics)
        xs = torch.linspace(0.0, 1.0, len(t), dtype=torch.float64) if len(t) > 1 else torch.zeros(1, dtype=torch.float64)
    else:
        raise UserError(f"unknown x axis {x!r} for a log-SNR plot; choose one of: {', '.join(X_AXES)}")
    return xs, dynamics.log_snr(t).clamp(min=_LOG_SNR_FLOOR)


def plot_log_snr(dynamics: dict[str, Dynamics], path: str | Path, *, x: str = "t",
                 grid: str | None = None, steps: int | None = None) -> Path:
    """Draw log-SNR of each named process against normalized time (x="t") or against the fraction of
    sampling steps of its default grid (x="fraction"); write the figure to `path` (format from the suffix).

    Returns the path written. matplotlib is imported here, with the Agg backend (no display needed).
    """
    if not dynamics:
        raise UserError("plot_log_snr needs at least one dynamics to plot")
    if x not in X_AXES:
        raise UserError(f"unknown x axis {x!r} for a log-SNR plot; choose one of: {', '.join(X_AXES)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for name, dyn in dynamics.items():
            xs, lam = log_snr_curve(dyn, x=x, grid=grid, steps=steps)
            style = {"marker": ".", "markersize": 3} if x == "fraction" else {}
            ax.plot(xs.numpy(), lam.numpy(), label=name, **style)
        ax.set_xlabel("(t - t_min) / (t_max - t_min)" if x == "t" else "fraction of sampling steps")
        ax.set_ylabel("log-SNR  2 log(alpha / sigma)")
        ax.axhline(0.0, color="0.8", lw=0.8, zorder=0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
