"""`diffatlas oracle`: every dynamics x sampler pair against data whose denoiser is exact
(samplers.oracle_study.run_oracle); prints the tables and writes oracle.jsonl and one figure per problem.

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

from .. import validate
from ..errors import UserError
from ..validate import Range, arg
from .oracle_study import PROBLEMS

DEFAULT_NFE = "10,20,50,100,500,1000"


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
    p.set_defaults(func=oracle_command)


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


def oracle_command(args: argparse.Namespace) -> int:
    from ..dynamics import DYNAMICS
    from ..io import atomic_write_text
    from . import SAMPLERS
    from .oracle_study import plot_oracle, run_oracle

    # the distances hold (n, 4n) float64 kernel matrices (MMD against a 4n reference sample)
    avail = validate.available_memory("cpu") or 0
    validate.memory(96 * args.n**2, f"the oracle with --n {args.n}", "cpu",
                    largest=f"--n at most about {int(math.sqrt(avail / 96)):,}")
    dyn_names = _names(args.dynamics, DYNAMICS, "dynamics")
    smp_names = _names(args.samplers, SAMPLERS, "samplers")
    budgets = _ints(args.nfe)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    bad = [p for p in problems if p not in PROBLEMS] if problems else ["(none given)"]
    if bad:
        raise UserError(f"unknown oracle problem {bad[0]!r}; choose among: {', '.join(PROBLEMS)}")
    out = validate.writable_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    rows, text = run_oracle(problems, dyn_names, smp_names, budgets, n=args.n, seed=args.seed, start=args.start,
                            jobs=args.jobs)
    print("\n".join(text))
    atomic_write_text(out / "oracle.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    paths = plot_oracle(rows, problems, dyn_names, smp_names, out)
    print(f"\n{len(rows)} runs in {time.perf_counter() - t_start:.1f} s; wrote {out / 'oracle.jsonl'}, "
          + ", ".join(str(p) for p in paths))
    return 0
