"""The exact-denoiser study: every dynamics with the ideal denoiser, through the real sampling and verdict code.

With Gaussian-mixture data the denoiser E[x0 | x_t] is known in closed form
(:class:`diffatlas.data.toy.ExactDenoiser`), so every forward process has a perfect "trained model".
Their probability-flow ODEs are one ODE in the scaled frame x / alpha against sigma / alpha
(Karras et al. 2022, sec. 3 and eq. 4), so a deterministic sampler that resolves it well must give
every process the same sample law: no process may beat another. The study

1. builds every registered dynamics (DDPM with its linear and cosine schedules) with the exact
   denoiser of an 8-mode mixture on a circle in 2-D;
2. samples each through :func:`diffatlas.samplers.sample` with one sampler and NFE budget for all
   (DPM-Solver++(2M), Lu et al. 2022b, 80 NFE on its default plan, the log-SNR grid, on a discrete
   process snapped to its steps: its discretization error is far below the draw-to-draw noise), several times with disjoint per-sample seeds; each draw plays
   the role of one trained model (one seed) of its configuration in a study record;
3. scores each draw by the sliced Wasserstein-2 distance (samplers/oracle.py) to a large true sample;
4. decides with the verdict code a study report uses (:func:`statistics.verdicts` for the paper's
   claims, :func:`statistics.all_pairwise` for every pair of processes, Holm-corrected): it must
   find no difference;
5. repeats with one process's x0 estimate shrunk toward the origin by a stated factor, D' = c D
   (c < 1 pulls every sample toward the mixture's mean); the verdicts must find that process worse.

NCSN's default sigma_max = 1 lies below the data's diameter, so its prior N(0, 1) is not the noised
data at t_max and it would lose for that reason alone (Song & Ermon 2020, technique 1: sigma_max
should be about the largest pairwise distance of the data); the study gives it VE's sigma_max, and
100 levels so that an 80-NFE budget is not capped at its 10 (a discrete process never samples between
its own levels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.mixture import ExactDenoiser, standard_mixture
from ..dynamics import DYNAMICS, build_dynamics
from ..samplers import sample
from ..samplers.oracle import random_directions, sliced_wasserstein
from . import statistics as S

METRIC = "sw2"
CLAIM_SIDES = {S.CLAIM_DISCRETE: ("ddpm", "ncsn"), S.CLAIM_SDE: ("vp", "ve")}   # (a, b) of "a beats b"
AXES = ("dynamics.name", "dynamics.schedule")
# Options per registered dynamics; one configuration per entry (a dynamics not listed: its defaults).
VARIANTS: dict[str, tuple[dict, ...]] = {
    "ddpm": ({"schedule": "linear"}, {"schedule": "cosine"}),
    "ncsn": ({"sigma_max": 50.0, "levels": 100},),   # VE's sigma_max and room for the budget; see the docstring
}


@dataclass(frozen=True)
class ExactStudy:
    """What the study runs. `grid` None is each sampler's default grid; `shrink` is the factor c
    of the degraded process's x0 estimate (D' = c D)."""

    sampler: str = "dpm-solver++"
    nfe: int = 80
    grid: str | None = None
    n: int = 1000             # samples per draw
    draws: int = 8            # independent draws per configuration: the "seeds" of the study
    reference: int = 20000    # true samples the distance is measured to
    projections: int = 128
    modes: int = 8
    radius: float = 0.8
    std: float = 0.2
    degrade: str = "ncsn"
    shrink: float = 0.97
    dynamics: tuple[str, ...] | None = None   # None: every registered dynamics

    def setting(self) -> str:
        grid = self.grid or "default grid"
        return f"{self.sampler} nfe{self.nfe} {grid}"


@dataclass
class Config:
    label: str
    labels: dict
    name: str
    options: dict


def configurations(study: ExactStudy) -> list[Config]:
    out = []
    for name in study.dynamics or tuple(DYNAMICS.names()):
        for opts in VARIANTS.get(name, ({},)):
            labels = {"dynamics.name": name}
            if "schedule" in opts:
                labels["dynamics.schedule"] = opts["schedule"]
            label = name + (f"-{opts['schedule']}" if "schedule" in opts else "")
            out.append(Config(label, labels, name, dict(opts)))
    return out


class ShrunkDenoiser:
    """An exact denoiser made worse on purpose: D'(x, t) = factor * D(x, t)."""

    def __init__(self, inner: Any, factor: float) -> None:
        self.inner, self.factor, self.dynamics = inner, float(factor), inner.dynamics

    def __call__(self, x: torch.Tensor, t: Any, cond: Any = None) -> torch.Tensor:
        return self.factor * self.inner(x, t, cond)


@dataclass
class Outcome:
    verdict: str
    lines: list[str]
    ok: bool
    exact: list[dict] = field(default_factory=list)
    degraded: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _draw_records(study: ExactStudy, cfg: Config, c: int, seed: int, denoiser: Any, ref: torch.Tensor,
                  dirs: torch.Tensor) -> tuple[list[dict], int]:
    recs, nfe = [], 0
    for k in range(study.draws):
        # disjoint per-sample seeds for every (study seed, configuration, draw)
        first = study.n * (k + study.draws * (c + 1000 * seed))
        res = sample(denoiser, (study.n, 2), sampler=study.sampler, nfe=study.nfe, grid=study.grid, seed=first,
                     dtype=torch.float64)
        nfe = res.nfe
        recs.append({"run": f"{cfg.label}/{k}", "labels": {**cfg.labels, "seed": k, S.EVAL_KEY: study.setting()},
                     "metric": METRIC, "final": sliced_wasserstein(res.x, ref, directions=dirs),
                     "higher_is_better": False})
    return recs, nfe


def _decide(records: list[dict]) -> tuple[list[S.Verdict], list[S.Comparison]]:
    return (S.verdicts(records, list(AXES), [METRIC]), S.all_pairwise(records, list(AXES), [METRIC]))


def _significant(comps: list[S.Comparison]) -> list[S.Comparison]:
    return [c for c in comps if c.verdict in ("a", "b")]


def _stats(records: list[dict], label: str) -> tuple[float, float]:
    v = [r["final"] for r in records if r["run"].startswith(label + "/")]
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _claim_line(v: S.Verdict) -> str:
    p = f", Holm p = {v.p_adj:.3g}" if math.isfinite(v.p_adj) else ""
    return f"{v.claim}: {v.verdict}{p}"


def run_exact_study(study: ExactStudy = ExactStudy(), seed: int = 0,
                    log: Callable[[str], None] | None = None) -> Outcome:
    """Run the study and its degraded variant; the verdict is 'FAILED: ...' unless the exact study
    finds no difference and the degraded process is found worse than every other one."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # 2-D points: one thread avoids OpenMP overhead on tiny tensors
    try:
        mix = standard_mixture(2, study.modes, study.radius, study.std)
        gen = torch.Generator().manual_seed(2**31 - 1 - seed)
        ref = mix.sample(study.reference, gen)
        dirs = random_directions(2, study.projections, gen)
        floor = [sliced_wasserstein(mix.sample(study.n, gen), ref, directions=dirs) for _ in range(study.draws)]
        cfgs = configurations(study)
        exact, nfes, dyns = [], {}, {}
        for c, cfg in enumerate(cfgs):
            dyns[cfg.label] = build_dynamics(cfg.name, **cfg.options)
            recs, nfes[cfg.label] = _draw_records(study, cfg, c, seed, ExactDenoiser(mix, dyns[cfg.label]), ref, dirs)
            exact += recs
            if log:
                log(f"  exact-denoiser study: {cfg.label} sampled {study.draws} times ({c + 1}/{len(cfgs)}, "
                    f"{time.perf_counter() - t0:.0f} s)")
        target = [(c, cfg) for c, cfg in enumerate(cfgs) if cfg.name == study.degrade or cfg.label == study.degrade]
        if not target:
            raise ValueError(f"no configuration {study.degrade!r} to degrade")
        tc, tcfg = target[0]
        bad, _ = _draw_records(study, tcfg, tc, seed, ShrunkDenoiser(ExactDenoiser(mix, dyns[tcfg.label]), study.shrink),
                               ref, dirs)
        degraded = [r for r in exact if not r["run"].startswith(tcfg.label + "/")] + bad
    finally:
        torch.set_num_threads(threads)

    claims0, pairs0 = _decide(exact)
    claims1, pairs1 = _decide(degraded)
    grid = f"the {study.grid} grid" if study.grid else "its default plan (log-SNR grid)"
    lines = [(f"data: {study.modes}-mode Gaussian mixture in 2-D (radius {study.radius:g}, std {study.std:g}), exact "
              f"denoiser E[x0 | x_t]; {study.sampler} at {study.nfe} NFE on {grid}, the same for every process; "
              f"{study.draws} draws of {study.n} samples per configuration (disjoint seeds), each one 'trained model'"),
             (f"score: sliced W2 ({study.projections} projections) to {study.reference} true samples; true sets of "
              f"{study.n} reach {np.mean(floor):.4f} +- {np.std(floor, ddof=1):.4f} (noise floor)"),
             f"{'configuration':<16} {'NFE':>4} {'SW2 exact (mean +- sd)':>24} {'degraded':>18}"]
    for cfg in cfgs:
        m, s = _stats(exact, cfg.label)
        extra = ""
        if cfg.label == tcfg.label:
            dm, ds = _stats(bad, cfg.label)
            extra = f"{dm:.4f} +- {ds:.4f}"
        opts = ", ".join(f"{k} {v:g}" for k, v in cfg.options.items() if k != "schedule" and isinstance(v, float))
        lines.append(f"{cfg.label:<16} {nfes[cfg.label]:>4} {f'{m:.4f} +- {s:.4f}':>24} {extra:>18}"
                     + (f"   ({opts})" if opts else ""))
    sig0 = _significant(pairs0)
    decided0 = [v for v in claims0 if v.verdict in ("supported", "contradicted")]
    best0 = min((c.p_adj for c in pairs0 if math.isfinite(c.p_adj)), default=math.nan)
    lines.append("exact: " + "; ".join(_claim_line(v) for v in claims0 if v.claim in (S.CLAIM_DISCRETE, S.CLAIM_SDE)))
    lines.append(f"exact: {len(pairs0)} pairwise comparisons, {len(sig0)} significant (smallest Holm p = {best0:.3g})"
                 + "".join(f"; {c.a} vs {c.b}: {c.a if c.verdict == 'a' else c.b} better" for c in sig0))

    axis_of = "dynamics.schedule" if tcfg.label != tcfg.name else "dynamics.name"
    tval = tcfg.labels[axis_of]
    mine = [c for c in pairs1 if c.axis == axis_of and tval in (str(c.a), str(c.b))]
    worse = [c for c in mine if (c.verdict == "b" and str(c.a) == tval) or (c.verdict == "a" and str(c.b) == tval)]
    others = [c for c in _significant(pairs1) if c not in mine]
    claims_t = [v for v in claims1 if v.claim in (S.CLAIM_DISCRETE, S.CLAIM_SDE)]
    p_det = max((c.p_adj for c in mine), default=math.nan)
    lines.append(f"degraded {tcfg.label} (x0 estimate x {study.shrink:g}): " + "; ".join(_claim_line(v) for v in claims_t))
    lines.append(f"degraded: {tcfg.label} worse in {len(worse)}/{len(mine)} of its pairwise comparisons (largest Holm "
                 f"p = {p_det:.3g}); {len(others)} other pair(s) significant")

    problems = [f"{c.a} vs {c.b} differ (Holm p = {c.p_adj:.3g})" for c in sig0]
    problems += [f"exact study: '{v.claim}' {v.verdict}" for v in decided0]
    if not mine or len(worse) < len(mine):
        problems.append(f"degraded {tcfg.label} found worse in only {len(worse)}/{len(mine)} comparisons "
                        f"(largest Holm p = {p_det:.3g})")
    problems += [f"degraded study: {c.a} vs {c.b} differ (Holm p = {c.p_adj:.3g})" for c in others]
    # a claim on the degraded dynamics must point against it; a claim on two others must find nothing
    for v in claims_t:
        a, b = CLAIM_SIDES[v.claim]
        if tcfg.name not in (a, b):
            if v.verdict in ("supported", "contradicted"):
                problems.append(f"degraded study: '{v.claim}' {v.verdict}")
        elif tcfg.label == tcfg.name:   # (a schedule variant moves its dynamics' mean by part of the effect only)
            want = "supported" if tcfg.name == b else "contradicted"
            if v.verdict != want:
                problems.append(f"degraded study: '{v.claim}' {v.verdict}, not {want}")
    n_dyn = len({cfg.name for cfg in cfgs})
    seconds = time.perf_counter() - t0
    lines.append(f"{(len(cfgs) + 1) * study.draws} sampling draws in {seconds:.1f} s")
    if problems:
        verdict = "FAILED: " + "; ".join(problems)
    else:
        verdict = (f"no difference between {len(cfgs)} configurations of {n_dyn} dynamics; degraded {tcfg.label} "
                   f"detected (p={p_det:.2g})")
    return Outcome(verdict, lines, not problems, exact, degraded, seconds)


STUDY = ExactStudy()   # what `diffatlas calibrate` runs


def check(seed: int) -> tuple[str, list[str]]:
    """The `diffatlas calibrate` hook: (verdict, table lines) of :data:`STUDY`."""
    out = run_exact_study(STUDY, seed, log=lambda s: print(s, flush=True))
    return out.verdict, out.lines
