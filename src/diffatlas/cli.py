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
    "diffatlas.metrics.commands",   # train-classifier, evaluate, curves, sample-size
    "diffatlas.guidance.commands",  # guidance-sweep
    "diffatlas.study.commands",     # study plan/run/status, report, quickstart
    "diffatlas.study.calibration",  # calibrate
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"diffatlas: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffatlas", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (UserError, UnknownNameError) as e:
        print(f"diffatlas: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffatlas: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
