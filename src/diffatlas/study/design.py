"""A study's design: its configurations (axes), seeds, tuning and evaluation, expanded into runs.

`Study` is a validated study (study.spec reads a study file into one and documents the format);
`Study.runs` expands it into `RunSpec`s: base + one combination of axis values + one seed, each
resolved. Groups combine by Cartesian product. A run's id is a short SHA-256 of its resolved config
(JSON with sorted keys), so the same run gets the same id and output folder in every study that
contains it. Report labels are the axis values (`short_key`). `Tune` is the optional tuning before
the seeded runs (study.tuning); tuning runs carry the label `phase: tuning` (`is_tuning`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import config as C
from ..errors import UserError
from ..guidance import make_guidance, parse_guidance_spec
from ..model import make_dynamics
from ..registry import UnknownNameError
from ..rundir import RunInfo
from .eval_spec import Evaluation
from .executors import ExecutorSpec

# The label that marks a tuning run (in the ledger, the run's Task and `study status`): results,
# statistics and reports leave such runs out of the comparison.
PHASE_KEY, TUNING = "phase", "tuning"


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
    arm: str | None = None                    # "original" | "harmonised" | None (see study.spec's docstring)
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
        from ..sampling import run_plan  # on use: keeps the sampling layer out of `diffatlas --help`

        dyn = make_dynamics(cfg)
        for j, setting in enumerate(self.evaluation.samplers):
            try:
                run_plan(cfg, dyn, **{k: setting[k] for k in ("sampler", "steps", "nfe", "grid", "options")
                                      if k in setting})
            except (UserError, UnknownNameError) as e:
                raise UserError(f"study {self.name!r}, run {where}: evaluation.samplers[{j}]: {e}") from None

    def _check_guidance(self, cfg: Any, where: str) -> None:
        """Classifier-free guidance in the evaluation plan needs a conditional run: refused now, not after training."""
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
