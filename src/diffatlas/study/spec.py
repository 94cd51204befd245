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
    max_attempts: 2

Groups combine by Cartesian product; a run is base + one combination + one seed. Its id is a
short SHA-256 of its resolved config (JSON with sorted keys), so the same run gets the same id
and output folder in every study that contains it. Report labels are the axis values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence


from .. import config as C
from ..errors import UserError
from ..registry import UnknownNameError

STUDY_KEYS = ("name", "description", "base", "base_file", "axes", "seeds", "budget_kimg", "evaluation", "max_attempts")
EVAL_KEYS = ("metrics", "n", "every_kimg", "samplers", "n_sweep", "extractor", "seed", "draws")
# Keys the study sets itself; an axis over them would fight with `seeds`, `budget_kimg`, `every_kimg`.
RESERVED = {"train.seed": "seeds", "train.kimg": "budget_kimg"}
# Sections whose extra keys are keyword arguments of a registry object (checked by config.resolve).
_OPTION_SECTIONS = {name for name, cls in C._SECTION_CLASSES.items() if "options" in {f.name for f in fields(cls)}}


@dataclass(frozen=True)
class Evaluation:
    """How each run is evaluated. `samplers` is a list of {sampler, steps, guidance} settings (an
    empty mapping = the run's own sampler, unguided; guidance e.g. "classifier:2" is passed to
    evaluate_run); every snapshot is evaluated with every setting. `draws` ({n, count, seed}, or None)
    evaluates the final snapshot `count` more times with the first setting, at n samples each, draw j
    on the per-sample seeds seed + j*n ... seed + (j+1)*n - 1 (disjoint from each other and, by
    default, from the seeds of every other evaluation): the IS-vs-FID stability claim's data."""

    metrics: tuple[str, ...] = ("fid", "is")
    n: int = 1000
    every_kimg: float | None = None
    samplers: tuple[dict, ...] = ({},)
    n_sweep: tuple[int, ...] = ()
    extractor: str = "classifier"
    seed: int = 0
    draws: dict | None = None


@dataclass(frozen=True)
class RunSpec:
    """One run: base + one combination of axis values + one seed, resolved.

    id        12 hex digits of sha256(json(resolved config, sorted keys))
    labels    axis key -> value for this run (axis keys in study order), plus "seed"
    """

    id: str
    index: int
    config: Any  # diffatlas.config.Config, resolved
    labels: dict

    @property
    def config_dict(self) -> dict:
        return C.to_dict(self.config)

    @property
    def seed(self) -> int:
        return int(self.labels["seed"])

    def label(self, keys: Sequence[str] | None = None) -> str:
        keys = list(keys) if keys is not None else [k for k in self.labels if k != "seed"]
        return ", ".join(f"{short_key(k)}={self.labels.get(k, '-')}" for k in keys) or "base"


@dataclass(frozen=True)
class Study:
    name: str
    base: dict
    axes: tuple[dict, ...]          # each: {"kind": product|zip|variants, "combos": [ {key: value} ]}
    seeds: tuple[int, ...]
    budget_kimg: float | None
    evaluation: Evaluation
    max_attempts: int = 2
    description: str = ""
    source: str | None = None
    raw: dict = field(default_factory=dict)

    @property
    def axis_keys(self) -> list[str]:
        """Every config key varied by an axis, in study order."""
        keys: list[str] = []
        for group in self.axes:
            for combo in group["combos"]:
                for k in combo:
                    if k not in keys:
                        keys.append(k)
        return keys

    def combinations(self) -> list[dict]:
        """Cartesian product of the axis groups: a list of {key: value} mappings."""
        groups = [g["combos"] for g in self.axes] or [[{}]]
        out = []
        for parts in itertools.product(*groups):
            combo: dict = {}
            for p in parts:
                combo.update(p)
            out.append(combo)
        return out

    def run_overrides(self, combo: dict, seed: int) -> dict:
        """The plain-dict config of one run (before typing)."""
        data = _deep_copy(self.base)
        for key, value in combo.items():
            _set_dotted(data, key, value)
        _set_dotted(data, "train.seed", int(seed))
        if self.budget_kimg is not None:
            _set_dotted(data, "train.kimg", float(self.budget_kimg))
        if self.evaluation.every_kimg is not None:
            _set_dotted(data, "train.snapshot_kimg", float(self.evaluation.every_kimg))
            _set_dotted(data, "train.keep_snapshots", True)
        return data

    def runs(self, resolve: Callable[[Any], Any] | None = None) -> list[RunSpec]:
        """Expand into runs (combinations x seeds), each resolved; UserError on a bad combination."""
        resolve = resolve or C.resolve
        runs: list[RunSpec] = []
        seen: dict[str, str] = {}
        for combo in self.combinations():
            for seed in self.seeds:
                where = ", ".join(f"{k}={v}" for k, v in combo.items()) or "base"
                try:
                    cfg = resolve(C.from_dict(self.run_overrides(combo, seed)))
                except (UserError, UnknownNameError) as e:
                    raise UserError(f"study {self.name!r}, run {where}: {e}") from None
                rid = run_id(cfg)
                labels = {**combo, "seed": int(seed)}
                if rid in seen:
                    raise UserError(f"study {self.name!r}: runs {seen[rid]} and {where} seed={seed} resolve to the same config; "
                                    "remove one of the axis values")
                seen[rid] = f"{where} seed={seed}"
                runs.append(RunSpec(rid, len(runs), cfg, labels))
        return runs


def short_key(key: str) -> str:
    """A compact label for an axis key: `dynamics.name` -> `dynamics`, `sample.sampler` -> `sampler`."""
    section, _, rest = key.partition(".")
    if rest in ("name", "preset"):
        return section
    return rest or section


def run_id(cfg: Any) -> str:
    text = json.dumps(C.to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---- parsing ---------------------------------------------------------------------------------

def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = _deep_copy(value)


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


def _parse_sampler_setting(s: Any, j: int) -> dict:
    where = f"evaluation.samplers[{j}]"
    if s is None:
        return {}
    if isinstance(s, str):
        s = {"sampler": s}
    if not isinstance(s, dict):
        raise UserError(f"{where}: expected a mapping such as {{sampler: heun, steps: 18}}, got {s!r}")
    unknown = set(s) - {"sampler", "steps", "guidance"}
    if unknown:
        raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid keys: sampler, steps, guidance")
    out = {}
    if s.get("guidance") not in (None, "none"):
        out["guidance"] = str(s["guidance"])
    if s.get("sampler") is not None:
        out["sampler"] = str(s["sampler"])
    if s.get("steps") is not None:
        if not isinstance(s["steps"], int) or isinstance(s["steps"], bool) or s["steps"] <= 0:
            raise UserError(f"{where}.steps must be a positive integer, got {s['steps']!r}")
        out["steps"] = int(s["steps"])
    return out


def _parse_evaluation(d: Any) -> Evaluation:
    if d is None:
        return Evaluation()
    if not isinstance(d, dict):
        raise UserError(f"evaluation must be a mapping with keys {', '.join(EVAL_KEYS)}")
    for k in d:
        if k not in EVAL_KEYS:
            raise UserError(f"unknown key evaluation.{k}{C._suggest(k, list(EVAL_KEYS))}; valid keys: {', '.join(EVAL_KEYS)}")
    ev = Evaluation()
    metrics = d.get("metrics", list(ev.metrics))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise UserError(f"evaluation.metrics must be a non-empty list of metric names, got {metrics!r}")
    n = d.get("n", ev.n)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise UserError(f"evaluation.n must be a positive integer, got {n!r}")
    every = d.get("every_kimg", ev.every_kimg)
    if every is not None and (not isinstance(every, (int, float)) or isinstance(every, bool) or every <= 0):
        raise UserError(f"evaluation.every_kimg must be a positive number, got {every!r}")
    samplers = d.get("samplers", [{}])
    if not isinstance(samplers, list) or not samplers:
        raise UserError("evaluation.samplers must be a non-empty list of {sampler, steps} settings")
    settings = tuple(_parse_sampler_setting(s, j) for j, s in enumerate(samplers))
    sweep = d.get("n_sweep", [])
    if not isinstance(sweep, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sweep):
        raise UserError(f"evaluation.n_sweep must be a list of positive integers, got {sweep!r}")
    extractor = d.get("extractor", ev.extractor)
    seed = d.get("seed", ev.seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"evaluation.seed must be an integer, got {seed!r}")
    return Evaluation(tuple(metrics), n, None if every is None else float(every), settings,
                      tuple(sorted(set(sweep))), str(extractor), seed,
                      _parse_draws(d.get("draws"), seed, max([n, *sweep])))


def _parse_draws(d: Any, eval_seed: int, largest_n: int) -> dict | None:
    """evaluation.draws: {n, count[, seed]}; the seed defaults to the first per-sample seed after
    every other evaluation's (eval seed + the largest n), and is stored resolved."""
    if d is None:
        return None
    if not isinstance(d, dict) or set(d) - {"n", "count", "seed"} or not {"n", "count"} <= set(d):
        raise UserError(f"evaluation.draws must be a mapping {{n: samples, count: draws[, seed: first seed]}}, got {d!r}")
    for k, least in (("n", 2), ("count", 2)):
        v = d[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise UserError(f"evaluation.draws.{k} must be an integer >= {least}, got {v!r}")
    seed = d.get("seed", eval_seed + largest_n)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"evaluation.draws.seed must be an integer, got {seed!r}")
    return {"n": int(d["n"]), "count": int(d["count"]), "seed": int(seed)}


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
    budget = d.get("budget_kimg")
    if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0):
        raise UserError(f"study `budget_kimg` must be a positive number, got {budget!r}")
    attempts = d.get("max_attempts", 2)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise UserError(f"study `max_attempts` must be a positive integer, got {attempts!r}")
    return Study(name.strip(), base, axes, tuple(seeds), None if budget is None else float(budget),
                 _parse_evaluation(d.get("evaluation")), attempts, str(d.get("description") or ""), source, d)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (YAML). Touches nothing on disk besides reading."""
    from ..config import parse_yaml_file

    p = Path(path)
    data = parse_yaml_file(p, "study file")
    return study_from_dict(data, source=str(p), base_dir=p.parent)


def with_overrides(study: Study, **changes: Any) -> Study:
    return replace(study, **changes)
