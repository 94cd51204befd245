"""The `evaluation:` section of a study: how every run is evaluated, and its parsing.

`Evaluation` holds the metrics, sample counts, evaluation settings (sampler, steps or NFE, grid,
options, clipping, guidance), n sweep, independent draws and sample grids; `parse_evaluation`
checks every name and number of the section when the study is read, not after its runs are trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import validate
from ..config import sampler_options
from ..errors import UserError
from ..guidance import parse_guidance_spec
from ..metrics import EXTRACTORS, METRICS
from ..registry import UnknownNameError
from ..samplers import parse_clip
from ..samplers.plan import check_sampler_name
from ..schedules import GRIDS
from ..validate import COUNT_MAX, KIMG_MAX, SEED, STEPS, Range

EVAL_KEYS = ("metrics", "n", "every_kimg", "samplers", "n_sweep", "extractor", "seed", "draws", "sample_grid")


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


def parse_evaluation(d: Any) -> Evaluation:
    if d is None:
        return Evaluation()

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
