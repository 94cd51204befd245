"""diffatlas: controlled, reproducible comparative studies of diffusion models.

Each subcommand lives beside the code it drives and registers itself through an
`add_commands(subparsers)` function of a module listed in COMMAND_MODULES."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError, one_line
from .registry import UnknownNameError

# Modules that contribute subcommands, each with add_commands(subparsers). Keep sorted by topic.
COMMAND_MODULES = [
    "diffatlas.commands",          # train, sample, list, doctor
    "diffatlas.samplers.commands",  # oracle
    "diffatlas.metrics.commands",   # train-classifier
    "diffatlas.evaluation.commands",  # evaluate, curves, sample-size
    "diffatlas.guidance.commands",  # guidance-sweep
    "diffatlas.study.commands",     # study plan/run/status, report, quickstart
    "diffatlas.interop.commands",   # import diffusers, export diffusers
    "diffatlas.study.calibration",  # calibrate
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"diffatlas: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffatlas", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # `train --run-dir D a.b=1`: overrides may follow the options (set_defaults(trailing="overrides"))
        trailing = getattr(args, "trailing", None)
        if extra and trailing and all("=" in e and not e.startswith("-") for e in extra):
            setattr(args, trailing, list(getattr(args, trailing)) + extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, or argparse's one-line usage error: return its exit code
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        rc = args.func(args)
    except (UserError, UnknownNameError) as e:
        print(f"diffatlas: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (disk full, permissions changed meanwhile): not a bug
        if e.filename is None:
            raise
        where = f"{e.filename!r}" + (f" -> {e.filename2!r}" if e.filename2 else "")
        print(f"diffatlas: error: {one_line(e.strerror or str(e))}: {where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffatlas: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
