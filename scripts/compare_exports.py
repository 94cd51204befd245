#!/usr/bin/env python3
"""Compare two exports of a study (folders written by `diffatlas study export`): the final value of
every run, metric and evaluation setting (results.csv) and every curve point (curves.csv) that both
hold, matched by run id (a run's id hashes its resolved config, so one id is one configuration and
seed). Prints, per file, how many numbers match exactly, the largest absolute and relative
differences, and what only one side has. Used to check that re-running a committed study reproduces
its numbers:

    python scripts/compare_exports.py OLD_EXPORT NEW_EXPORT [--tolerance REL]

Exit code 0 when every shared number agrees within REL (relative; default 0: bit-identical), 1 when
one does not or no run is in both, 2 on bad input.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

KEYS = {"results.csv": ("run", "evaluation", "metric", "kimg", "n"), "curves.csv": ("run", "evaluation", "metric", "n", "kimg")}


def read(path: Path, key: tuple[str, ...]) -> dict[tuple, float]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and any(k not in rows[0] for k in (*key, "value")):
        raise ValueError(f"{path} has no column {[k for k in (*key, 'value') if k not in rows[0]]}")
    return {tuple(r[k] for k in key): float(r["value"]) if r["value"] not in ("", "null") else math.nan for r in rows}


def compare(old: dict[tuple, float], new: dict[tuple, float]) -> dict:
    shared = sorted(set(old) & set(new))
    exact, worst_abs, worst_rel, worst_key = 0, 0.0, 0.0, None
    for k in shared:
        a, b = old[k], new[k]
        if a == b or (math.isnan(a) and math.isnan(b)):
            exact += 1
            continue
        d = abs(a - b)
        rel = d / max(abs(a), abs(b), 1e-300)
        if rel > worst_rel:
            worst_key = k
        worst_abs, worst_rel = max(worst_abs, d), max(worst_rel, rel)
    return {"shared": len(shared), "exact": exact, "max_abs": worst_abs, "max_rel": worst_rel, "worst": worst_key,
            "only_old": len(set(old) - set(new)), "only_new": len(set(new) - set(old)),
            "runs_shared": len({k[0] for k in shared})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--tolerance", type=float, default=0.0, help="largest relative difference accepted (default 0)")
    a = p.parse_args(argv)
    worst, shared = 0.0, 0
    for name, key in KEYS.items():
        try:
            old, new = read(a.old / name, key), read(a.new / name, key)
        except (OSError, ValueError) as e:
            print(f"error: {e}; give two folders written by `diffatlas study export`", file=sys.stderr)
            return 2
        c = compare(old, new)
        worst, shared = max(worst, c["max_rel"]), shared + c["shared"]
        line = (f"{name}: {c['shared']} numbers of {c['runs_shared']} runs in both, {c['exact']} identical; "
                f"largest difference {c['max_abs']:.3g} absolute, {c['max_rel']:.3g} relative")
        if c["worst"] is not None:
            line += f" (at {', '.join(c['worst'])})"
        line += f"; only in {a.old}: {c['only_old']}, only in {a.new}: {c['only_new']}"
        print(line)
    if not shared:
        print("no run is in both exports: nothing was reproduced (a run's id changes with its config)")
        return 1
    return 0 if worst <= a.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
