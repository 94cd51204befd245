"""Subcommand: train-classifier (the evaluation classifier of a dataset, or a run's noise-aware one).

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse

from .. import validate
from ..errors import UserError
from ..validate import COUNT, POSITIVE, SEED, Range, arg

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
    from ..config import check_options, parse_key_values
    from ..data import DATASETS
    from .eval_classifier import default_classifier_dir, train_eval_classifier

    options = check_options(DATASETS.get(args.dataset).load, parse_key_values(args.option, "--option"), "data",
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
