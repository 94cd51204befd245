"""The evaluation log, RUN/metrics.jsonl: what identifies an entry, reading it back, and choosing
which snapshots an evaluation covers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import list_snapshots, load_meta
from ..errors import UserError
from ..io import json_clean, read_jsonl
from ..rundir import METRICS_FILE

# What identifies an evaluation entry: an entry with the same values is not computed again.
KEY_FIELDS = ("kimg", "metric", "setting", "sampler", "grid", "steps", "options", "clip", "nfe_budget", "guidance",
              "guidance_classifier", "n", "extractor", "extractor_hash", "seed")


def options_text(options: dict[str, Any] | None) -> str:
    return json.dumps(json_clean(options or {}), sort_keys=True)


METRICS_FIELDS = {"kimg": "number", "metric": "string", "value": "number or null"}


def entry_key(entry: dict[str, Any]) -> tuple:
    """The identity of a metrics.jsonl entry (:data:`KEY_FIELDS`); kimg rounded to 1e-6."""
    out = []
    for f in KEY_FIELDS:
        v = entry.get(f)
        if f == "kimg" and v is not None:
            v = round(float(v), 6)
        elif f == "options":
            v = options_text(v if isinstance(v, dict) else {})
        out.append(v)
    return tuple(out)


def read_metrics(run_dir: str | Path, *, dedupe: bool = True) -> list[dict[str, Any]]:
    """Entries of RUN/metrics.jsonl in file order; a torn last line is skipped; with dedupe, one entry
    per :func:`entry_key`, the last written winning (kept at its first position)."""
    entries = read_jsonl(Path(run_dir) / METRICS_FILE, "metrics log", fields=METRICS_FIELDS,
                         fix="delete that line (`diffatlas evaluate` computes missing entries again)")
    if not dedupe:
        return entries
    by: dict[tuple, dict[str, Any]] = {}
    for e in entries:
        by[entry_key(e)] = e
    return list(by.values())


SNAPSHOTS_HELP = "all, last (or latest), 'every K' (about one snapshot per K kimg, and the last), or kimg values 'a,b,c'"


def select_snapshots(run_dir: str | Path, spec: str | float | Sequence[float] = "all") -> list[tuple[float, Path]]:
    """The complete snapshots of a run that `spec` chooses, as (kimg, path), oldest first.

    spec: "all"; "last"/"latest"; "every K" (the first snapshot at or past each multiple of K kimg,
    plus the last); or kimg values ("0.2,0.4" or a list). Raises UserError when the run has no
    complete snapshot or the spec is malformed."""
    snaps = list_snapshots(Path(run_dir))
    if not snaps:
        raise UserError(f"run {str(run_dir)!r} has no complete snapshot yet; train it first (diffatlas train)")
    items = [(float(load_meta(s)["kimg"]), s) for s in snaps]
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = str(spec)
    if not isinstance(spec, str):
        wanted = [float(v) for v in spec]
    else:
        text = spec.strip().lower()
        if text == "all":
            return items
        if text in ("last", "latest"):
            return items[-1:]
        if text.startswith("every"):
            arg = text[len("every"):].strip(" :=")
            try:
                step = float(arg)
            except ValueError:
                raise UserError(f"snapshots {spec!r}: 'every K' needs a number of kimg K; use {SNAPSHOTS_HELP}") from None
            if not step > 0 or not math.isfinite(step):
                raise UserError(f"snapshots {spec!r}: K must be a positive number of kimg")
            out, mark = [], 0.0
            for kimg, s in items:
                if kimg >= mark - 1e-9:
                    out.append((kimg, s))
                    mark = (math.floor(kimg / step + 1e-9) + 1) * step
            if out[-1][1] != items[-1][1]:
                out.append(items[-1])
            return out
        try:
            wanted = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"snapshots {spec!r} not understood; use {SNAPSHOTS_HELP}") from None
    out = []
    for w in wanted:
        hit = [it for it in items if abs(it[0] - w) < 1e-6]
        if not hit:
            raise UserError(f"run {str(run_dir)!r} has no snapshot at kimg {w:g}; it has: "
                            + ", ".join(f"{k:g}" for k, _ in items))
        out.append(hit[0])
    return sorted(set(out), key=lambda it: it[0])
