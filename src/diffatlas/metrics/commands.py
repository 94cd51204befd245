"""Subcommands: train-classifier, evaluate, curves, sample-size.

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import validate
from ..errors import UserError
from ..validate import COUNT, COUNT_MAX, POSITIVE, SEED, STEPS, Range, arg

BOOT = Range(0, 100_000, integer=True)

EVAL_HELP = ("comma-separated: fid, is, kid, pr (precision and recall), class_accuracy, bpd (negative log-likelihood "
             "in bits/dim of test data through the probability-flow ODE)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-classifier",
                       help="train a dataset's evaluation classifier, or (--noisy) a run's noise-aware guidance classifier")
    p.add_argument("dataset", nargs="?", help="dataset name (diffatlas list datasets); omit with --noisy")
    p.add_argument("--out", "-o", help="output folder (default for the evaluation classifier: "
                                       "$DIFFATLAS_CACHE/classifiers/<dataset>-<resolution>, else ~/.cache/diffatlas/...)")
    p.add_argument("--epochs", type=arg(Range(1, 100_000, integer=True)), help="evaluation classifier: passes over the train split "
                                             "(default 20, or 10 above 20,000 images)")
    p.add_argument("--seed", type=arg(SEED), default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resolution", type=arg(Range(1, validate.RESOLUTION_MAX, integer=True)), help="image side length (the run's data.resolution)")
    p.add_argument("--root", help="dataset files folder (the run's data.root)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option (data.options)")
    p.add_argument("--batch", type=arg(COUNT), help="batch size (default 64; 128 with --noisy)")
    p.add_argument("--lr", type=arg(POSITIVE), help="learning rate (default 2e-3; 1e-3 with --noisy)")
    p.add_argument("--noisy", metavar="RUN_OR_CONFIG",
                   help="train the noise-aware classifier for classifier guidance of this run (or config)")
    p.add_argument("--steps", type=arg(Range(0, 10**9, integer=True)), default=2000,
                   help="with --noisy: optimisation steps")
    p.add_argument("--width", type=arg(Range(1, 4096, integer=True)), default=32, help="with --noisy: channel width")
    p.add_argument("--untrained", action="store_true",
                   help="with --noisy: save the seeded untrained classifier (the misguided control)")
    p.set_defaults(func=cmd_train_classifier)

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


def _kv(items: list[str], what: str) -> dict:
    from ..config import parse_value

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{what} {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def cmd_train_classifier(args: argparse.Namespace) -> int:
    if args.noisy:
        if args.dataset:
            raise UserError("give a DATASET (evaluation classifier) or --noisy RUN_OR_CONFIG (guidance classifier), not both")
        if not args.out:
            raise UserError("--noisy needs an output folder: -o DIR")
        if args.epochs is not None:
            raise UserError("--epochs applies to the evaluation classifier; the noise-aware one takes --steps")
        validate.writable_dir(args.out, "--out")
        from ..guidance import train_noisy_classifier_for

        _, info = train_noisy_classifier_for(args.noisy, args.out, steps=args.steps,
                                             batch=128 if args.batch is None else args.batch,
                                             lr=1e-3 if args.lr is None else args.lr, seed=args.seed,
                                             device=validate.device(args.device),
                                             width=args.width, untrained=args.untrained, log=print)
        kind = "untrained noise-aware classifier (control)" if args.untrained else "noise-aware classifier"
        print(f"{kind} for {info.get('dataset')}: accuracy by noise level (chance {info.get('chance', 0):.3f}):")
        for r in info.get("accuracy_by_level", []):
            print(f"  t {r['t']:.4g}  sigma_hat {r['sigma_hat']:.4g}  accuracy {r['accuracy']:.4f}")
        print(f"saved to {args.out}")
        return 0
    if args.untrained:
        raise UserError("--untrained applies to --noisy RUN_OR_CONFIG (the guidance classifier control)")
    if not args.dataset:
        raise UserError("give a DATASET (e.g. digits) or --noisy RUN_OR_CONFIG; see diffatlas list datasets")
    from ..config import check_options
    from ..data import DATASETS
    from .eval_classifier import default_classifier_dir, train_eval_classifier

    options = check_options(DATASETS.get(args.dataset).load, _kv(args.option, "--option"), "data",
                            skip=("root", "split", "resolution", "download"), label="--option")
    validate.writable_dir(args.out or default_classifier_dir(args.dataset, args.resolution, options), "--out")
    _, info, path = train_eval_classifier(args.dataset, root=args.root, resolution=args.resolution,
                                          options=options, out_dir=args.out, epochs=args.epochs,
                                          batch_size=64 if args.batch is None else args.batch,
                                          lr=2e-3 if args.lr is None else args.lr, seed=args.seed,
                                          device=validate.device(args.device), log=print)
    print(f"evaluation classifier for {args.dataset}: test accuracy {info['test_accuracy']:.4f} "
          f"(train {info['train_accuracy']:.4f}, {info['test_split']}), weights {info['weights_hash']}: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_run

    progress = {"auto": None, "bar": True, "lines": None, "none": False}[args.progress]
    entries = evaluate_run(args.run, metrics=args.metrics, n=args.n, snapshots=args.snapshots, sampler=args.sampler,
                           steps=args.steps, nfe=args.nfe, grid=args.grid, options=_kv(args.option, "--option"),
                           clip=args.clip, guidance=args.guidance, classifier_dir=args.classifier, extractor=args.extractor,
                           extractor_path=args.extractor_path, seed=args.seed, n_boot=args.boot, sample_grid=args.sample_grid,
                           likelihood=_kv(args.bpd, "--bpd"), device=args.device, progress=progress, log=print)
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
                          options=_kv(args.option, "--option"), clip=args.clip, extractor=args.extractor,
                          extractor_path=args.extractor_path, seed=args.seed, device=args.device, out=args.out, log=print)
    with open(res["md"]) as f:
        print(f.read().rstrip())
    print(f"plot: {res['png']}  table: {res['md']}  rows: {res['json']}")
    return 0
