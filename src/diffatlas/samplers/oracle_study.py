"""The oracle experiment: every dynamics x sampler pair against data whose denoiser is exact.

For a 2-D Gaussian mixture (`standard_mixture(2)`) and a 64-D Gaussian, the ideal denoiser
E[x0 | x_t] is known in closed form (`diffatlas.data.mixture.ExactDenoiser`), so what remains between
the samples and the data is the sampler's own error (and, when starting from the prior, the prior's
mismatch, e.g. NCSN's sigma_max = 1). Each pair runs at each NFE budget (mapped to grid steps per
sampler by `plan_sampling`); sliced W2 and RBF-MMD to a large true sample are reported with the
noise floor (the distance of an independent true sample of the same size). `diffatlas oracle` is
the command line of :func:`run_oracle`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..data.mixture import ExactDenoiser, gaussian, standard_mixture
from ..dynamics import build_dynamics
from ..errors import UserError
from .base import SAMPLERS
from .oracle import median_bandwidth, mmd_rbf, random_directions, sliced_wasserstein
from .plan import plan_sampling

PROBLEMS = ("mixture2d", "gaussian64")


def problem(name: str) -> Any:
    """The exact law of oracle problem `name` (PROBLEMS)."""
    if name == "mixture2d":
        return standard_mixture(2)
    if name == "gaussian64":
        return gaussian(64, 0.0, torch.linspace(0.2, 1.5, 64, dtype=torch.float64))
    raise UserError(f"unknown oracle problem {name!r}; choose among: {', '.join(PROBLEMS)}")


def oracle_pair(prob: str, dn: str, smp_names: list[str], budgets: list[int], n: int, seed: int, start: str
                ) -> tuple[list[dict], list[str]]:
    """One problem x dynamics: every sampler at every budget. Returns (rows, printed table lines)."""
    torch.set_num_threads(1)  # tiny tensors: one thread avoids synchronisation overhead
    law = problem(prob)
    g = torch.Generator().manual_seed(seed)
    ref = law.sample(4 * n, g)
    dirs = random_directions(law.dim, 128, g)
    h = median_bandwidth(ref)
    floor_x = law.sample(n, g)
    floor = {"sw": sliced_wasserstein(floor_x, ref, directions=dirs), "mmd": mmd_rbf(floor_x, ref, h)}
    dyn = build_dynamics(dn)
    den = ExactDenoiser(law, dyn)
    t_max = torch.tensor([dyn.t_max], dtype=torch.float64)
    if start == "prior":
        x = dyn.prior_sample((n, law.dim), torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    else:
        x = law.noised(float(dyn.alpha(t_max)), float(dyn.sigma(t_max))).sample(n, torch.Generator().manual_seed(seed + 1))
    rows, lines = [], []
    for sn in smp_names:
        cells = []
        for b in budgets:
            row = {"problem": prob, "dynamics": dn, "sampler": sn, "budget": b,
                   "floor_sw": floor["sw"], "floor_mmd": floor["mmd"]}
            try:
                plan = plan_sampling(dyn, sn, nfe=b)
                row.update(steps=plan.steps, grid=plan.grid, options=plan.options)
                res = SAMPLERS.get(sn)(den, x, plan.times(dyn), generator=torch.Generator().manual_seed(seed + 2),
                                       **plan.options)
            except UserError as e:
                row.update(nfe=None, sw=None, mmd=None, refused=str(e))
                rows.append(row)
                cells.append(f"{'refused':>15s}")
                break
            ok = bool(torch.isfinite(res.x).all())
            sw = sliced_wasserstein(res.x, ref, directions=dirs) if ok else math.nan
            mmd = mmd_rbf(res.x, ref, h) if ok else math.nan
            row.update(nfe=res.nfe, sw=sw, mmd=mmd)
            rows.append(row)
            cells.append(f"{res.nfe:>4d}:{sw:>10.4f}")
        lines.append(f"{dn:10s} {sn:18s} " + " ".join(cells))
    return rows, lines


def run_oracle(problems: list[str], dynamics: list[str], samplers: list[str], budgets: list[int], *, n: int,
               seed: int = 0, start: str = "prior", jobs: int = 1) -> tuple[list[dict], list[str]]:
    """Every problem x dynamics x sampler x budget, one (problem, dynamics) pair per worker process
    (`jobs`); returns (rows, the printed tables' lines). A row: problem, dynamics, sampler, budget,
    steps, grid, options, nfe, sw, mmd, floor_sw, floor_mmd (refused: the planner's reason)."""
    for p in problems:
        problem(p)
    tasks = [(p, d, samplers, budgets, n, seed, start) for p in problems for d in dynamics]
    if jobs == 1 or len(tasks) == 1:
        threads = torch.get_num_threads()
        try:
            results = [oracle_pair(*t) for t in tasks]
        finally:
            torch.set_num_threads(threads)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(oracle_pair, *zip(*tasks)))
    rows: list[dict] = []
    text: list[str] = []
    for k, prob in enumerate(problems):
        part = results[k * len(dynamics):(k + 1) * len(dynamics)]
        first = part[0][0][0]
        text += [f"\n{prob}: n={n}, start={start}, noise floor SW2={first['floor_sw']:.4f} "
                 f"MMD={first['floor_mmd']:.4f}; cells are NFE:SW2",
                 f"{'dynamics':10s} {'sampler':18s} " + " ".join(f"{b:>15d}" for b in budgets)]
        for r, lines in part:
            rows.extend(r)
            text += lines
    return rows, text


def plot_oracle(rows: list[dict], problems: list[str], dyn_names: list[str], smp_names: list[str], out: Path) -> list[Path]:
    """oracle-<problem>.png in `out`: distance against NFE per dynamics, one line per sampler."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one fixed style per sampler, so a refused pair does not shift the colours of the others
    style = {sn: dict(color=f"C{i % 10}", ls="-" if i < 10 else "--") for i, sn in enumerate(smp_names)}
    paths = []
    for prob in problems:
        fig, axes = plt.subplots(len(dyn_names), 2, figsize=(11, 2.6 * len(dyn_names)), squeeze=False)
        for i, dn in enumerate(dyn_names):
            for j, (key, label) in enumerate([("sw", "sliced W2"), ("mmd", "MMD (RBF)")]):
                ax = axes[i][j]
                floor = None
                for sn in smp_names:
                    pts = [(r["nfe"], r[key]) for r in rows if r["problem"] == prob and r["dynamics"] == dn
                           and r["sampler"] == sn and r.get("nfe") and r[key] is not None and math.isfinite(r[key])]
                    floor = next((r[f"floor_{key}"] for r in rows if r["problem"] == prob), floor)
                    if pts:
                        ax.plot(*zip(*sorted(pts)), marker="o", ms=3, label=sn, **style[sn])
                if floor is not None:
                    ax.axhline(floor, color="k", ls="--", lw=1, label="noise floor")
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(f"{prob} / {dn}: {label}", fontsize=9)
                ax.set_xlabel("NFE", fontsize=8)
                if i == 0 and j == 1:
                    ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"oracle-{prob}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths
