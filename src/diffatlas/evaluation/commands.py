"""Subcommands: evaluate, curves, sample-size (the evaluation of a run's snapshots).

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import validate
from ..config import parse_key_values
from ..validate import COUNT_MAX, SEED, STEPS, Range, arg

BOOT = Range(0, 100_000, integer=True)

EVAL_HELP = ("comma-separated: fid, is, kid, pr (precision and recall), class_accuracy, bpd (negative log-likelihood "
             "in bits/dim of test data through the probability-flow ODE)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's snapshots (FID, IS, KID, precision/recall, class accuracy, "
                                        "bits/dim) into RUN/metrics.jsonl; resumes, never duplicates")
    p.add_argument("run", help="run directory")
    p.add_argument("--snapshots", default="all", help="all, last, 'every K' (kimg), or kimg values a,b,c")
    p.add_argument("--metrics", default="fid,is", help=EVAL_HELP)
    p.add_argument("--n", type=arg(Range(2, COUNT_MAX, integer=True)), default=1000, help="generated samples per snapshot")
    p.add_argument("--sampler", help="sampler name (diffatlas list samplers); default: the run's")
    p.add_argument("--steps", type=arg(STEPS), help="number of grid steps")
    p.add_argument("--nfe", type=arg(STEPS), help="NFE budget (denoiser evaluations) instead of --steps; the sampler's own plan spends it")
    p.add_argument("--grid", help="time grid (diffatlas list grids)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="sampler option, e.g. eta=0.5")
    p.add_argument("--clip", help="x0 clipping: auto (static for images), none, static, dynamic or dynamic:P (default: the run's sample.clip)")
    p.add_argument("--guidance", help="classifier:SCALE or cfg:W")
    p.add_argument("--classifier", help="noise-aware classifier folder for classifier guidance, or untrained[:SEED] "
                                        "(default RUN/noisy-classifier if present, else the one shared by runs with the same data "
                                        "and process, trained when absent)")
    p.add_argument("--extractor", default="classifier", help="classifier (the dataset's evaluation classifier) or inception")
    p.add_argument("--extractor-path", help="evaluation classifier folder, or Inception weights file")
    p.add_argument("--seed", type=arg(SEED), default=0, help="first per-sample seed (sample i uses seed + i)")
    p.add_argument("--boot", type=arg(BOOT), default=0, help="bootstrap resamples for 95%% intervals (0: none)")
    p.add_argument("--sample-grid", type=arg(Range(0, COUNT_MAX, integer=True)), default=16,
                   help="samples per snapshot written as a PNG grid, RUN/samples/eval-*.png (0: none; default 16)")
    p.add_argument("--bpd", action="append", default=[], metavar="KEY=VALUE",
                   help="bpd estimator setting: solver (rk45, heun), rtol, atol, grid, steps, divergence (auto, exact, "
                        "hutchinson), probes, probe (rademacher, gaussian), dequantization (auto, uniform, none), max_nfe")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", choices=["auto", "bar", "lines", "none"], default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("curves", help="plot a metric against kimg for a run, one line per evaluation setting")
    p.add_argument("run", help="run directory")
    p.add_argument("--metric", default="fid")
    p.add_argument("--out", help="PNG path (default RUN/curves-<metric>.png)")
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("sample-size", help="how FID, IS (and KID) depend on the number of samples, on a run's "
                                           "last snapshot: table and plot")
    p.add_argument("run", help="run directory")
    p.add_argument("--metrics", default="fid,is", help="comma-separated: fid, is, kid")
    p.add_argument("--ns", default="100,200,500,1000", help="comma-separated sample counts (each >= 10)")
    p.add_argument("--boot", type=arg(BOOT), default=20, help="bootstrap resamples per point")
    p.add_argument("--snapshot", default="last", help="kimg of the snapshot, or last")
    p.add_argument("--sampler")
    p.add_argument("--steps", type=arg(STEPS))
    p.add_argument("--nfe", type=arg(STEPS), help="NFE budget (denoiser evaluations) instead of --steps; the sampler's own plan spends it")
    p.add_argument("--grid")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--clip", help="x0 clipping: auto (static for images), none, static, dynamic or dynamic:P (default: the run's sample.clip)")
    p.add_argument("--extractor", default="classifier")
    p.add_argument("--extractor-path")
    p.add_argument("--seed", type=arg(SEED), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="PNG path (default RUN/sample-size/sample-size-<kimg>-<sampler>-<steps>.png)")
    p.set_defaults(func=cmd_sample_size)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_run

    progress = {"auto": None, "bar": True, "lines": None, "none": False}[args.progress]
    entries = evaluate_run(args.run, metrics=args.metrics, n=args.n, snapshots=args.snapshots, sampler=args.sampler,
                           steps=args.steps, nfe=args.nfe, grid=args.grid, options=parse_key_values(args.option, "--option"),
                           clip=args.clip, guidance=args.guidance, classifier_dir=args.classifier, extractor=args.extractor,
                           extractor_path=args.extractor_path, seed=args.seed, n_boot=args.boot, sample_grid=args.sample_grid,
                           likelihood=parse_key_values(args.bpd, "--bpd"), device=args.device, progress=progress, log=print)
    for e in entries:
        iv = e.get("interval")
        ivs = f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""
        steps = f" x{e['steps']}" if e.get("steps") is not None else ""
        n = f"n {e['n']}" if e.get("extractor") else f"{e.get('n_real')} data points"  # a model metric has no samples
        clip = f", clip {e['clip']}" if e.get("clip") else ""
        print(f"kimg {e['kimg']:<10g} {e['metric']:<15} {e['value']:.5g}{ivs}  ({n}, {e['sampler']}{steps}, "
              f"NFE {e['nfe']}{clip}{', ' + e['guidance'] if e.get('guidance') else ''})")
    print(f"{len(entries)} entries in {Path(args.run) / 'metrics.jsonl'}")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from ..evaluation import plot_curves

    path = plot_curves(args.run, args.metric, args.out)
    print(f"{args.metric} against kimg: {path}")
    return 0


def cmd_sample_size(args: argparse.Namespace) -> int:
    from ..evaluation import sample_size_run

    ns = validate.number_list(args.ns, "--ns", Range(10, COUNT_MAX, integer=True))
    res = sample_size_run(args.run, metrics=args.metrics, ns=ns, n_boot=args.boot,
                          snapshot=args.snapshot, sampler=args.sampler, steps=args.steps, nfe=args.nfe, grid=args.grid,
                          options=parse_key_values(args.option, "--option"), clip=args.clip, extractor=args.extractor,
                          extractor_path=args.extractor_path, seed=args.seed, device=args.device, out=args.out, log=print)
    with open(res["md"]) as f:
        print(f.read().rstrip())
    print(f"plot: {res['png']}  table: {res['md']}  rows: {res['json']}")
    return 0
