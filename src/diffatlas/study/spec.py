"""Study specification: a base config, axes of variation and seeds, expanded into runs.

A study file (YAML) reads

    name: ddpm-vs-ncsn
    base: {data: {name: digits}, network: {preset: unet-xs}}   # or base_file: path/to/config.yaml
    axes:
      - product: {dynamics.name: [ddpm, ncsn]}                 # every combination of the values
      - zip: {model.parameterization: [eps, x0], model.weighting: [simple, snr]}  # values side by side
      - variants:                                              # explicit combinations (keys may differ)
          - {dynamics.name: ddpm, dynamics.schedule: linear}
          - {dynamics.name: ncsn}
    seeds: [0, 1, 2]            # sets train.seed
    budget_kimg: 200            # sets train.kimg
    evaluation:
      metrics: [fid, is]
      n: 1000
      every_kimg: 50            # sets train.snapshot_kimg: every snapshot is evaluated
      samplers: [{sampler: heun, steps: 18}, {sampler: ddim, steps: 50}]
      n_sweep: [250, 500, 1000] # extra evaluations of the final snapshot at these sample counts
      draws: {n: 500, count: 4} # independent evaluations of the final snapshot on disjoint seed ranges
      sample_grid: 16           # samples per PNG grid each evaluated snapshot writes for the report (0: none)
    max_attempts: 2
    executor: {name: slurm, gpus_per_run: 1, slurm: {partition: gpu}}   # where runs execute (study.executors)
    arm: original               # optional: original | harmonised, for a replication summary (see below)
    tune:                       # optional: an equal tuning budget per configuration before the seeded runs
      seed: 100                 # a held-out seed (not one of `seeds`)
      grid: {train.lr: [3.0e-4, 1.0e-3, 3.0e-3]}   # config key -> candidates (a product over several keys)
      metric: fid               # default: the first of evaluation.metrics
      setting: 0                # the evaluation setting that decides (an index of evaluation.samplers)
      budget_kimg: 24           # default: the study's budget_kimg

`arm` (optional, never part of a run) says which arm of a replication a study is: `original`, each
process trained with its paper's recipe, or `harmonised`, the same comparisons with one recipe for
every process. `diffatlas report PART ... -o OUT` (report.summary) reads it to say whether a verdict
of the original arm survives the harmonised one, i.e. whether it belongs to the process or to its recipe.

With `tune`, every configuration (one combination of the axes) first trains the held-out seed once
per grid candidate and evaluates its final snapshot with the deciding setting only (the tuning
runs); its seeded runs then take the best candidate (study.tuning). Tuning runs carry the label
`phase: tuning` and are never part of the comparison.

An evaluation-only study names finished runs (trained, or imported with `diffatlas import`) instead
of axes, seeds and a budget; each is evaluated with every `evaluation.samplers` setting, in place:

    name: samplers-on-fixed-models
    models: {ddpm-cifar10: runs/google-ddpm, mine: runs/ddpm-a1b2}   # label -> run directory (or a list)
    evaluation: {metrics: [fid], samplers: [{sampler: ddim, steps: 10}, {sampler: ddim, steps: 50}]}

Groups combine by Cartesian product; a run is base + one combination + one seed. Its id is a
short SHA-256 of its resolved config (JSON with sorted keys), so the same run gets the same id
and output folder in every study that contains it. Report labels are the axis values.

This module reads and checks a study file; what it builds lives in study.design (Study, RunSpec,
Tune: the expansion into runs) and study.eval_spec (Evaluation and the `evaluation:` section's
parsing), and is re-exported here.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from .. import config as C
from .. import validate
from ..config import parse_yaml_file
from ..errors import UserError
from ..validate import KIMG_MAX, SEED, Range
from .design import PHASE_KEY, TUNING, RunSpec, Study, Tune, is_tuning, run_id, short_key
from .eval_spec import EVAL_KEYS, SETTING_KEYS, Evaluation, parse_evaluation, setting_kwargs
from .executors import parse_executor

# The names other modules import from here: the study's design and evaluation section are re-exported.
__all__ = ["ARMS", "EVAL_KEYS", "PHASE_KEY", "RESERVED", "SETTING_KEYS", "STUDY_KEYS", "TRAINING_KEYS", "TUNE_KEYS",
           "TUNING", "Evaluation", "RunSpec", "Study", "Tune", "check_key", "is_tuning", "load_study", "parse_arm",
           "run_id", "setting_kwargs", "short_key", "study_from_dict"]

STUDY_KEYS = ("name", "description", "base", "base_file", "axes", "seeds", "budget_kimg", "evaluation", "max_attempts",
              "executor", "models", "arm", "tune")
ARMS = ("original", "harmonised")   # values of the optional `arm` key ("harmonized" reads as "harmonised")
# What an evaluation-only study (models) cannot have: it trains nothing.
TRAINING_KEYS = ("base", "base_file", "axes", "seeds", "budget_kimg", "tune")
TUNE_KEYS = ("seed", "grid", "metric", "setting", "budget_kimg")
# Keys the study sets itself; an axis over them would fight with `seeds`, `budget_kimg`, `every_kimg`.
RESERVED = {"train.seed": "seeds", "train.kimg": "budget_kimg"}
# Sections whose extra keys are keyword arguments of a registry object (checked by config.resolve).
_OPTION_SECTIONS = {name for name, cls in C._SECTION_CLASSES.items() if "options" in {f.name for f in fields(cls)}}


# ---- parsing ---------------------------------------------------------------------------------

def check_key(key: Any, where: str) -> str:
    """An axis key must name a config section and a key of it (or an option of its registry object)."""
    if not isinstance(key, str) or "." not in key:
        raise UserError(f"{where}: axis key {key!r} must be a dotted config key such as dynamics.name or train.lr")
    section, _, rest = key.partition(".")
    if section not in C._SECTION_CLASSES:
        raise UserError(f"{where}: axis key {key!r} names no config section{C._suggest(section, list(C.SECTIONS))}; "
                        f"sections: {', '.join(C.SECTIONS)}")
    names = [f.name for f in fields(C._SECTION_CLASSES[section])]
    head = rest.split(".")[0]
    if not head:
        raise UserError(f"{where}: axis key {key!r} is incomplete")
    if head not in names and section not in _OPTION_SECTIONS:
        raise UserError(f"{where}: axis key {key!r}: {section} has no key {head!r}{C._suggest(head, names)}; "
                        f"valid keys: {', '.join(names)}")
    if "." in rest and head != "options":
        raise UserError(f"{where}: axis key {key!r} is nested too deep; use section.key")
    if key in RESERVED:
        raise UserError(f"{where}: {key} is set by the study's `{RESERVED[key]}`; do not vary it as an axis")
    return key


def _check_values(values: Any, key: str, where: str) -> list:
    if not isinstance(values, list):
        raise UserError(f"{where}: axis {key} must be a list of values, got {values!r}")
    if not values:
        raise UserError(f"{where}: axis {key} is empty; give at least one value")
    for v in values:
        if isinstance(v, (dict, list)) and not key.endswith(".options"):
            raise UserError(f"{where}: axis {key} value {v!r} must be a number, string or boolean")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise UserError(f"{where}: axis {key} repeats a value: {values!r}")
    return values


def _parse_group(group: Any, i: int) -> dict:
    where = f"axes[{i}]"
    if not isinstance(group, dict) or len(group) != 1:
        raise UserError(f"{where}: each axis group is a mapping with one key: product, zip or variants")
    (kind, body), = group.items()
    if kind in ("product", "zip"):
        if not isinstance(body, dict) or not body:
            raise UserError(f"{where}.{kind}: expected a non-empty mapping of config keys to lists of values")
        cols = {check_key(k, f"{where}.{kind}"): _check_values(v, k, f"{where}.{kind}") for k, v in body.items()}
        if kind == "product":
            keys = list(cols)
            combos = [dict(zip(keys, vals)) for vals in itertools.product(*cols.values())]
        else:
            lengths = {k: len(v) for k, v in cols.items()}
            if len(set(lengths.values())) != 1:
                raise UserError(f"{where}.zip: lists must have equal lengths, got "
                                + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
            n = next(iter(lengths.values()))
            combos = [{k: v[j] for k, v in cols.items()} for j in range(n)]
    elif kind == "variants":
        if not isinstance(body, list) or not body:
            raise UserError(f"{where}.variants: expected a non-empty list of mappings (config key -> value)")
        combos = []
        for j, item in enumerate(body):
            if not isinstance(item, dict) or not item:
                raise UserError(f"{where}.variants[{j}]: expected a non-empty mapping of config keys to values")
            combos.append({check_key(k, f"{where}.variants[{j}]"): v for k, v in item.items()})
        if len({json.dumps(c, sort_keys=True) for c in combos}) != len(combos):
            raise UserError(f"{where}.variants: a variant is repeated")
    else:
        raise UserError(f"{where}: unknown axis group {kind!r}; use product, zip or variants")
    return {"kind": kind, "combos": combos}


def _parse_tune(d: Any, axis_keys: list[str], seeds: Sequence[int], evaluation: Evaluation) -> Tune:
    """The `tune:` section, every part checked against the rest of the study (nothing is trained yet)."""
    if not isinstance(d, dict):
        raise UserError(f"study `tune` must be a mapping with keys {', '.join(TUNE_KEYS)}, got {d!r}")
    validate.known_keys(d, TUNE_KEYS, "tune")
    if "seed" not in d:
        raise UserError("tune.seed is missing: give a held-out seed for the tuning runs (not one of `seeds`)")
    if isinstance(d["seed"], bool) or not isinstance(d["seed"], int):
        raise UserError(f"tune.seed must be an integer (a held-out seed), got {d['seed']!r}")
    seed = int(validate.number(d["seed"], "tune.seed", SEED))
    if seed in seeds:
        raise UserError(f"tune.seed {seed} is one of the study's seeds {list(seeds)}; the tuning seed must be held out")
    grid = d.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise UserError("tune.grid must be a non-empty mapping of config keys to lists of candidate values, "
                        "e.g. {train.lr: [3.0e-4, 1.0e-3]}")
    for key in grid:
        check_key(key, "tune.grid")
        if key in axis_keys:
            raise UserError(f"tune.grid: {key} is also an axis of the study; a key is either compared or tuned, not both")
        _check_values(grid[key], key, "tune.grid")
    metric = d.get("metric", evaluation.metrics[0])
    if metric not in evaluation.metrics:
        raise UserError(f"tune.metric {metric!r} is not one of evaluation.metrics ({', '.join(evaluation.metrics)})")
    setting = d.get("setting", 0)
    if isinstance(setting, bool) or not isinstance(setting, int) or not 0 <= setting < len(evaluation.samplers):
        raise UserError(f"tune.setting must be the index of an evaluation setting, 0 to {len(evaluation.samplers) - 1} "
                        f"(evaluation.samplers has {len(evaluation.samplers)}), got {setting!r}")
    budget = d.get("budget_kimg")
    if budget is not None:
        budget = float(validate.number(budget, "tune.budget_kimg", Range(0, KIMG_MAX, lo_open=True)))
    return Tune(seed, {str(k): list(v) for k, v in grid.items()}, str(metric), int(setting), budget)


def _parse_models(d: dict, base_dir: Path | None) -> tuple[tuple[str, str], ...]:
    """`models`: label -> run directory, or a list of run directories (labelled by folder name)."""
    raw = d["models"]
    if isinstance(raw, list):
        names = [Path(str(p)).name for p in raw]
        if len(set(names)) != len(names):
            raise UserError("study `models`: two run directories share a folder name; give them labels (a mapping)")
        raw = dict(zip(names, raw))
    if not isinstance(raw, dict) or not raw or not all(isinstance(p, str) and p for p in raw.values()):
        raise UserError("study `models` must be a non-empty mapping of labels to run directories (or a list of them)")
    clash = [k for k in TRAINING_KEYS if k in d] + (["evaluation.every_kimg"] if (d.get("evaluation") or {}).get("every_kimg")
                                                    else [])
    if clash:
        raise UserError(f"an evaluation-only study (models) trains nothing; remove {', '.join(clash)}")
    out = []
    for label, path in raw.items():
        p = Path(path)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        out.append((str(label), str(p)))
    return tuple(out)


def study_from_dict(d: Any, source: str | None = None, base_dir: Path | None = None) -> Study:
    """Validate a study mapping; UserError (one line) on any problem."""
    if not isinstance(d, dict):
        raise UserError(f"a study file must be a mapping with keys {', '.join(STUDY_KEYS)}")
    for k in d:
        if k not in STUDY_KEYS:
            raise UserError(f"unknown study key {k!r}{C._suggest(str(k), list(STUDY_KEYS))}; valid keys: {', '.join(STUDY_KEYS)}")
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError("a study needs a `name` (a non-empty string)")
    if not isinstance(d.get("description") or "", str):
        raise UserError(f"study `description` must be a string, got {type(d['description']).__name__}")
    if "base" in d and "base_file" in d:
        raise UserError("give either `base` or `base_file`, not both")
    if "base_file" in d:
        p = Path(str(d["base_file"]))
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        base = C.read_yaml(p)
    else:
        base = d.get("base") or {}
    if not isinstance(base, dict):
        raise UserError("study `base` must be a config mapping (sections data, network, dynamics, model, train, sample)")
    C.from_dict(base)  # unknown sections / keys / types
    axes_raw = d.get("axes") or []
    if not isinstance(axes_raw, list):
        raise UserError("study `axes` must be a list of axis groups (product, zip or variants)")
    axes = tuple(_parse_group(g, i) for i, g in enumerate(axes_raw))
    seeds = d.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"study `seeds` must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"study `seeds` repeats a seed: {seeds!r}")
    for i, s in enumerate(seeds):
        validate.number(s, f"study `seeds[{i}]`", SEED)
    budget = d.get("budget_kimg")
    if budget is not None:
        budget = validate.number(budget, "study `budget_kimg`", Range(0, KIMG_MAX, lo_open=True))
    attempts = int(validate.number(d.get("max_attempts", 2), "study `max_attempts`", Range(1, 1000, integer=True)))
    models = _parse_models(d, base_dir) if "models" in d else ()
    evaluation = parse_evaluation(d.get("evaluation"))
    tune = None
    if "tune" in d:
        axis_keys = [k for g in axes for combo in g["combos"] for k in combo]
        tune = _parse_tune(d["tune"], axis_keys, seeds, evaluation)
    return Study(name.strip(), base, axes, tuple(seeds), None if budget is None else float(budget),
                 evaluation, attempts, str(d.get("description") or ""), source, d,
                 executor=parse_executor(d.get("executor")), models=models, arm=parse_arm(d.get("arm")), tune=tune)


def parse_arm(value: Any) -> str | None:
    """The optional `arm` of a study: None, "original" or "harmonised" (also spelled "harmonized")."""
    if value is None:
        return None
    v = str(value).strip().lower().replace("harmonized", "harmonised")
    if v not in ARMS:
        raise UserError(f"study `arm` must be one of {', '.join(ARMS)}, got {value!r}")
    return v


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (YAML). Touches nothing on disk besides reading."""
    p = Path(path)
    data = parse_yaml_file(p, "study file")
    return study_from_dict(data, source=str(p), base_dir=p.parent)

