"""A study's results as plain files, to publish beside the report and to rebuild the report from.

`diffatlas study export OUT DEST` writes into DEST:

* results.csv: one row per final number (run, evaluation setting, metric): the run's labels (one
  column per label, seed among them), the evaluation setting, metric, value, kimg, n, extractor and
  how it was sampled (sampler, grid, steps, nfe, nfe_budget, clip, guidance, options, setting), the
  metric's direction, and the convergence point the report shows (converged_kimg, plateau, settled)
  with the training budget it is bounded by;
* curves.csv: every point of every training curve (the same identity columns, n, kimg, value);
* sweeps.csv: the n sweep of each curve at its last snapshot (n, kimg, value), if any;
* draws.csv: the independent draws (evaluation.draws) at their last snapshot (n, kimg, draw_seed,
  value), if any;
* runs.csv: every run of the study: id, labels, status, attempts, error, folder, resolved config
  (JSON) and its facts (JSON, study.results.run_facts: parameters, data shape, device, training wall
  seconds, start and finish; older exports lack the column);
* export.json: what the files hold (study name, axes, metrics, n, budget, evaluation plan) and the
  sample grids of the report (samples/*.png, with their captions);
* tuning.json: a study's tuning (its `tune` section, study.tuning), as the study folder holds it;
* study.yaml: the study file as run; provenance.json: the command, the code's git commit, the
  machine (platform, CPUs, torch) and the date.

`diffatlas report DEST` builds the same report from these files alone (no ledger, runs or networks).

Cells are written so that they read back as the same values: an empty cell is a field the entry
did not record; a number, true/false or null (recorded as none) is JSON; text is written as itself
unless it would read as one of those, then as a JSON string ("8" for the text 8)."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_text
from .ledger import RunRow
from .results import SAMPLED_FIELDS, RunResult, StudyResults, load_results
from .statistics import EVAL_KEY
from .tuning import TUNING_FILE

FORMAT = 1
ID = ("run",)                     # then one column per label, then "evaluation", "metric"
SAMPLING = ("sampler", "grid", "steps", "nfe", "nfe_budget", "clip", "guidance", "options", "setting")
RESULTS_TAIL = ("value", "kimg", "n", "extractor", *SAMPLING, "sampling", "higher_is_better", "converged_kimg",
                "plateau", "settled", "budget_kimg")
CURVES_TAIL = ("n", "kimg", "value")
SWEEPS_TAIL = ("n", "kimg", "value")
DRAWS_TAIL = ("n", "kimg", "draw_seed", "value")
RUNS_TAIL = ("position", "status", "attempts", "error", "run_dir", "config")
RUNS_OPTIONAL = ("facts",)        # absent from exports written before it was recorded
FIXED = {"run", "evaluation", "metric", *RESULTS_TAIL, *DRAWS_TAIL, *RUNS_TAIL, *RUNS_OPTIONAL}
assert set(SAMPLING) == set(SAMPLED_FIELDS)
ABSENT = object()


def encode(v: Any) -> str:
    """One cell: '' for a field not recorded, JSON for numbers, booleans, null, lists and mappings,
    text as itself unless it would read back as something else."""
    if v is ABSENT:
        return ""
    if isinstance(v, str):
        if v == "":
            return '""'
        try:
            json.loads(v)
        except ValueError:
            return v
        return json.dumps(v)
    return json.dumps(v)


def decode(s: str) -> Any:
    """The value of a cell written by encode (ABSENT for an empty cell)."""
    if s == "":
        return ABSENT
    try:
        return json.loads(s)
    except ValueError:
        return s


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([encode(v) for v in row])
    return buf.getvalue()


def _label_keys(res: StudyResults) -> list[str]:
    keys: list[str] = []
    for r in res.runs:
        for k in r.labels:
            if k not in keys:
                keys.append(k)
    clash = sorted(set(keys) & FIXED)
    if clash:
        raise UserError(f"label {clash[0]!r} has the name of a column of the export; rename that axis")
    return keys


def _ident(r: RunResult, keys: list[str], ev: str | None = None, metric: str | None = None) -> list[Any]:
    row = [r.id] + [r.labels.get(k, ABSENT) for k in keys]
    if ev is not None:
        row += [ev, metric]
    return row


def _relative(run_dir: str, out: Path) -> str:
    p = Path(run_dir)
    try:
        return str(p.resolve().relative_to(out.resolve()))
    except (OSError, ValueError):
        return p.name


def git_commit(where: Path | None = None) -> dict:
    """The git commit of the code (the package's own checkout) and whether the code's tracked files (the
    package and pyproject.toml; not results, which an export itself may be rewriting) differ from it."""
    where = where or Path(__file__).resolve().parents[3]
    package = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        code = [str(p) for p in (package, Path(where) / "pyproject.toml") if p.exists()]
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no", "--", *code],
                               capture_output=True, text=True, timeout=30, check=False)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def provenance(command: str | None = None) -> dict:
    """Where an export came from: the command, the code's commit, the machine and the date."""
    import torch

    return {"command": command if command is not None else " ".join(["diffatlas", *sys.argv[1:]]),
            "diffatlas": __version__, "code": git_commit(),
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                        "torch": torch.__version__,
                        "cuda": torch.version.cuda if torch.cuda.is_available() else None},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_export(res: StudyResults, dest: str | Path, *, study_yaml: str | None = None,
                 grids: tuple[list, list[str]] = ([], []), command: str | None = None) -> dict[str, Path]:
    """Write `res` into `dest` (see the module docstring); every file atomically. `grids`: the report's
    sample-grid figures (objects with name, png, caption) and its notes on the runs left out.
    Returns file name -> path of what was written."""
    dest = Path(dest)
    keys = _label_keys(res)
    ident = list(ID) + keys
    files: dict[str, str] = {}

    def put(name: str, text: str) -> None:
        files[name] = text

    recs = {(r["run"], r["labels"][EVAL_KEY], r["metric"]): r for r in res.records()}
    rows = []
    for r in res.runs:
        for (metric, ev) in r.curves:
            rec = recs.get((r.id, ev, metric))
            if rec is None:
                continue
            s = r.sampled.get((metric, ev), {})
            rows.append(_ident(r, keys, ev, metric) + [
                rec["final"], rec["final_kimg"], res.n, r.extractor.get((metric, ev), ABSENT),
                *[s.get(f, ABSENT) for f in SAMPLING],
                r.sampling.get(ev, ABSENT), r.higher_is_better.get(metric, ABSENT), rec["converged_kimg"],
                rec["plateau"], rec["settled"], rec["budget_kimg"]])
    put("results.csv", _csv_text(ident + ["evaluation", "metric", *RESULTS_TAIL], rows))
    put("curves.csv", _csv_text(ident + ["evaluation", "metric", *CURVES_TAIL],
                                [_ident(r, keys, ev, m) + [res.n, k, v]
                                 for r in res.runs for (m, ev), c in r.curves.items() for k, v in c]))
    sweeps = [_ident(r, keys, ev, m) + [n, r.sweep_kimg.get((m, ev), ABSENT), v]
              for r in res.runs for (m, ev), d in r.sweeps.items() for n, v in d.items()]
    if sweeps:
        put("sweeps.csv", _csv_text(ident + ["evaluation", "metric", *SWEEPS_TAIL], sweeps))
    draws = [_ident(r, keys, ev, m) + [d["n"], d["kimg"], s, v]
             for r in res.runs for (m, ev), d in r.draws.items() for s, v in zip(d["seeds"], d["values"])]
    if draws:
        put("draws.csv", _csv_text(ident + ["evaluation", "metric", *DRAWS_TAIL], draws))
    put("runs.csv", _csv_text(ident + list(RUNS_TAIL) + list(RUNS_OPTIONAL), [
        _ident(r, keys) + [r.row.position, r.row.status, r.row.attempts, r.row.error, _relative(r.row.run_dir, res.out),
                           r.row.config, r.facts] for r in res.runs]))
    tuning = Path(res.out) / TUNING_FILE
    if tuning.is_file():  # a study with `tune`: the record the report's "What was tuned" reads
        put(TUNING_FILE, read_text(tuning, "tuning record", "move it away and run `diffatlas study run` to decide again"))
    figures, notes = grids
    samples = []
    pngs: dict[str, bytes] = {}
    for f in figures:
        name = "samples/" + "".join(c if c.isalnum() or c in "-_." else "_" for c in f.name)[:80] + ".png"
        pngs[name] = f.png
        samples.append({"name": f.name, "file": name, "caption": f.caption})
    meta = {"format": FORMAT, "name": res.name, "axes": res.axes, "metrics": res.metrics, "n": res.n,
            "budget_kimg": res.budget_kimg, "guided": res.guided, "evaluation": res.evaluation,
            "label_columns": keys, "samples": samples, "sample_notes": notes,
            "files": sorted([*files, *pngs, "export.json", "provenance.json"] + (["study.yaml"] if study_yaml else []))}
    old = _previous_files(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in pngs.items():
        atomic_write_bytes(dest / name, data)
    for name, text in files.items():
        atomic_write_text(dest / name, text)
    if study_yaml:
        atomic_write_text(dest / "study.yaml", study_yaml)
    atomic_write_json(dest / "provenance.json", provenance(command), indent=2)
    atomic_write_json(dest / "export.json", meta, indent=2)
    for name in old - set(meta["files"]):  # what an earlier export wrote that this one does not hold
        (dest / name).unlink(missing_ok=True)
    return {name: dest / name for name in meta["files"]}


def _previous_files(dest: Path) -> set[str]:
    try:
        files = json.loads((dest / "export.json").read_text()).get("files") or []
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and len(Path(f).parts) <= 2 and ".." not in Path(f).parts
            and (len(Path(f).parts) == 1 or Path(f).parts[0] == "samples")}


# ---- reading an export back --------------------------------------------------------------------

def _rows(dest: Path, name: str, needed: tuple[str, ...], required: bool = True) -> list[dict[str, Any]]:
    path = dest / name
    if not path.exists() and not required:
        return []
    text = read_text(path, f"exported {name}", "export the study again with `diffatlas study export`")
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        missing = [c for c in needed if c not in header]
        if missing:
            raise UserError(f"{str(path)!r} lacks the column {missing[0]!r}; export the study again with "
                            "`diffatlas study export`")
        rows = []
        for i, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise UserError(f"{str(path)!r} line {i}: {len(header)} cells expected; the file is damaged")
            rows.append({k: decode(v) for k, v in row.items()})
        return rows
    except csv.Error as e:
        raise UserError(f"{str(path)!r} is not a readable CSV file ({e}); export the study again") from None


def _num(row: dict, key: str, path: str, kind: type = float, optional: bool = False) -> Any:
    v = row.get(key, ABSENT)
    if optional and v in (ABSENT, None):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{path}: column {key!r} holds {v if v is not ABSENT else 'nothing'!r}, not a number; "
                        "the file is damaged")
    return kind(v)


def load_export(dest: str | Path) -> StudyResults:
    """The StudyResults of an export folder: what build_report needs, read from the files alone."""
    dest = Path(dest)
    if not (dest / "results.csv").is_file():
        raise UserError(f"{str(dest)!r} holds no exported results (no results.csv); export a study with "
                        "`diffatlas study export OUT DEST`")
    try:
        meta = json.loads(read_text(dest / "export.json", "export description", "export the study again"))
        keys = [str(k) for k in meta["label_columns"]]
        name, axes, metrics = str(meta["name"]), list(meta["axes"]), list(meta["metrics"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{str(dest / 'export.json')!r} is damaged ({type(e).__name__}: {e}); export the study again") from None
    ident = (*ID, *keys)
    runs: dict[str, RunResult] = {}
    for row in _rows(dest, "runs.csv", (*ident, *RUNS_TAIL)):
        rid = str(row["run"])
        labels = {k: row[k] for k in keys if row[k] is not ABSENT}
        config = row["config"]
        if not isinstance(config, dict):
            raise UserError(f"{str(dest / 'runs.csv')!r}: run {rid!r} has no readable config; the file is damaged")
        err = row["error"]
        rr = RunResult(RunRow(rid, int(_num(row, "position", "runs.csv", int)), str(row["status"]),
                              int(_num(row, "attempts", "runs.csv", int)), None, None, None, None,
                              None if err in (ABSENT, None) else str(err), str(dest / str(row["run_dir"])), config, labels))
        facts = row.get("facts", ABSENT)
        if facts not in (ABSENT, None):
            if not isinstance(facts, dict):
                raise UserError(f"{str(dest / 'runs.csv')!r}: run {rid!r} has unreadable facts; the file is damaged")
            rr.facts = facts
        runs[rid] = rr

    def run_of(row: dict, name: str) -> tuple[RunResult, tuple[str, str]]:
        rid = str(row["run"])
        if rid not in runs:
            raise UserError(f"{str(dest / name)!r}: run {rid!r} is not in runs.csv; the export is incomplete")
        return runs[rid], (str(row["metric"]), str(row["evaluation"]))

    curves: dict[str, dict[tuple[str, str], list]] = defaultdict(lambda: defaultdict(list))
    for row in _rows(dest, "curves.csv", (*ident, "evaluation", "metric", *CURVES_TAIL)):
        rr, key = run_of(row, "curves.csv")
        curves[rr.id][key].append((_num(row, "kimg", "curves.csv"), _num(row, "value", "curves.csv")))
    for rid, by_key in curves.items():
        runs[rid].curves = {k: sorted(v) for k, v in by_key.items()}
    for row in _rows(dest, "results.csv", (*ident, "evaluation", "metric", *RESULTS_TAIL)):
        rr, key = run_of(row, "results.csv")
        rr.sampled[key] = {f: row[f] for f in SAMPLED_FIELDS if row[f] is not ABSENT}
        if row["extractor"] is not ABSENT:
            rr.extractor[key] = row["extractor"]
        if row["higher_is_better"] is not ABSENT:
            rr.higher_is_better[key[0]] = row["higher_is_better"]
        g = row["guidance"]
        if g not in (ABSENT, None, "none"):
            rr.guidance[key[1]] = str(g)
        if row["sampling"] is not ABSENT:
            rr.sampling[key[1]] = str(row["sampling"])
    for row in _rows(dest, "sweeps.csv", (*ident, "evaluation", "metric", *SWEEPS_TAIL), required=False):
        rr, key = run_of(row, "sweeps.csv")
        rr.sweeps.setdefault(key, {})[_num(row, "n", "sweeps.csv", int)] = _num(row, "value", "sweeps.csv")
        if row["kimg"] is not ABSENT:
            rr.sweep_kimg[key] = _num(row, "kimg", "sweeps.csv")
    for row in _rows(dest, "draws.csv", (*ident, "evaluation", "metric", *DRAWS_TAIL), required=False):
        rr, key = run_of(row, "draws.csv")
        d = rr.draws.setdefault(key, {"n": _num(row, "n", "draws.csv", int), "kimg": _num(row, "kimg", "draws.csv"),
                                      "seeds": [], "values": []})
        d["seeds"].append(_num(row, "draw_seed", "draws.csv", int))
        d["values"].append(_num(row, "value", "draws.csv"))
    figures = []
    for s in meta.get("samples") or []:
        path = dest / str(s["file"])
        if not path.is_file() or ".." in Path(str(s["file"])).parts:
            raise UserError(f"{str(path)!r} (a sample grid of the export) is missing; export the study again")
        figures.append((str(s["name"]), path, str(s["caption"])))
    res = StudyResults(dest, name, list(runs.values()), axes, metrics, meta.get("budget_kimg"), meta.get("n"),
                       bool(meta.get("guided")), meta.get("evaluation") or {})
    res.sample_grids = (figures, [str(x) for x in meta.get("sample_notes") or []])
    return res


def load_any(out: str | Path) -> StudyResults:
    """A study output folder (ledger.sqlite) or an exported one (results.csv), whichever `out` is."""
    out = Path(out)
    if not (out / "ledger.sqlite").exists() and (out / "results.csv").exists():
        return load_export(out)
    return load_results(out)
