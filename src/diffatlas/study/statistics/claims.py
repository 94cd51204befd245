"""The paper's claims, each an operational definition (DEFINITIONS, in .verdict) decided from the
records by the paired comparisons of .pairs and the tests of .tests: the comparative claims here,
the convergence claim in .equivalence, the IS-stability claim in .reliability; `verdicts` decides
every claim of a study."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...data import DATASETS
from ...metrics.spec import role as metric_role
from .equivalence import claim_similar_convergence
from .pairs import (Pairing, _compare, _comparison, _context, _holm_decide, _Index, axis_values,
                    min_pairs)
from .reliability import claim_is_stability
from .tests import ALPHA, holm, min_sign_flip_p, paired_t
from .verdict import (CLAIM_DISCRETE, CLAIM_GUIDANCE, CLAIM_SDE, CLAIM_SIZE, DEFINITIONS, INCONCLUSIVE,
                      NO_DIFFERENCE, UNDERPOWERED, UNTESTED, Verdict, _find_axis, _primary, _routes)


# ---- claims ----------------------------------------------------------------------------------

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
