"""The paper's claims, each an operational definition (DEFINITIONS) decided from the records by the
paired comparisons of .pairs and the tests of .tests; `verdicts` decides every claim of a study."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from ...data import DATASETS
from ...metrics.spec import role as metric_role
from .pairs import (EVAL_KEY, EVAL_LABELS, Comparison, Pairing, _compare, _comparison, _context, _holm_decide, _Index,
                    _Model, _pair, _setting_of, axis_values, min_pairs)
from .tests import ALPHA, POWER, TTest, _jackknife_se, holm, icc1_jackknife, min_sign_flip_p, paired_t

CONVERGENCE_SPREAD = 0.2     # claim 2: convergence points differ by at most this fraction of the budget
MIN_SETTLED = 0.5            # claim 2: similarity needs at least this fraction of settled curves per value
UNTESTED, UNDERPOWERED = "not tested", "underpowered"
NO_DIFFERENCE, INCONCLUSIVE = "no detectable difference", "inconclusive"
VERDICTS = ("supported", "contradicted", NO_DIFFERENCE, INCONCLUSIVE, UNDERPOWERED, UNTESTED)

CLAIM_DISCRETE = "DDPM-based beats NCSN-based (discrete: ddpm vs ncsn)"
CLAIM_SDE = "DDPM-based beats NCSN-based (SDE: vp vs ve)"
CLAIM_CONVERGENCE = "configurations reach stable quality at a similar point in training"
CLAIM_GUIDANCE = "classifier guidance helps class accuracy but does not universally improve quality"
CLAIM_SIZE = "model size matters more on complex data"
CLAIM_IS = "IS is less sensitive to the number of samples than FID"

_PAIRED = ("Each trained model (one seed of one configuration) is reduced to the mean of the primary metric "
           "(FID if evaluated) over the evaluation settings every compared model has; models are paired by seed and "
           "by every other axis both sides define. ")
_DECISION = ("A direction needs the paired t-test's p below alpha after the Holm correction over the table's claims "
             "and the sign-flip test's p below alpha (so at least 6 pairs at alpha 0.05); otherwise "
             f"'{NO_DIFFERENCE}', or '{UNDERPOWERED}' where too few pairs exist to reach a verdict at all.")
DEFINITIONS = {
    CLAIM_DISCRETE: _PAIRED + "Supported: ddpm is better than ncsn; contradicted: ncsn is better. " + _DECISION,
    CLAIM_SDE: _PAIRED + "Supported: vp is better than ve; contradicted: ve is better. " + _DECISION,
    CLAIM_CONVERGENCE: (
        "Convergence point of a curve: the first kimg from which the primary metric stays within 5% of its plateau "
        "(median of the last 3 evaluations); a curve that never settles counts as the training budget (censored, "
        "never dropped). For every factor that varies schedule, sampler, steps, grid, guidance or the evaluation "
        "setting, every pair of its values is compared on paired trained models (a model's mean over its settings "
        "for a model-level factor; each model's own settings for an evaluation-level one). Supported (equivalence): "
        f"every pair's 95% t-interval lies within +-{CONVERGENCE_SPREAD:.0%} of the budget, every pair has at least 6 "
        f"trained-model pairs and at least {MIN_SETTLED:.0%} of each value's curves settled; contradicted: some pair "
        "differs by more than the margin (one-sided t-test, Bonferroni over the pairs). The claim's p-value (twice "
        f"the better route's) enters the Holm correction; otherwise '{INCONCLUSIVE}'. The dynamics axis is shown as a "
        "contrast (the claim expects it to matter more)."),
    CLAIM_GUIDANCE: (
        "Each guidance strength is compared with no guidance within each trained model (same sampler), on class "
        "accuracy and on each quality metric (FID, KID, IS). Supported: accuracy is higher at every strength and at "
        "least one quality metric is worse at some strength; contradicted: accuracy is lower at some strength, or "
        "every quality metric improves at every strength. Each route's p-value combines its tests (the largest for "
        "'every', Bonferroni for 'some'); the claim's p-value (twice the better route's) enters the Holm correction, "
        f"and the sign-flip check applies to each test used. Otherwise '{INCONCLUSIVE}'."),
    CLAIM_SIZE: (
        "Per pair of seeds (and other shared axes), the relative gain of the largest over the smallest network on "
        "the primary metric, on the most and on the least complex dataset (order: toy < digits < mnist < "
        "fashion-mnist < cifar10 < image folders/ffhq). Supported: the gain is larger on the complex dataset and "
        "positive there; contradicted: smaller. " + _DECISION),
    CLAIM_IS: (
        "Reliability of one evaluation at a fixed small n: the intraclass correlation ICC(1) (Shrout & Fleiss "
        "1979) of each metric over the runs, from independent evaluations of each run's final snapshot on disjoint "
        "per-sample seed ranges (evaluation.draws): how well one evaluation at that n ranks the runs. FID's bias in "
        "1/n shifts every run alike and does not raise or lower it. Supported: IS's ICC is higher than FID's "
        "(jackknife t-interval over runs); contradicted: lower; the n sweep (relative change between sample "
        f"counts) is shown but not tested, because FID's 1/n bias favours IS by construction. Otherwise "
        f"'{NO_DIFFERENCE}'."),
}



# ---- claims ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Effect:
    """The headline number of a claim that no single Comparison carries (convergence, IS stability):
    `quantity` estimated as `estimate` with its 95% interval `ci`, in `unit`, from `n` units (pairs of
    trained models or runs); `detectable`: the smallest effect found with 80% power, in `unit`;
    `margin`: an equivalence margin, in `unit`, where the claim is an equivalence."""

    quantity: str
    estimate: float
    ci: tuple[float, float]
    unit: str
    n: int
    detectable: float = math.nan
    margin: float = math.nan


@dataclass
class Verdict:
    """One row of the verdict table.

    verdict: one of :data:`VERDICTS`; p: the claim's p-value before the correction across claims,
    p_adj after it; lean: the verdict the evidence points to if significant; robust: the sign-flip
    checks of the tests behind `lean` pass; n: the `unit`s behind the verdict (pairs of trained
    models, or runs)."""

    claim: str
    verdict: str
    evidence: list[str]
    n: int
    definition: str = ""
    p: float = math.nan
    p_adj: float = math.nan
    lean: str | None = None
    robust: bool = True
    undecided: str = NO_DIFFERENCE
    tests: list[Comparison] = field(default_factory=list)
    unit: str = "pairs of trained models"   # what n counts
    effect: Effect | None = None            # the headline number where `tests` hold none (convergence, IS)

    @property
    def decidable(self) -> bool:
        return self.verdict not in (UNTESTED, UNDERPOWERED) and np.isfinite(self.p)

    def decide(self, p_adj: float, alpha: float = ALPHA, alpha_bar: float | None = None) -> Verdict:
        """The verdict at the adjusted p-value (Holm across the table's claims)."""
        if not self.decidable:
            return self
        self.p_adj = p_adj
        self.verdict = self.lean if (self.lean and p_adj < alpha and self.robust) else self.undecided
        if alpha_bar is not None:  # the smallest detectable effects now refer to Holm's strictest step
            for c in self.tests:
                old = c.summary()
                c.alpha_bar = alpha_bar
                new = c.summary()
                self.evidence = [e.replace(old, new) for e in self.evidence]
        return self


def _primary(metrics: Sequence[str]) -> str | None:
    for m in ("fid", "is", "kid"):
        if m in metrics:
            return m
    return metrics[0] if metrics else None


def _find_axis(axes: Sequence[str], *needles: str) -> str | None:
    for a in axes:
        if any(n == a or n in a for n in needles):
            return a
    return None


def _routes(claim: str, n: int, evidence: list[str], tests: list[Comparison], routes: dict[str, tuple[float, bool]],
            undecided: str, alpha: float) -> Verdict:
    """A claim decided by routes {verdict: (p, robust)}: p of the claim = the smallest route p times
    the number of routes (Bonferroni over the two directions, as a two-sided test)."""
    lean, (p, robust) = min(routes.items(), key=lambda kv: kv[1][0])
    p_claim = min(1.0, len(routes) * p)
    v = Verdict(claim, undecided, evidence, n, DEFINITIONS.get(claim, ""), p_claim, math.nan, lean, robust, undecided,
                tests)
    return v.decide(p_claim, alpha)


def claim_better(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], claim: str, axis_key: str,
                 a: str, b: str, seed: int = 0, *, alpha: float = ALPHA, ix: _Index | None = None) -> Verdict:
    """Claim: value a of axis_key beats value b on the primary metric. The other metrics and each
    evaluation setting alone are secondary evidence (Holm within each group), not the verdict."""
    ix = ix or _Index(records)
    primary = _primary(metrics)
    definition = DEFINITIONS.get(claim, "")
    if axis_key not in axes or primary is None:
        return Verdict(claim, UNTESTED, [f"the study has no {axis_key} axis"], 0, definition)
    vals = [str(v) for v in axis_values(ix.records, axis_key)]
    if a not in vals or b not in vals:
        return Verdict(claim, UNTESTED, [f"{axis_key} does not include both {a} and {b} (has {', '.join(vals)})"], 0,
                       definition)
    main = _compare(ix, axis_key, a, b, primary, alpha=alpha, seed=seed)
    if not main.reachable:
        why = (main.note if main.n_pairs == 0 else
               f"{main.n_pairs} pair(s) of trained models: the sign-flip check cannot go below p = "
               f"{min_sign_flip_p(main.n_pairs):.3g}; a verdict needs at least {min_pairs(alpha)} seeds per side")
        return Verdict(claim, UNDERPOWERED, [why] + ([main.summary()] if main.n_pairs else []), main.n_pairs, definition,
                       tests=[main])
    others = [c for c in (_compare(ix, axis_key, a, b, m, alpha=alpha, seed=seed) for m in metrics if m != primary)
              if c.n_pairs]
    per_setting = [_compare(ix, axis_key, a, b, primary, alpha=alpha, seed=seed, settings=lambda s, e=e: s[0] == e)
                   for e in main.settings] if len(main.settings) > 1 else []
    evidence = [main.summary()]
    if others:
        evidence.append("secondary, other metrics (Holm over these): "
                        + "; ".join(c.summary() for c in _holm_decide(others, alpha)))
    if per_setting:
        evidence.append(f"secondary, {primary} per evaluation setting (Holm over these): "
                        + "; ".join(f"{c.settings[0]}: {c.summary()}" for c in _holm_decide(per_setting, alpha)))
    routes = {"supported": (main.p_better, main.robust), "contradicted": (main.p_worse, main.robust)}
    return _routes(claim, main.n_pairs, evidence, [main], routes, NO_DIFFERENCE, alpha)


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


_OFF = (None, 0, 0.0, False, "none", "off", "null", "None")


def claim_guidance(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], seed: int = 0, *,
                   alpha: float = ALPHA, ix: _Index | None = None) -> Verdict:
    """Claim: classifier guidance raises class accuracy but does not universally raise quality."""
    claim = CLAIM_GUIDANCE
    definition = DEFINITIONS[claim]
    ix = ix or _Index(records)
    g = _find_axis(axes, "guidance")
    if g is None:
        return Verdict(claim, UNTESTED, ["the study has no guidance axis"], 0, definition)
    vals = axis_values(ix.records, g)
    off = [v for v in vals if v in _OFF]
    if not off:
        return Verdict(claim, UNTESTED, [f"{g} has no unguided value (none/0) to compare with"], 0, definition)
    base = off[0]
    acc = next((m for m in metrics if metric_role(m) == "class"), None)
    if not acc:
        return Verdict(claim, UNTESTED, ["no class-accuracy metric was evaluated (add class_accuracy to "
                                         "evaluation.metrics)"], 0, definition)
    quality = [m for m in metrics if metric_role(m) == "quality"]
    on = [v for v in vals if v not in _OFF]
    acc_c = [_compare(ix, g, v, base, acc, alpha=alpha, seed=seed, sign=+1) for v in on]
    q_c = [c for c in (_compare(ix, g, v, base, m, alpha=alpha, seed=seed) for v in on for m in quality) if c.n_pairs]
    n = min((c.n_pairs for c in acc_c), default=0)
    evidence = [c.summary() for c in acc_c + q_c]
    if not acc_c or not all(c.reachable for c in acc_c):
        return Verdict(claim, UNDERPOWERED, [f"class accuracy has {n} pair(s) of guided and unguided evaluations; a "
                                             f"verdict needs at least {min_pairs(alpha)}"] + evidence, n, definition,
                       tests=acc_c + q_c)
    q_ok = [c for c in q_c if c.reachable]
    up = max(c.p_better for c in acc_c)
    worse = min(q_ok, key=lambda c: c.p_worse) if q_ok else None
    p_worse = min(1.0, worse.p_worse * len(q_ok)) if worse else 1.0
    down = min(acc_c, key=lambda c: c.p_worse)
    all_better = max((c.p_better for c in q_ok), default=1.0) if q_ok and len(q_ok) == len(q_c) else 1.0
    robust_s = all(c.robust for c in acc_c) and (worse.robust if worse else False)
    routes_c = {"lower accuracy": (min(1.0, down.p_worse * len(acc_c)), down.robust),
                "every quality metric better": (all_better, all(c.robust for c in q_ok))}
    why_c, (p_c, robust_c) = min(routes_c.items(), key=lambda kv: kv[1][0])
    evidence.append(f"route to supported (accuracy up at every strength, a quality metric worse somewhere): p = "
                    f"{max(up, p_worse):.3g}; route to contradicted ({why_c}): p = {min(1.0, 2 * p_c):.3g}")
    return _routes(claim, n, evidence, acc_c + q_c,
                   {"supported": (max(up, p_worse), robust_s), "contradicted": (min(1.0, 2 * p_c), robust_c)},
                   INCONCLUSIVE, alpha)


def _complexity(name: Any, order: list) -> tuple:
    """Sort key of a data.name value: the dataset registry's complexity rank; a name that is not
    registered or not ranked comes after the ranked ones; ties keep the study's order."""
    spec = DATASETS.get(str(name)) if str(name) in DATASETS else None
    rank = spec.complexity if spec is not None else None
    return (rank is None, rank or 0.0, order.index(name))


def claim_model_size(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], size_order: Sequence[Any] | None = None,
                     seed: int = 0, *, alpha: float = ALPHA, ix: _Index | None = None) -> Verdict:
    """Claim: model size matters, more so on complex data. Per pair of seeds (and other shared
    axes), the relative gain of the largest over the smallest network is compared between the most
    and the least complex dataset (paired t-test, sign-flip check)."""
    claim = CLAIM_SIZE
    definition = DEFINITIONS[claim]
    ix = ix or _Index(records)
    size = _find_axis(axes, "network.preset", "network.")
    primary = _primary(metrics)
    if size is None or primary is None:
        return Verdict(claim, UNTESTED, ["the study has no network size axis"], 0, definition)
    present = axis_values(ix.records, size)
    sizes = [s for s in (list(size_order) if size_order else present) if s in present]
    if len(sizes) < 2:
        return Verdict(claim, UNTESTED, [f"{size} has fewer than two values"], 0, definition)
    small, large = str(sizes[0]), str(sizes[-1])
    data = _find_axis(axes, "data.name")
    if data is None or len(axis_values(ix.records, data)) < 2:
        return Verdict(claim, UNTESTED, ["needs a data.name axis with at least two datasets to compare"], 0, definition)
    sgn = ix.direction(primary)
    table = ix.table(primary)
    models = list(table.values())
    common = set.intersection(*(set(m.at) for m in models)) if models else set()
    ctx_keys = (set.intersection(*(set(m.labels) for m in models)) if models else set()) - {size, data}
    cell: dict[tuple, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for m in models:
        if common:
            cell[_context(m.labels, ctx_keys)][(str(m.labels[data]), str(m.labels[size]))].append(
                float(np.mean([m.at[s] for s in common])))
    dsets = axis_values(ix.records, data)
    ranked = sorted(dsets, key=lambda x: _complexity(x, dsets))
    simple, complex_ = str(ranked[0]), str(ranked[-1])

    def gain(vals: dict, ds: str) -> float | None:
        s, lg = vals.get((ds, small)), vals.get((ds, large))
        if not s or not lg or np.mean(s) == 0:
            return None
        return sgn * (np.mean(lg) - np.mean(s)) / abs(np.mean(s))

    pairs = [(gc, gs) for vals in cell.values() if (gc := gain(vals, complex_)) is not None
             and (gs := gain(vals, simple)) is not None]
    d = [gc - gs for gc, gs in pairs]
    comp = _comparison(Pairing(d, len(d), len(d), sorted(str(s[0]) for s in common)), "relative gain",
                       complex_, simple, primary, +1, alpha, seed)
    ev = [f"{primary}: relative gain of {large} over {small} on {complex_}: {np.mean([p[0] for p in pairs]):+.1%}, on "
          f"{simple}: {np.mean([p[1] for p in pairs]):+.1%}" if pairs else "no seeds with both sizes on both datasets"]
    if not comp.reachable:
        return Verdict(claim, UNDERPOWERED, ev + [f"{len(d)} pair(s): a verdict needs at least {min_pairs(alpha)}"],
                       len(d), definition, tests=[comp])
    gc_test = paired_t([p[0] for p in pairs])
    ev.append(f"gain difference {complex_} - {simple}: {comp.summary()}")
    return _routes(claim, len(d), ev, [comp], {"supported": (max(comp.p_better, gc_test.p_greater), comp.robust),
                                               "contradicted": (comp.p_worse, comp.robust)}, NO_DIFFERENCE, alpha)


def _draw_tables(ix: _Index) -> tuple[dict[str, np.ndarray], int, list]:
    """Per metric (fid, is) a (runs, draws) table of the models evaluated on independent draws of both."""
    per: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for m in ("fid", "is"):
        for r in ix.by_metric.get(m, ()):
            dr = r.get("draws")
            if dr and len(dr.get("values") or ()) >= 2:
                per[(r.get("run"), str(r["labels"].get(EVAL_KEY)))][m] = dr
    both = [(key, d) for key, d in sorted(per.items(), key=lambda kv: str(kv[0])) if len(d) == 2]
    if not both:
        return {}, 0, []
    k = min(len(d[m]["values"]) for _, d in both for m in ("fid", "is"))
    return ({m: np.array([[float(v) for v in d[m]["values"][:k]] for _, d in both]) for m in ("fid", "is")}, k,
            [d["fid"].get("n") for _, d in both])


def claim_is_stability(sweeps: Sequence[dict] = (), seed: int = 0, *, records: Sequence[dict] = (), alpha: float = ALPHA,
                       ix: _Index | None = None) -> Verdict:
    """Claim: IS ranks runs more reliably than FID at a small sample count: ICC(1) of each metric
    over runs from independent draws (records' "draws"), compared with a jackknife t-interval over
    runs. `sweeps` (per run {"fid": {n: v}, "is": {n: v}}) are shown, not tested (see DEFINITIONS)."""
    claim = CLAIM_IS
    definition = DEFINITIONS[claim]
    ix = ix or _Index(records)
    tables, k, ns = _draw_tables(ix)
    shown = []
    rel = [(abs(s["fid"][min(s["fid"])] - s["fid"][max(s["fid"])]) / abs(s["fid"][max(s["fid"])]),
            abs(s["is"][min(s["is"])] - s["is"][max(s["is"])]) / abs(s["is"][max(s["is"])]))
           for s in sweeps if len(set(s.get("fid", {})) & set(s.get("is", {}))) >= 2
           and s["fid"][max(s["fid"])] and s["is"][max(s["is"])]]
    if rel:
        shown.append(f"n sweep (not tested: FID's bias in 1/n favours IS by construction): relative change from the "
                     f"smallest to the largest n, FID {np.mean([a for a, _ in rel]):.1%}, IS {np.mean([b for _, b in rel]):.1%} "
                     f"over {len(rel)} run(s)")
    if not tables:
        return Verdict(claim, UNTESTED, ["no run was evaluated on independent draws of FID and IS (add evaluation.draws, "
                                         "e.g. {n: 500, count: 4})"] + shown, 0, definition)
    runs = len(ns)
    if runs < 3:
        return Verdict(claim, UNDERPOWERED, [f"{runs} run(s) with draws of FID and IS; the comparison needs at least 3"]
                       + shown, runs, definition, unit="runs")
    icc_f, loo_f = icc1_jackknife(tables["fid"])
    icc_i, loo_i = icc1_jackknife(tables["is"])
    d_icc, se = icc_i - icc_f, _jackknife_se(loo_i - loo_f)
    se_f, se_i = _jackknife_se(loo_f), _jackknife_se(loo_i)
    df = runs - 1
    q = float(special.stdtrit(df, 0.975))
    if se > 0 and np.isfinite(d_icc):
        p_up, p_down = float(special.stdtr(df, -d_icc / se)), float(special.stdtr(df, d_icc / se))
    else:  # every leave-one-out estimate agrees
        p_up, p_down = (0.5, 0.5) if not d_icc else ((0.0, 1.0) if d_icc > 0 else (1.0, 0.0))
    n_txt = ", ".join(sorted({str(n) for n in ns}))
    ev = [f"reliability of one evaluation at n = {n_txt} ({k} independent draws per run, {runs} runs): ICC(1) FID "
          f"{icc_f:.3f} [{icc_f - q * se_f:.3f}, {icc_f + q * se_f:.3f}], IS {icc_i:.3f} [{icc_i - q * se_i:.3f}, "
          f"{icc_i + q * se_i:.3f}]; IS - FID = {d_icc:+.3f} [95% CI {d_icc - q * se:+.3f}, {d_icc + q * se:+.3f}] "
          f"(jackknife over runs), smallest detectable difference at 80% power about "
          f"{(q + float(special.stdtrit(df, POWER))) * se:.3f}"] + shown
    v = _routes(claim, runs, ev, [], {"supported": (p_up, True), "contradicted": (p_down, True)}, NO_DIFFERENCE, alpha)
    v.unit = "runs"
    v.effect = Effect(f"ICC(1) of one evaluation at n = {n_txt}, IS - FID", d_icc, (d_icc - q * se, d_icc + q * se),
                      "ICC", runs, (q + float(special.stdtrit(df, POWER))) * se)
    return v


def verdicts(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], *, budget: float | None = None,
             sweeps: Sequence[dict] = (), size_order: Sequence[Any] | None = None, seed: int = 0,
             alpha: float = ALPHA) -> list[Verdict]:
    """The verdict table: one row per claim of arXiv 2402.13369, Holm-corrected across the claims
    whose design can reach a verdict."""
    ix = _Index(records, budget)
    dyn = _find_axis(axes, "dynamics.name") or "dynamics.name"
    rows = [
        claim_better(records, axes, metrics, CLAIM_DISCRETE, dyn, "ddpm", "ncsn", seed, alpha=alpha, ix=ix),
        claim_better(records, axes, metrics, CLAIM_SDE, dyn, "vp", "ve", seed, alpha=alpha, ix=ix),
        claim_similar_convergence(records, axes, metrics, budget, seed=seed, alpha=alpha, ix=ix),
        claim_guidance(records, axes, metrics, seed, alpha=alpha, ix=ix),
        claim_model_size(records, axes, metrics, size_order, seed, alpha=alpha, ix=ix),
        claim_is_stability(sweeps, seed, records=records, alpha=alpha, ix=ix),
    ]
    family = [v for v in rows if v.decidable]
    for v, p in zip(family, holm([v.p for v in family])):
        v.decide(p, alpha, alpha / len(family))
    return rows
