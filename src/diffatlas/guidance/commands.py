"""Subcommand: guidance-sweep (class accuracy and quality against guidance scale).

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import validate
from ..errors import UserError
from ..validate import COUNT, SEED, STEPS, arg


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("guidance-sweep", help="sample a run at several guidance scales: class accuracy, FID and IS per scale")
    p.add_argument("run", help="run directory")
    p.add_argument("--kind", default="classifier", help="classifier or cfg")
    p.add_argument("--scales", default="0,1,2,4,8", help="comma list of scales (classifier: s; cfg: w)")
    p.add_argument("--n-per-class", type=arg(COUNT), default=50)
    p.add_argument("--classifier", help="noise-aware guidance classifier directory, or untrained[:SEED] (the misguided control)")
    p.add_argument("--extractor-path", help="evaluation classifier directory (default: the dataset's, trained if absent)")
    p.add_argument("--sampler")
    p.add_argument("--steps", type=arg(STEPS))
    p.add_argument("--grid")
    p.add_argument("--seed", type=arg(SEED), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output folder (default RUN/guidance-<kind>)")
    p.set_defaults(func=cmd_guidance_sweep)


def cmd_guidance_sweep(args: argparse.Namespace) -> int:
    import math

    from ..metrics.eval_classifier import evaluation_classifier
    from ..rundir import RunDir
    from .spec import GUIDANCE
    from .sweep import guidance_sweep

    GUIDANCE.get(args.kind)
    scales = validate.number_list(args.scales, "--scales", validate.NON_NEGATIVE)
    rd = RunDir(args.run)
    cfg = rd.config()
    data = rd.dataset()
    k = data.num_classes
    if not k:
        raise UserError("a guidance sweep needs a labelled dataset; this run's dataset has no classes")
    n = args.n_per_class * k
    validate.seeds(args.seed, n)
    per = 4 * math.prod(data.shape) * 3
    validate.memory(per * n, f"{n} samples ({args.n_per_class} per class)", "cpu", per * k,
                    "samples per class")
    out = Path(args.out) if args.out else Path(args.run) / f"guidance-{args.kind}"
    validate.writable_dir(out, "--out")
    device = validate.device(args.device)
    d = cfg.data
    extractor = evaluation_classifier(d.name, root=d.root, resolution=d.resolution, options=d.options,
                                      path=args.extractor_path, device=device)
    rows = guidance_sweep(args.run, args.kind, scales, n_per_class=args.n_per_class, extractor=extractor,
                          classifier_dir=args.classifier, sampler=args.sampler, steps=args.steps, grid=args.grid,
                          seed=args.seed, out_dir=out, device=device)
    print(f"{'scale':>6} {'class acc':>9} {'FID':>9} {'IS':>7}   ({args.kind} guidance, {args.n_per_class} samples per class, "
          f"extractor {extractor.name} {extractor.weights_hash})")
    for r in rows:
        print(f"{r['scale']:>6g} {r['class_accuracy']:>9.3f} {r['fid']:>9.3f} {r['is']:>7.3f}")
    print(f"table and plot: {out}")
    return 0
