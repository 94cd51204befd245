"""Subcommands: train, sample, list, doctor.

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import validate
from .errors import UserError
from .validate import COUNT, SEED, STEPS, Range, arg


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run from a config file plus dotted overrides")
    p.add_argument("config", nargs="?", help="YAML config (omit for the defaults: a DDPM on digits)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=2e-4 network.preset=unet-s")
    p.add_argument("--run-dir", "-o", help="run directory (default runs/<dynamics>-<hash>)")
    p.add_argument("--dry-run", action="store_true", help="print the fully resolved config and exit")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest complete snapshot (the default when the run dir holds one)")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    p.set_defaults(func=cmd_train, trailing="overrides")

    p = sub.add_parser("sample", help="sample a trained run and write a grid PNG and an .npz")
    p.add_argument("run", help="run directory")
    p.add_argument("--n", type=arg(COUNT), default=64)
    p.add_argument("--seed", type=arg(SEED), default=0, help="first per-sample seed (sample i uses seed + i)")
    p.add_argument("--sampler", help="sampler name (diffatlas list samplers)")
    p.add_argument("--steps", type=arg(STEPS), help="number of grid steps")
    p.add_argument("--nfe", type=arg(STEPS), help="NFE budget (denoiser evaluations) instead of --steps; the sampler's own plan spends it")
    p.add_argument("--grid", help="time grid (diffatlas list grids)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="sampler option, e.g. eta=0.5")
    p.add_argument("--clip", help="x0 clipping: auto (static for images), none, static, dynamic or dynamic:P (default: the run's sample.clip)")
    p.add_argument("--snapshot", default="last", help="kimg of the snapshot, or last")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--class", dest="klass", type=arg(Range(0, validate.COUNT_MAX, integer=True)),
                   help="class label for conditional sampling")
    p.add_argument("--guidance", help="classifier:SCALE or cfg:W")
    p.add_argument("--classifier", help="noise-aware classifier directory (for classifier guidance)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="PNG path (default RUN/samples/<snapshot>-<sampler>-<steps>.png)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("list", help="registered names of each axis")
    p.add_argument("axis", nargs="?", help="one axis: datasets, networks, dynamics, schedules, grids, "
                                            "parameterizations, weightings, samplers, extractors")
    p.add_argument("--shape", default=None, help="with networks: C,H,W to count parameters/FLOPs at (default per preset)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("snr-plot", help="plot log-SNR of several dynamics/schedules on one axis")
    p.add_argument("dynamics", nargs="+", metavar="NAME[:KEY=VALUE,...]",
                   help="e.g. ddpm ddpm:schedule=cosine ncsn ve vp:beta_max=10")
    p.add_argument("--x", choices=["t", "fraction"], default="t",
                   help="normalized time, or fraction of sampling steps of each one's default grid")
    p.add_argument("--out", default="log-snr.png")
    p.set_defaults(func=cmd_snr_plot)

    p = sub.add_parser("doctor", help="check that a run's network uses its noise level (and class label)")
    p.add_argument("run", help="run directory")
    p.add_argument("--snapshot", default="last")
    p.set_defaults(func=cmd_doctor)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import config_hash, dump_yaml, load_config
    from .train import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config] + overrides  # no config file: only overrides
    cfg = load_config(config, overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        digest = config_hash(cfg)[:8]
        run_dir = Path("runs") / f"{cfg.dynamics.name}-{cfg.data.name}-{digest}"
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]
    done = train(cfg, run_dir, progress=progress)
    print(f"run: {run_dir}  (kimg {done['kimg']:g}, config {run_dir / 'config.yaml'}, stats {run_dir / 'stats.jsonl'}, "
          f"snapshots {run_dir / 'snapshots'})")
    if done.get("doctor_ok") is False:
        print(f"diffatlas: error: the trained network failed the doctor's check; see {run_dir / 'doctor.json'}", file=sys.stderr)
        return 1
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .config import parse_key_values
    from .draw import draw_samples

    res = draw_samples(args.run, n=args.n, seed=args.seed, sampler=args.sampler, steps=args.steps, nfe=args.nfe,
                       grid=args.grid, options=parse_key_values(args.option, "--option", "eta=0.5"), clip=args.clip, snapshot=args.snapshot,
                       ema=not args.raw, klass=args.klass, guidance=args.guidance, classifier=args.classifier,
                       out=args.out, device=args.device)
    budget = f" of a budget of {res['nfe_budget']}" if res["nfe_budget"] else ""
    print(f"{args.n} samples ({res['sampler']}, {res['steps']} steps on the {res['grid']} grid, NFE {res['nfe']}{budget}, "
          f"x0 clip {res['clip']}, snapshot kimg {res['kimg']:g}): {res['png']}  {res['npz']}")
    return 0


AXES = {
    "datasets": ("diffatlas.data", "DATASETS"),
    "networks": ("diffatlas.networks", "PRESETS"),
    "dynamics": ("diffatlas.dynamics", "DYNAMICS"),
    "schedules": ("diffatlas.schedules", "BETA_SCHEDULES"),
    "grids": ("diffatlas.schedules", "GRIDS"),
    "parameterizations": ("diffatlas.parameterization", "PARAMETERIZATIONS"),
    "weightings": ("diffatlas.losses", "WEIGHTINGS"),
    "samplers": ("diffatlas.samplers", "SAMPLERS"),
    "extractors": ("diffatlas.metrics", "EXTRACTORS"),
    "metrics": ("diffatlas.metrics", "METRICS"),
    "guidance": ("diffatlas.guidance", "GUIDANCE"),
}


def cmd_list(args: argparse.Namespace) -> int:
    import importlib

    axes = [args.axis] if args.axis else list(AXES)
    for axis in axes:
        if axis not in AXES:
            raise UserError(f"unknown axis {axis!r}; choose one of: {', '.join(AXES)}")
        module, attr = AXES[axis]
        reg = getattr(importlib.import_module(module), attr)
        print(f"{axis}:")
        if axis == "networks":
            _list_networks(args.shape)
            continue
        for e in reg.entries():
            print(f"  {e.name:<18} {e.description}")
    return 0


def _list_networks(shape_arg: str | None) -> None:
    from .networks import describe_presets

    shape = tuple(validate.number_list(shape_arg, "--shape", Range(1, 65536, integer=True))) if shape_arg else None
    rows = describe_presets(shape)
    print(f"  {'preset':<16} {'family':<12} {'shape':<12} {'params':>12} {'fwd GFLOPs':>11}  description")
    for r in rows:
        shp = "x".join(str(v) for v in r["shape"])
        if r["params"] is None:
            print(f"  {r['name']:<16} {r['family']:<12} {shp:<12} {'-':>12} {'-':>11}  {r['description']}")
            continue
        print(f"  {r['name']:<16} {r['family']:<12} {shp:<12} {r['params']:>12,} {r['flops'] / 1e9:>11.3f}  {r['description']}")


def cmd_snr_plot(args: argparse.Namespace) -> int:
    from .config import _call_defaults, parse_value
    from .dynamics import DYNAMICS
    from .dynamics.plot import plot_log_snr

    validate.figure_path(args.out, "--out")
    procs = {}
    for spec in args.dynamics:
        name, _, opts = spec.partition(":")
        given = {}
        for item in filter(None, opts.split(",")):
            if "=" not in item:
                raise UserError(f"{spec!r}: options must be KEY=VALUE, e.g. ddpm:schedule=cosine")
            k, v = item.split("=", 1)
            given[k.strip()] = parse_value(v)
        cls = DYNAMICS.get(name)
        opts = _call_defaults(cls.__init__, given, "dynamics")
        validate.config_numbers("dynamics", opts)
        try:
            procs[spec] = cls(**opts)
        except (TypeError, ValueError) as e:
            raise UserError(f"{spec}: {e}") from None
    out = plot_log_snr(procs, args.out, x=args.x)
    print(f"log-SNR of {', '.join(procs)} against {'normalized time' if args.x == 't' else 'fraction of sampling steps'}: {out}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .data import dataset_from_config
    from .doctor import DOCTOR_FILE, check_run
    from .sampling import load_run

    run = load_run(args.run, args.snapshot)
    validate.writable_file(Path(args.run) / DOCTOR_FILE, "doctor record")
    report = check_run(run.denoiser, dataset_from_config(run.cfg.data), args.run, num_classes=run.num_classes)
    print(json.dumps(report.to_dict(), indent=1))
    if not report.ok:
        print("diffatlas: error: " + "; ".join(report.problems), file=sys.stderr)
        return 1
    return 0
