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
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence


from .. import config as C
from .. import validate
from ..errors import UserError
from ..registry import UnknownNameError
from ..validate import COUNT_MAX, KIMG_MAX, SEED, STEPS, Range
from .executors import ExecutorSpec, parse_executor

STUDY_KEYS = ("name", "description", "base", "base_file", "axes", "seeds", "budget_kimg", "evaluation", "max_attempts",
              "executor", "models", "arm", "tune")
ARMS = ("original", "harmonised")   # values of the optional `arm` key ("harmonized" reads as "harmonised")
# What an evaluation-only study (models) cannot have: it trains nothing.
TRAINING_KEYS = ("base", "base_file", "axes", "seeds", "budget_kimg", "tune")
TUNE_KEYS = ("seed", "grid", "metric", "setting", "budget_kimg")
# The label that marks a tuning run (in the ledger, the run's Task and `study status`): results,
# statistics and reports leave such runs out of the comparison.
PHASE_KEY, TUNING = "phase", "tuning"
EVAL_KEYS = ("metrics", "n", "every_kimg", "samplers", "n_sweep", "extractor", "seed", "draws", "sample_grid")
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
    default, from the seeds of every other evaluation): the IS-vs-FID stability claim's data. Every
    snapshot a setting evaluates writes the PNG grid of its first `sample_grid` samples (the report's
    sample grids; RunDir.eval_grid_path)."""

    metrics: tuple[str, ...] = ("fid", "is")
    n: int = 1000
    every_kimg: float | None = None
    samplers: tuple[dict, ...] = ({},)
    n_sweep: tuple[int, ...] = ()
    extractor: str = "classifier"
    seed: int = 0
    draws: dict | None = None
    sample_grid: int = 16


@dataclass(frozen=True)
class Tune:
    """A study's tuning before the seeded comparison (the `tune:` section). Every configuration trains
    `seed` (held out: not one of the study's seeds) with every candidate of `grid` for `budget_kimg`
    (None: the study's budget), evaluated at the final snapshot with evaluation setting `setting` on
    `metric` only; each configuration's seeded runs take its best candidate (study.tuning)."""

    seed: int
    grid: dict            # dotted config key -> candidate values, in file order
    metric: str
    setting: int
    budget_kimg: float | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.grid)

    def candidates(self) -> list[dict]:
        """Every combination of the grid's values, in grid order (the last key varies fastest)."""
        return [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]


def is_tuning(labels: dict) -> bool:
    """Whether a run's labels mark it as a tuning run (not a seed of the comparison)."""
    return labels.get(PHASE_KEY) == TUNING


@dataclass(frozen=True)
class RunSpec:
    """One run: base + one combination of axis values + one seed, resolved.

    id        12 hex digits of sha256(json(resolved config, sorted keys)) (and of run_dir when given)
    labels    axis key -> value for this run (axis keys in study order), plus "seed"
    run_dir   a finished run evaluated in place (evaluation-only studies); None: STUDY_OUT/runs/<id>
    """

    id: str
    index: int
    config: Any  # diffatlas.config.Config, resolved
    labels: dict
    run_dir: Path | None = None

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
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)  # where runs execute; never part of a run's id
    models: tuple[tuple[str, str], ...] = ()  # (label, run directory) of an evaluation-only study
    arm: str | None = None                    # "original" | "harmonised" | None (see the module docstring)
    tune: Tune | None = None                  # tuning before the seeded runs (study.tuning)

    @property
    def axis_keys(self) -> list[str]:
        """Every config key varied by an axis, in study order ("model" for an evaluation-only study)."""
        if self.models:
            return ["model"]
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

    def runs(self, resolve: Callable[[Any], Any] | None = None, tuned: Sequence[dict] | None = None) -> list[RunSpec]:
        """Expand into runs (combinations x seeds), each resolved; UserError on a bad combination.
        A study with `tune` needs `tuned`: per combination (in `combinations()` order) the chosen
        values of the tuned keys (study.tuning); they enter the config, not the labels."""
        resolve = resolve or C.resolve
        if self.models:
            return self._model_runs(resolve)
        combos = self.combinations()
        if self.tune is not None and (tuned is None or len(tuned) != len(combos)):
            raise ValueError("the seeded runs of a study with `tune` are expanded from the tuning's choices, one per "
                             "configuration (study.tuning)")
        plan = [(combo, dict(tuned[i]) if tuned is not None else {}, seed, {**combo, "seed": int(seed)}, {})
                for i, combo in enumerate(combos) for seed in self.seeds]
        return self._expand(plan, resolve)

    def tuning_runs(self, resolve: Callable[[Any], Any] | None = None) -> list[RunSpec]:
        """The tuning runs (none without `tune`): per combination, per grid candidate (configuration-major),
        the held-out seed trained for the tuning budget, keeping only its latest snapshot (the final one
        is evaluated). Labels: the combination, the candidate, the seed and phase=tuning."""
        if self.tune is None or self.models:
            return []
        t = self.tune
        after: dict = {"train.keep_snapshots": False}
        if t.budget_kimg is not None:
            after["train.kimg"] = float(t.budget_kimg)
        plan = [(combo, cand, t.seed, {**combo, **cand, "seed": int(t.seed), PHASE_KEY: TUNING}, after)
                for combo in self.combinations() for cand in t.candidates()]
        return self._expand(plan, resolve or C.resolve)

    def evaluation_for(self, labels: dict) -> Evaluation:
        """How a run is evaluated: the study's evaluation, or for a tuning run the deciding metric with
        the deciding setting at the study's n and evaluation seed (no n sweep, no draws)."""
        if self.tune is None or not is_tuning(labels):
            return self.evaluation
        ev = self.evaluation
        return Evaluation((self.tune.metric,), ev.n, None, (ev.samplers[self.tune.setting],), (), ev.extractor, ev.seed,
                          None, 0)

    def _expand(self, plan: list[tuple[dict, dict, int, dict, dict]], resolve: Callable[[Any], Any]) -> list[RunSpec]:
        """plan: (combination, extra config values, seed, labels, values set last) per run."""
        runs: list[RunSpec] = []
        seen: dict[str, str] = {}
        for combo, extra, seed, labels, after in plan:
            where = ", ".join(f"{k}={v}" for k, v in {**combo, **extra}.items()) or "base"
            data = self.run_overrides({**combo, **extra}, seed)
            for key, value in after.items():
                _set_dotted(data, key, value)
            try:
                cfg = resolve(C.from_dict(data))
            except (UserError, UnknownNameError) as e:
                raise UserError(f"study {self.name!r}, run {where}: {e}") from None
            rid = run_id(cfg)
            if rid in seen:
                raise UserError(f"study {self.name!r}: runs {seen[rid]} and {where} seed={seed} resolve to the same config; "
                                "remove one of the axis values")
            seen[rid] = f"{where} seed={seed}"
            runs.append(RunSpec(rid, len(runs), cfg, labels))
            self._check_guidance(cfg, where)
            self._check_sampling(cfg, where)
        return runs

    def _check_sampling(self, cfg: Any, where: str) -> None:
        """Every evaluation setting must plan on the run's process (e.g. no more steps than a discrete
        process has): refused now, not after training."""
        from ..model import make_dynamics
        from ..sampling import run_plan

        dyn = make_dynamics(cfg)
        for j, setting in enumerate(self.evaluation.samplers):
            try:
                run_plan(cfg, dyn, **{k: setting[k] for k in ("sampler", "steps", "nfe", "grid", "options")
                                      if k in setting})
            except (UserError, UnknownNameError) as e:
                raise UserError(f"study {self.name!r}, run {where}: evaluation.samplers[{j}]: {e}") from None

    def _check_guidance(self, cfg: Any, where: str) -> None:
        """Classifier-free guidance in the evaluation plan needs a conditional run: refused now, not after training."""
        from ..guidance import make_guidance, parse_guidance_spec
        from ..rundir import RunInfo

        for j, setting in enumerate(self.evaluation.samplers):
            parsed = parse_guidance_spec(setting.get("guidance"))
            if parsed is None or parsed[0] != "cfg":
                continue
            probe = RunInfo(cfg, (), 1 if cfg.network.conditional else None)  # before training: no shape yet
            try:
                make_guidance(probe, *parsed)
            except UserError as e:
                raise UserError(f"study {self.name!r}, run {where}: evaluation.samplers[{j}]: {e}") from None


    def _model_runs(self, resolve: Callable[[Any], Any]) -> list[RunSpec]:
        """One run per named model: its own resolved config, evaluated where it is."""
        runs: list[RunSpec] = []
        for label, path in self.models:
            run_dir = Path(path).resolve()
            if not (run_dir / "config.yaml").is_file() or not (run_dir / "DONE").is_file():
                raise UserError(f"study {self.name!r}, model {label}: {path!r} is not a finished run directory "
                                "(config.yaml and DONE); train it, or import it with `diffatlas import`")
            try:
                cfg = resolve(C.from_dict(C.read_yaml(run_dir / "config.yaml")))
            except (UserError, UnknownNameError) as e:
                raise UserError(f"study {self.name!r}, model {label}: {e}") from None
            runs.append(RunSpec(C.config_hash(cfg, run_dir), len(runs), cfg, {"model": label, "seed": int(cfg.train.seed)}, run_dir))
        return runs


def short_key(key: str) -> str:
    """A compact label for an axis key: `dynamics.name` -> `dynamics`, `sample.sampler` -> `sampler`."""
    section, _, rest = key.partition(".")
    if rest in ("name", "preset"):
        return section
    return rest or section


def run_id(cfg: Any) -> str:
    return C.config_hash(cfg)


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


def _registry_name(registry: Any, name: Any, where: str) -> str:
    try:
        registry.get(name)
    except UnknownNameError as e:
        raise UserError(f"{where}: {e}") from None
    return str(name)


# What one evaluation setting may state: a sampler with steps or an NFE budget, its grid and options,
# x0 clipping and guidance; anything left out is the run's default (samplers.plan).
SETTING_KEYS = ("sampler", "steps", "nfe", "grid", "options", "clip", "guidance")


def _parse_sampler_setting(s: Any, j: int) -> dict:
    """One evaluation setting, every name and number checked now (not after the runs are trained)."""
    from ..config import sampler_options
    from ..guidance import parse_guidance_spec
    from ..samplers import parse_clip
    from ..samplers.plan import check_sampler_name
    from ..schedules import GRIDS

    where = f"evaluation.samplers[{j}]"
    if s is None:
        return {}
    if isinstance(s, str):
        s = {"sampler": s}
    if not isinstance(s, dict):
        raise UserError(f"{where}: expected a mapping such as {{sampler: heun, steps: 18}}, got {s!r}")
    validate.known_keys(s, SETTING_KEYS, where)
    out = {}
    if s.get("guidance") not in (None, "none"):
        if not isinstance(s["guidance"], str):
            raise UserError(f"{where}.guidance must be classifier:SCALE or cfg:W, got {s['guidance']!r}")
        try:
            parse_guidance_spec(s["guidance"])
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        out["guidance"] = str(s["guidance"])
    if s.get("sampler") is not None:
        try:
            out["sampler"] = check_sampler_name(s["sampler"])
        except UnknownNameError as e:
            raise UserError(f"{where}.sampler: {e}") from None
    if s.get("steps") is not None:
        out["steps"] = int(validate.number(s["steps"], f"{where}.steps", STEPS))
    if s.get("nfe") is not None:
        out["nfe"] = int(validate.number(s["nfe"], f"{where}.nfe", STEPS))
        if "steps" in out:
            raise UserError(f"{where}: give steps or nfe (a budget of denoiser evaluations), not both")
    if s.get("grid") is not None:
        out["grid"] = _registry_name(GRIDS, s["grid"], f"{where}.grid") if s["grid"] != "auto" else "auto"
    if s.get("options") is not None:
        if not isinstance(s["options"], dict):
            raise UserError(f"{where}.options must be a mapping of sampler options, got {s['options']!r}")
        if out.get("sampler") in (None, "auto", "classic"):
            raise UserError(f"{where}: options need a named sampler (options differ between samplers)")
        try:
            out["options"] = sampler_options(out["sampler"], s["options"], label=f"{where}.options")
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    if s.get("clip") is not None:
        parse_clip(s["clip"])
        out["clip"] = str(s["clip"])
    return out


def setting_kwargs(setting: dict) -> dict:
    """evaluate_run's keyword arguments for one evaluation setting (absent keys: the run's defaults)."""
    return {k: setting[k] for k in SETTING_KEYS if k in setting}


def _parse_evaluation(d: Any) -> Evaluation:
    if d is None:
        return Evaluation()
    from ..metrics import EXTRACTORS, METRICS

    if not isinstance(d, dict):
        raise UserError(f"evaluation must be a mapping with keys {', '.join(EVAL_KEYS)}")
    validate.known_keys(d, EVAL_KEYS, "evaluation")
    ev = Evaluation()
    metrics = d.get("metrics", list(ev.metrics))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise UserError(f"evaluation.metrics must be a non-empty list of metric names, got {metrics!r}")
    for m in metrics:
        _registry_name(METRICS, m, "evaluation.metrics")
    samples = Range(2, COUNT_MAX, integer=True)  # a metric needs at least two samples
    n = int(validate.number(d.get("n", ev.n), "evaluation.n", samples))
    every = d.get("every_kimg", ev.every_kimg)
    if every is not None:
        every = float(validate.number(every, "evaluation.every_kimg", Range(0, KIMG_MAX, lo_open=True)))
    samplers = d.get("samplers", [{}])
    if not isinstance(samplers, list) or not samplers:
        raise UserError("evaluation.samplers must be a non-empty list of {sampler, steps} settings")
    settings = tuple(_parse_sampler_setting(s, j) for j, s in enumerate(samplers))
    sweep = d.get("n_sweep", [])
    if not isinstance(sweep, list):
        raise UserError(f"evaluation.n_sweep must be a list of sample counts, got {sweep!r}")
    sweep = [int(validate.number(v, f"evaluation.n_sweep[{i}]", samples)) for i, v in enumerate(sweep)]
    extractor = d.get("extractor", ev.extractor)
    if not isinstance(extractor, str):
        raise UserError(f"evaluation.extractor must be an extractor name, got {extractor!r}")
    _registry_name(EXTRACTORS, extractor, "evaluation.extractor")
    seed = int(validate.number(d.get("seed", ev.seed), "evaluation.seed", SEED))
    validate.seeds(seed, max([n, *sweep]), "evaluation.seed")
    sample_grid = int(validate.number(d.get("sample_grid", ev.sample_grid), "evaluation.sample_grid",
                                      Range(0, COUNT_MAX, integer=True)))
    return Evaluation(tuple(metrics), n, every, settings, tuple(sorted(set(sweep))), extractor, seed,
                      _parse_draws(d.get("draws"), seed, max([n, *sweep])), sample_grid)


def _parse_draws(d: Any, eval_seed: int, largest_n: int) -> dict | None:
    """evaluation.draws: {n, count[, seed]}; the seed defaults to the first per-sample seed after
    every other evaluation's (eval seed + the largest n), and is stored resolved."""
    if d is None:
        return None
    if not isinstance(d, dict) or set(d) - {"n", "count", "seed"} or not {"n", "count"} <= set(d):
        raise UserError(f"evaluation.draws must be a mapping {{n: samples, count: draws[, seed: first seed]}}, got {d!r}")
    n = int(validate.number(d["n"], "evaluation.draws.n", Range(2, COUNT_MAX, integer=True)))
    count = int(validate.number(d["count"], "evaluation.draws.count", Range(2, 1000, integer=True)))
    seed = int(validate.number(d.get("seed", eval_seed + largest_n), "evaluation.draws.seed", SEED))
    validate.seeds(seed, n * count, "evaluation.draws.seed")
    return {"n": n, "count": count, "seed": seed}


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
    evaluation = _parse_evaluation(d.get("evaluation"))
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
    from ..config import parse_yaml_file

    p = Path(path)
    data = parse_yaml_file(p, "study file")
    return study_from_dict(data, source=str(p), base_dir=p.parent)

