"""CLI: `diffatlas import diffusers PATH --run-dir RUN` and `diffatlas export diffusers RUN OUT`.

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="turn a model trained elsewhere into a run directory")
    isub = p.add_subparsers(dest="import_format", required=True, parser_class=type(p))
    q = isub.add_parser("diffusers", help="a diffusers DDPM-family folder (UNet2DModel + scheduler) -> a finished run "
                                          "that sample, evaluate, doctor and studies use")
    q.add_argument("path", help="the diffusers folder (unet/ and scheduler/, as DDPMPipeline.save_pretrained writes it)")
    q.add_argument("overrides", nargs="*",
                   help="data.* (the dataset the model makes, e.g. data.name=cifar10 data.root=DIR) and sample.* keys")
    q.add_argument("--run-dir", "-o", required=True, help="the new run directory (must not exist or be empty)")
    q.add_argument("--kimg", type=float, default=None,
                   help="training length of the model in thousands of images, when known (default: stated as 0, unknown)")
    q.set_defaults(func=cmd_import_diffusers)

    p = sub.add_parser("export", help="write a run's snapshot in another ecosystem's format")
    esub = p.add_subparsers(dest="export_format", required=True, parser_class=type(p))
    q = esub.add_parser("diffusers", help="a ddpm or vp run with the DDPM U-Net (or an imported UNet2DModel) -> a "
                                          "DDPMPipeline folder")
    q.add_argument("run", help="run directory")
    q.add_argument("out", help="output folder (must not exist or be empty)")
    q.add_argument("--snapshot", default="last", help="kimg of the snapshot, or last")
    q.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    q.add_argument("--timesteps", type=int, default=None,
                   help="steps of the DDPM discretization of a vp run (default 1000; a ddpm run keeps its own)")
    q.set_defaults(func=cmd_export_diffusers)


def cmd_import_diffusers(args: argparse.Namespace) -> int:
    from .diffusers_import import import_diffusers

    rec = import_diffusers(args.path, args.run_dir, args.overrides, kimg=args.kimg)
    dyn = rec["dynamics"]
    print(f"run: {rec['run_dir']}  (ddpm, {dyn['steps']} steps, {dyn['schedule']} betas {dyn['beta_min']:g}..{dyn['beta_max']:g}, "
          f"{rec['parameterization']} prediction, snapshot kimg {rec['kimg']:g}; max |output difference| against the "
          f"UNet2DModel {rec['check_max_abs_diff']:.2g})")
    return 0


def cmd_export_diffusers(args: argparse.Namespace) -> int:
    from .diffusers_export import export_diffusers

    export_diffusers(args.run, args.out, snapshot=args.snapshot, ema=not args.raw, timesteps=args.timesteps)
    return 0
