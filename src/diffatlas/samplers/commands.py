"""`diffatlas oracle`: every dynamics x sampler pair against data whose denoiser is exact.

For a 2-D Gaussian mixture (`standard_mixture(2)`) and a 64-D Gaussian, the ideal denoiser
E[x0 | x_t] is known in closed form (`diffatlas.data.toy.ExactDenoiser`), so what remains between
the samples and the data is the sampler's own error (and, with --start prior, the prior's mismatch,
e.g. NCSN's sigma_max = 1). Each pair runs at each NFE budget (mapped to grid steps per sampler by
`plan_sampling`); sliced W2 and RBF-MMD to a large true sample are printed and plotted with the noise
floor (the distance of an independent true sample of the same size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..errors import UserError
from ..validate import Range, arg

DEFAULT_NFE = "10,20,50,100,500,1000"
PROBLEMS = ("mixture2d", "gaussian64")


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "oracle", help="check every dynamics x sampler pair against an exact denoiser",
        description=__doc__.split("\n")[0])
    p.add_argument("--n", type=arg(Range(10, validate.COUNT_MAX, integer=True)), default=250, help="samples per run (default 250, fast; raise it for a lower noise floor)")
    p.add_argument("--out", default="oracle-out", help="folder for oracle.png, oracle.jsonl (default oracle-out)")
    p.add_argument("--dynamics", default="all", help="comma-separated dynamics names or 'all'")
    p.add_argument("--samplers", default="all", help="comma-separated sampler names or 'all'")
    p.add_argument("--nfe", default=DEFAULT_NFE, help=f"comma-separated NFE budgets (default {DEFAULT_NFE})")
    p.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated among {', '.join(PROBLEMS)}")
    p.add_argument("--start", choices=["prior", "marginal"], default="prior",
                   help="start from the dynamics' prior (default) or the exact noised data at t_max")
    p.add_argument("--seed", type=arg(Range(0, validate.SEED_MAX - 2, integer=True)), default=0)
    p.add_argument("--jobs", type=arg(Range(1, validate.WORKERS_MAX, integer=True)), default=min(2, os.cpu_count() or 1),
                   help="worker processes, one (problem, dynamics) pair each (default: up to 2)")
    p.set_defaults(func=run_oracle)


def _names(arg: str, registry: Any, what: str) -> list[str]:
    if arg == "all":
        return registry.names()
    names = [s.strip() for s in arg.split(",") if s.strip()]
    for s in names:
        registry.get(s)  # UnknownNameError lists the choices
    if not names:
        raise UserError(f"--{what} needs at least one name")
    return names


def _ints(text: str) -> list[int]:
    return sorted(set(validate.number_list(text, "--nfe", Range(1, validate.STEPS_MAX, integer=True))))


def _problem(name: str) -> Any:
    from ..data.mixture import gaussian, standard_mixture
    if name == "mixture2d":
        return standard_mixture(2)
    if name == "gaussian64":
        return gaussian(64, 0.0, torch.linspace(0.2, 1.5, 64, dtype=torch.float64))
    raise UserError(f"unknown oracle problem {name!r}; choose among: {', '.join(PROBLEMS)}")


def _task(prob: str, dn: str, smp_names: list[str], budgets: list[int], n: int, seed: int, start: str
          ) -> tuple[list[dict], list[str]]:
    """One problem x dynamics: every sampler at every budget. Returns (rows, printed table lines)."""
    from ..data.mixture import ExactDenoiser
    from ..dynamics import build_dynamics
    from . import SAMPLERS
    from .plan import plan_sampling
    from .oracle import median_bandwidth, mmd_rbf, random_directions, sliced_wasserstein

    torch.set_num_threads(1)  # tiny tensors: one thread avoids synchronisation overhead
    law = _problem(prob)
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


def run_oracle(args: argparse.Namespace) -> int:
    from ..dynamics import DYNAMICS
    from . import SAMPLERS

    # the distances hold (n, 4n) float64 kernel matrices (MMD against a 4n reference sample)
    avail = validate.available_memory("cpu") or 0
    validate.memory(96 * args.n**2, f"the oracle with --n {args.n}", "cpu",
                    largest=f"--n at most about {int(math.sqrt(avail / 96)):,}")
    dyn_names = _names(args.dynamics, DYNAMICS, "dynamics")
    smp_names = _names(args.samplers, SAMPLERS, "samplers")
    budgets = _ints(args.nfe)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    for p in problems:
        _problem(p)
    out = validate.writable_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    tasks = [(p, d, smp_names, budgets, args.n, args.seed, args.start) for p in problems for d in dyn_names]
    if args.jobs == 1 or len(tasks) == 1:
        threads = torch.get_num_threads()
        try:
            results = [_task(*t) for t in tasks]
        finally:
            torch.set_num_threads(threads)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_task, *zip(*tasks)))
    rows: list[dict] = []
    for k, prob in enumerate(problems):
        part = results[k * len(dyn_names):(k + 1) * len(dyn_names)]
        first = part[0][0][0]
        print(f"\n{prob}: n={args.n}, start={args.start}, noise floor SW2={first['floor_sw']:.4f} "
              f"MMD={first['floor_mmd']:.4f}; cells are NFE:SW2")
        print(f"{'dynamics':10s} {'sampler':18s} " + " ".join(f"{b:>15d}" for b in budgets))
        for r, lines in part:
            rows.extend(r)
            print("\n".join(lines))

    with open(out / "oracle.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    paths = _plot(rows, problems, dyn_names, smp_names, out)
    print(f"\n{len(rows)} runs in {time.perf_counter() - t_start:.1f} s; wrote {out / 'oracle.jsonl'}, "
          + ", ".join(str(p) for p in paths))
    return 0


def _plot(rows: list[dict], problems: list[str], dyn_names: list[str], smp_names: list[str], out: Path) -> list[Path]:
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
