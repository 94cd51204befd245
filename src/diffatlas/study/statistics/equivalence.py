"""Claim 2 of the paper, configurations converge at a similar point in training: an equivalence
test (two one-sided t-tests, Schuirmann 1987) on the paired convergence points of every factor."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import special

from .pairs import EVAL_KEY, EVAL_LABELS, _Index, _Model, _pair, _setting_of, min_pairs
from .tests import ALPHA, TTest, paired_t
from .verdict import (CLAIM_CONVERGENCE, CONVERGENCE_SPREAD, DEFINITIONS, INCONCLUSIVE, MIN_SETTLED, UNDERPOWERED,
                      UNTESTED, Effect, Verdict, _find_axis, _primary, _routes)


def _tost(d: Sequence[float], margin: float) -> tuple[float, float, TTest]:
    """Two one-sided t-tests on paired differences against +-margin (Schuirmann 1987).
    Returns (p_equivalent: |mu| < margin, p_beyond: |mu| > margin, the t-test of the mean)."""
    tt = paired_t(d)
    if tt.n < 2 or not np.isfinite(tt.sd):
        return math.nan, math.nan, tt
    se = tt.sd / math.sqrt(tt.n)
    if se == 0:
        inside = abs(tt.mean) < margin
        return (0.0 if inside else 1.0), (0.0 if abs(tt.mean) > margin else 1.0), tt
    df = tt.n - 1
    p_eq = max(float(special.stdtr(df, -(tt.mean + margin) / se)), float(special.stdtr(df, (tt.mean - margin) / se)))
    p_beyond = (float(special.stdtr(df, -(tt.mean - margin) / se)) if tt.mean >= 0
                else float(special.stdtr(df, (tt.mean + margin) / se)))
    return p_eq, p_beyond, tt


def _convergence_factors(axes: Sequence[str], ix: _Index, metric: str) -> list[str]:
    factors = [a for a in axes if any(w in a for w in ("schedule", "sampler", "grid", "guidance", "steps"))
               and a != "guidance"]
    settings = {s for m in ix.table(metric, "restricted_kimg").values() for s in m.at}
    if len({s[0] for s in settings}) > 1:
        factors.append(EVAL_KEY)
    if len({s[1] for s in settings}) > 1:
        factors.append("guidance")
    return factors


def _values_of(ix: _Index, metric: str, factor: str) -> list[str]:
    table = ix.table(metric, "restricted_kimg")
    if factor in EVAL_LABELS:
        i = EVAL_LABELS.index(factor)
        vals = sorted({s[i] for m in table.values() for s in m.at if s[i] is not None})
    else:
        vals = sorted({str(m.labels[factor]) for m in table.values() if factor in m.labels})
    return vals


def _settled_share(ix: _Index, metric: str, factor: str, value: str) -> tuple[int, int]:
    """(settled curves, curves) of one value of a factor."""
    i = EVAL_LABELS.index(factor) if factor in EVAL_LABELS else None
    n = s = 0
    for r in ix.by_metric.get(metric, ()):
        lab = r["labels"]
        v = _setting_of(lab)[i] if i is not None else (str(lab[factor]) if factor in lab else None)
        if v == value:
            n += 1
            s += bool(r.get("converged_kimg") is not None and r.get("settled", True))
    return s, n


def claim_similar_convergence(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], budget: float | None,
                              threshold: float = CONVERGENCE_SPREAD, seed: int = 0, *, alpha: float = ALPHA,
                              ix: _Index | None = None) -> Verdict:
    """Claim: across schedules, samplers and guidance, quality stabilises at a similar kimg.
    An equivalence test on restricted convergence points (see :data:`DEFINITIONS`)."""
    claim = CLAIM_CONVERGENCE
    definition = DEFINITIONS[claim]
    ix = ix or _Index(records, budget)
    primary = _primary(metrics)
    if primary is None:
        return Verdict(claim, UNTESTED, ["no metric evaluated"], 0, definition)
    rec = ix.by_metric.get(primary, [])
    budget = budget or max((r.get("budget_kimg") or 0 for r in rec), default=0) or None
    if not budget:
        return Verdict(claim, UNTESTED, ["no training budget known"], 0, definition)
    ix.budget = budget
    factors = _convergence_factors(axes, ix, primary)
    if not factors:
        return Verdict(claim, UNTESTED, ["the study varies no schedule, sampler, steps or guidance"], 0, definition)
    margin = threshold * budget
    table = ix.table(primary, "restricted_kimg")
    evidence, p_eq, p_beyond, n_max, too_few, unsettled = [], [], [], 0, [], []
    overall = None  # (factor, a, b, t-test) of the largest difference over every factor
    for f in factors:
        vals = _values_of(ix, primary, f)
        if len(vals) < 2:
            continue
        shares = {v: _settled_share(ix, primary, f, v) for v in vals}
        unsettled += [f"{f}={v}: {n - s} of {n}" for v, (s, n) in shares.items() if n and s < MIN_SETTLED * n]
        worst = None
        for a, b in itertools.combinations(vals, 2):
            d = _pair(table, f, a, b).differences
            eq, beyond, tt = _tost(d, margin)
            n_max = max(n_max, len(d))
            if not np.isfinite(eq) or len(d) < min_pairs(alpha):  # the same design rule as every comparison
                too_few.append(f"{f}: {a} vs {b} ({len(d)} pair(s))")
                continue
            p_eq.append(eq)
            p_beyond.append(beyond)
            if worst is None or abs(tt.mean) > abs(worst[2].mean):
                worst = (a, b, tt)
        means = ", ".join(f"{v}: {np.mean(ms):.3g}" for v in vals
                          if (ms := _factor_means(table, f, v)))
        settled = ", ".join(f"{v} {s}/{n}" for v, (s, n) in shares.items())
        line = f"{f}: mean convergence kimg ({primary}, unsettled curves at the {budget:g}-kimg budget) {means}; settled {settled}"
        if worst:
            a, b, tt = worst
            if overall is None or abs(tt.mean) > abs(overall[3].mean):
                overall = (f, a, b, tt)
            line += (f"; largest difference {a} - {b} = {tt.mean:+.3g} kimg [95% CI {tt.ci[0]:+.3g}, {tt.ci[1]:+.3g}] = "
                     f"{tt.mean / budget:+.1%} of the budget vs margin +-{threshold:.0%}, {tt.n} pairs")
        evidence.append(line)
    dyn = _find_axis(axes, "dynamics.name")
    if dyn:
        spread = []
        for a, b in itertools.combinations(_values_of(ix, primary, dyn), 2):
            tt = paired_t(_pair(table, dyn, a, b).differences)
            if tt.n >= 2:
                spread.append((abs(tt.mean), a, b, tt))
        if spread:
            _, a, b, tt = max(spread, key=lambda x: x[0])
            evidence.append(f"for contrast, {dyn}: largest difference {a} - {b} = {tt.mean:+.3g} kimg "
                            f"[95% CI {tt.ci[0]:+.3g}, {tt.ci[1]:+.3g}] = {tt.mean / budget:+.1%} of the budget")
    if too_few:
        evidence.append(f"fewer than {min_pairs(alpha)} pairs of trained models, not tested: " + "; ".join(too_few))
    if not p_eq:
        return Verdict(claim, UNDERPOWERED, evidence or ["too few trained models per factor value"], n_max, definition)
    if unsettled:
        evidence.append("similarity cannot be shown: most curves of " + "; ".join(unsettled) +
                        " never settled (the budget may be too short)")
    p_supp = max(p_eq) if not (unsettled or too_few) else 1.0
    p_contra = min(1.0, min(p_beyond) * len(p_beyond))
    v = _routes(claim, n_max, evidence, [], {"supported": (p_supp, True), "contradicted": (p_contra, True)},
                INCONCLUSIVE, alpha)
    if overall is not None:
        f, a, b, tt = overall
        v.effect = Effect(f"largest difference in convergence kimg ({primary}), {f}: {a} - {b}", tt.mean, tt.ci,
                          "kimg", tt.n, margin=margin)
    return v


def _factor_means(table: dict[Any, _Model], factor: str, value: str) -> list[float]:
    if factor in EVAL_LABELS:
        i = EVAL_LABELS.index(factor)
        return [v for m in table.values() for s, v in m.at.items() if s[i] == value]
    return [float(np.mean(list(m.at.values()))) for m in table.values()
            if factor in m.labels and str(m.labels[factor]) == value]
