"""Statistics across seeds: axis effects, paired comparisons and a verdict on each of the paper's claims.

Data model: a *record* is one (run, evaluation setting, metric) with its final value and its
convergence point:

    {"run": id, "labels": {axis key: value, ..., "seed": s, "eval": "heun x18"}, "metric": "fid",
     "final": float, "converged_kimg": float | None, "budget_kimg": float}

Comparisons of an axis value a against b are *paired*: records are grouped by their context
(every other label that both sides define, the seed and the evaluation setting included); each
context with both sides gives one difference (mean over any labels only one side defines).
The mean difference gets a percentile-bootstrap interval (Efron & Tibshirani 1993) and a
two-sided sign-flip permutation p-value (exact when there are at most 16 pairs, Monte Carlo
otherwise; Good 2005, ch. 3). All randomness comes from explicit numpy seeds.

A claim "a is better than b" is *supported* when the interval excludes 0 in a's favour and
p < alpha, *contradicted* when both point the other way, else *inconclusive*; "not tested"
when the study lacks the axis.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

# +1: higher is better; -1: lower is better.
DIRECTIONS = {"fid": -1, "kid": -1, "bpd": -1, "nll": -1, "is": +1, "precision": +1, "recall": +1,
              "accuracy": +1, "acc": +1, "class_accuracy": +1, "cas": +1, "density": +1, "coverage": +1}
ACCURACY_METRICS = ("accuracy", "class_accuracy", "acc", "cas")
QUALITY_METRICS = ("fid", "kid", "is")
ALPHA = 0.05
CONVERGENCE_SPREAD = 0.2   # claim 2: spread of convergence kimg at most this fraction of the budget
EVAL_KEY = "eval"           # label of the evaluation setting (sampler x steps) in records


def direction(metric: str) -> int:
    """+1 if higher values of `metric` are better (IS, precision, accuracy), -1 if lower (FID, KID)."""
    m = metric.lower()
    if m in DIRECTIONS:
        return DIRECTIONS[m]
    if m.startswith(("fid", "kid")):
        return -1
    return +1


# ---- tests -----------------------------------------------------------------------------------

def bootstrap_ci(x: Sequence[float], *, level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of x."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def sign_flip_p(d: Sequence[float], *, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of mean(d) = 0 for paired differences d (random sign flips)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs((signs * d).mean(axis=1))
        return float(np.mean(stats >= obs - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, n))
    stats = np.abs((signs * d).mean(axis=1))
    return float((1 + np.sum(stats >= obs - tol)) / (n_perm + 1))


@dataclass
class Comparison:
    """a vs b on one metric. diff = mean(a - b) in metric units; gain = diff * direction (> 0: a better)."""

    axis: str
    a: Any
    b: Any
    metric: str
    n_pairs: int
    diff: float
    ci: tuple[float, float]
    p: float
    gain: float
    verdict: str  # "a" | "b" | "none" (no significant difference) | "untested"
    differences: list[float] = field(default_factory=list)

    def summary(self) -> str:
        if self.n_pairs == 0:
            return f"{self.metric}: no paired runs of {self.a} and {self.b}"
        d = direction(self.metric)
        better = self.a if self.gain > 0 else self.b
        return (f"{self.metric} {self.a} - {self.b} = {self.diff:+.4g} [95% CI {self.ci[0]:+.4g}, {self.ci[1]:+.4g}], "
                f"p = {self.p:.3g}, {self.n_pairs} pairs ({'lower' if d < 0 else 'higher'} is better; "
                f"{better} ahead{'' if self.verdict != 'none' else ', not significant'})")


def _context(labels: dict, keys: Iterable[str]) -> tuple:
    return tuple((k, str(labels.get(k))) for k in sorted(keys))


def paired_differences(records: Sequence[dict], axis: str, a: Any, b: Any, metric: str, value: str = "final") -> list[float]:
    """One difference (a - b) per shared context; see the module docstring."""
    rec = [r for r in records if r["metric"] == metric and r.get(value) is not None and axis in r["labels"]]
    side_a = [r for r in rec if str(r["labels"][axis]) == str(a)]
    side_b = [r for r in rec if str(r["labels"][axis]) == str(b)]
    if not side_a or not side_b:
        return []
    keys_a = set.intersection(*(set(r["labels"]) for r in side_a))
    keys_b = set.intersection(*(set(r["labels"]) for r in side_b))
    shared = {k for k in keys_a & keys_b if k != axis}
    # a label only one side defines (e.g. the DDPM beta schedule when comparing with NCSN) is averaged over
    groups: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in side_a:
        groups[_context(r["labels"], shared)][0].append(float(r[value]))
    for r in side_b:
        groups[_context(r["labels"], shared)][1].append(float(r[value]))
    return [float(np.mean(va) - np.mean(vb)) for _, (va, vb) in sorted(groups.items()) if va and vb]


def compare(records: Sequence[dict], axis: str, a: Any, b: Any, metric: str, *, value: str = "final",
            alpha: float = ALPHA, seed: int = 0, higher_is_better: bool | None = None) -> Comparison:
    """Paired bootstrap + sign-flip permutation comparison of axis value a against b."""
    d = paired_differences(records, axis, a, b, metric, value)
    sgn = direction(metric) if higher_is_better is None else (1 if higher_is_better else -1)
    if not d:
        return Comparison(axis, a, b, metric, 0, math.nan, (math.nan, math.nan), math.nan, math.nan, "untested", [])
    diff = float(np.mean(d))
    ci = bootstrap_ci(d, seed=seed)
    p = sign_flip_p(d, seed=seed)
    gain = diff * sgn
    lo, hi = sorted((ci[0] * sgn, ci[1] * sgn))
    if p < alpha and lo > 0:
        verdict = "a"
    elif p < alpha and hi < 0:
        verdict = "b"
    else:
        verdict = "none"
    return Comparison(axis, a, b, metric, len(d), diff, ci, p, gain, verdict, d)


def axis_values(records: Sequence[dict], axis: str) -> list:
    seen: list = []
    for r in records:
        if axis in r["labels"] and r["labels"][axis] not in seen:
            seen.append(r["labels"][axis])
    return seen


def axis_effect(records: Sequence[dict], axis: str, metric: str, value: str = "final", seed: int = 0) -> list[dict]:
    """Per value of `axis`: mean of `value` over its records, bootstrap interval across seeds, n.

    Records of one seed are averaged first, so the interval is across seeds."""
    out = []
    for v in axis_values(records, axis):
        by_seed: dict[Any, list[float]] = defaultdict(list)
        for r in records:
            if r["metric"] == metric and str(r["labels"].get(axis)) == str(v) and r.get(value) is not None:
                by_seed[r["labels"].get("seed")].append(float(r[value]))
        per_seed = [float(np.mean(x)) for x in by_seed.values()]
        if not per_seed:
            continue
        lo, hi = bootstrap_ci(per_seed, seed=seed)
        out.append({"axis": axis, "value": v, "metric": metric, "mean": float(np.mean(per_seed)), "low": lo, "high": hi,
                    "seeds": len(per_seed), "records": sum(len(x) for x in by_seed.values())})
    return out


def all_pairwise(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], seed: int = 0) -> list[Comparison]:
    out = []
    for axis in axes:
        vals = axis_values(records, axis)
        for a, b in itertools.combinations(vals, 2):
            for m in metrics:
                c = compare(records, axis, a, b, m, seed=seed)
                if c.n_pairs:
                    out.append(c)
    return out


# ---- claims ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    claim: str
    verdict: str          # supported | contradicted | inconclusive | not tested
    evidence: list[str]
    n: int                # sample size behind the verdict (pairs, runs or seeds)


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


def claim_better(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], claim: str, axis_key: str,
                 a: str, b: str, seed: int = 0) -> Verdict:
    """Claim: value a of axis_key beats value b (on the primary metric; the others are evidence)."""
    primary = _primary(metrics)
    if axis_key not in axes or primary is None:
        return Verdict(claim, "not tested", [f"the study has no {axis_key} axis"], 0)
    vals = [str(v) for v in axis_values(records, axis_key)]
    if a not in vals or b not in vals:
        return Verdict(claim, "not tested", [f"{axis_key} does not include both {a} and {b} (has {', '.join(vals)})"], 0)
    comps = [compare(records, axis_key, a, b, m, seed=seed) for m in [primary] + [m for m in metrics if m != primary]]
    comps = [c for c in comps if c.n_pairs]
    if not comps or comps[0].metric != primary:
        return Verdict(claim, "inconclusive", [f"no paired {primary} results of {a} and {b}"], 0)
    main = comps[0]
    verdict = {"a": "supported", "b": "contradicted", "none": "inconclusive"}[main.verdict]
    return Verdict(claim, verdict, [c.summary() for c in comps], main.n_pairs)


def _spread_ci(groups: dict[str, list[float]], seed: int, n_boot: int = 2000) -> tuple[float, float, float]:
    """Range (max - min) of the group means and its bootstrap interval (resampling within groups)."""
    groups = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items() if len(v)}
    means = [g.mean() for g in groups.values()]
    spread = float(max(means) - min(means))
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        ms = [g[rng.integers(0, len(g), len(g))].mean() for g in groups.values()]
        boot[i] = max(ms) - min(ms)
    return spread, float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def claim_similar_convergence(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], budget: float | None,
                              threshold: float = CONVERGENCE_SPREAD, seed: int = 0) -> Verdict:
    """Claim: across schedules, samplers and guidance, quality stabilises at a similar kimg.

    For each such factor, the spread (max - min over its values) of the mean convergence kimg is
    compared with `threshold` x the training budget."""
    claim = "configurations reach stable quality at a similar point in training"
    primary = _primary(metrics)
    factors = [a for a in axes if any(w in a for w in ("schedule", "sampler", "grid", "guidance", "steps"))]
    if len({r["labels"].get(EVAL_KEY) for r in records}) > 1:
        factors.append(EVAL_KEY)
    if primary is None or not factors:
        return Verdict(claim, "not tested", ["the study varies no schedule, sampler or guidance"], 0)
    rec = [r for r in records if r["metric"] == primary]
    budget = budget or max((r.get("budget_kimg") or 0 for r in rec), default=0) or None
    if not budget:
        return Verdict(claim, "inconclusive", ["no training budget known"], 0)
    evidence, states, n_total = [], [], 0
    missing = sum(1 for r in rec if r.get("converged_kimg") is None)
    for f in factors:
        groups: dict[str, list[float]] = defaultdict(list)
        for r in rec:
            if f in r["labels"] and r.get("converged_kimg") is not None:
                groups[str(r["labels"][f])].append(float(r["converged_kimg"]))
        if len(groups) < 2:
            continue
        spread, lo, hi = _spread_ci(groups, seed)
        n_total += sum(len(v) for v in groups.values())
        state = "supported" if hi <= threshold * budget else "contradicted" if lo > threshold * budget else "inconclusive"
        states.append(state)
        means = ", ".join(f"{k}: {np.mean(v):.3g}" for k, v in groups.items())
        evidence.append(f"{f}: convergence kimg ({primary}) {means}; spread {spread:.3g} kimg = {spread / budget:.1%} of the "
                        f"{budget:g}-kimg budget [95% CI {lo / budget:.1%}, {hi / budget:.1%}] vs threshold {threshold:.0%}")
    dyn = _find_axis(axes, "dynamics.name")
    if dyn:
        groups = defaultdict(list)
        for r in rec:
            if dyn in r["labels"] and r.get("converged_kimg") is not None:
                groups[str(r["labels"][dyn])].append(float(r["converged_kimg"]))
        if len(groups) >= 2:
            spread, lo, hi = _spread_ci(groups, seed)
            evidence.append(f"for contrast, {dyn}: spread {spread:.3g} kimg = {spread / budget:.1%} of the budget")
    if missing:
        evidence.append(f"{missing} curve(s) had not settled within 5% of their plateau and are left out")
    if not states:
        return Verdict(claim, "inconclusive", evidence or ["too few converged curves per factor value"], 0)
    verdict = "contradicted" if "contradicted" in states else "supported" if all(s == "supported" for s in states) else "inconclusive"
    return Verdict(claim, verdict, evidence, n_total)


def claim_guidance(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], seed: int = 0) -> Verdict:
    """Claim: classifier guidance raises class accuracy but does not universally raise quality."""
    claim = "classifier guidance helps class accuracy but does not universally improve quality"
    g = _find_axis(axes, "guidance")
    if g is None:
        return Verdict(claim, "not tested", ["the study has no guidance axis"], 0)
    vals = axis_values(records, g)
    off = [v for v in vals if v in (None, 0, 0.0, False, "none", "off", "null")]
    if not off:
        return Verdict(claim, "not tested", [f"{g} has no unguided value (none/0) to compare with"], 0)
    base = off[0]
    acc = next((m for m in metrics if m in ACCURACY_METRICS), None)
    quality = [m for m in metrics if m in QUALITY_METRICS]
    evidence, acc_states, q_better, n = [], [], [], 0
    for v in vals:
        if v in off:
            continue
        if acc:
            c = compare(records, g, v, base, acc, seed=seed)
            evidence.append(c.summary())
            acc_states.append(c.verdict)
            n = max(n, c.n_pairs)
        for m in quality:
            c = compare(records, g, v, base, m, seed=seed)
            if c.n_pairs:
                evidence.append(c.summary())
                q_better.append(c.verdict == "a")
                n = max(n, c.n_pairs)
    if not acc:
        return Verdict(claim, "inconclusive", ["no class-accuracy metric was evaluated"] + evidence, n)
    if any(s == "b" for s in acc_states):
        return Verdict(claim, "contradicted", evidence, n)
    if q_better and all(q_better):
        return Verdict(claim, "contradicted", evidence + ["guidance improved every quality metric at every strength"], n)
    if acc_states and all(s == "a" for s in acc_states):
        return Verdict(claim, "supported", evidence, n)
    return Verdict(claim, "inconclusive", evidence, n)


DATA_COMPLEXITY = ["toy", "gmm", "moons", "digits", "mnist", "fashion-mnist", "cifar10", "image-folder", "ffhq"]


def _complexity(name: Any, order: list) -> tuple:
    s = str(name)
    for i, d in enumerate(DATA_COMPLEXITY):
        if s == d or s.startswith(d):
            return (i, order.index(name))
    return (len(DATA_COMPLEXITY), order.index(name))


def claim_model_size(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], size_order: Sequence[Any] | None = None,
                     seed: int = 0) -> Verdict:
    """Claim: model size matters, more so on complex data. The relative gain of the largest over the
    smallest network (per seed) is compared between the most and the least complex dataset."""
    claim = "model size matters more on complex data"
    size = _find_axis(axes, "network.preset", "network.")
    primary = _primary(metrics)
    if size is None or primary is None:
        return Verdict(claim, "not tested", ["the study has no network size axis"], 0)
    sizes = list(size_order) if size_order else axis_values(records, size)
    sizes = [s for s in sizes if s in axis_values(records, size)]
    if len(sizes) < 2:
        return Verdict(claim, "not tested", [f"{size} has fewer than two values"], 0)
    small, large = sizes[0], sizes[-1]
    data = _find_axis(axes, "data.name")
    sgn = direction(primary)

    def rel_gains(subset: Sequence[dict]) -> dict[tuple, float]:
        d: dict[tuple, float] = {}
        rec = [r for r in subset if r["metric"] == primary]
        ctx_keys = set.intersection(*(set(r["labels"]) for r in rec)) - {size} if rec else set()
        by: dict[tuple, dict] = defaultdict(dict)
        for r in rec:
            by[_context(r["labels"], ctx_keys - {data} if data else ctx_keys)][str(r["labels"][size])] = float(r["final"])
        for ctx, vals in by.items():
            if str(small) in vals and str(large) in vals and vals[str(small)] != 0:
                d[ctx] = sgn * (vals[str(large)] - vals[str(small)]) / abs(vals[str(small)])
        return d

    if data is None or len(axis_values(records, data)) < 2:
        g = list(rel_gains(records).values())
        ev = [f"{primary}: relative gain of {large} over {small}: {np.mean(g):+.1%} over {len(g)} pairs" if g else "no pairs"]
        return Verdict(claim, "not tested", ev + ["needs a data.name axis with at least two datasets to compare"], len(g))
    dsets = axis_values(records, data)
    ranked = sorted(dsets, key=lambda x: _complexity(x, dsets))
    simple, complex_ = ranked[0], ranked[-1]
    gs = rel_gains([r for r in records if r["labels"].get(data) == simple])
    gc = rel_gains([r for r in records if r["labels"].get(data) == complex_])
    common = sorted(set(gs) & set(gc))
    if not common:
        return Verdict(claim, "inconclusive", ["no matching seeds across datasets"], 0)
    d = [gc[c] - gs[c] for c in common]
    lo, hi = bootstrap_ci(d, seed=seed)
    p = sign_flip_p(d, seed=seed)
    lo_c, hi_c = bootstrap_ci([gc[c] for c in common], seed=seed)
    ev = [f"{primary}: relative gain of {large} over {small} on {complex_}: {np.mean([gc[c] for c in common]):+.1%} "
          f"[{lo_c:+.1%}, {hi_c:+.1%}]; on {simple}: {np.mean([gs[c] for c in common]):+.1%}",
          f"difference {np.mean(d):+.1%} [95% CI {lo:+.1%}, {hi:+.1%}], p = {p:.3g}, {len(d)} pairs"]
    if p < ALPHA and lo > 0 and lo_c > 0:
        v = "supported"
    elif p < ALPHA and hi < 0:
        v = "contradicted"
    else:
        v = "inconclusive"
    return Verdict(claim, v, ev, len(d))


def claim_is_stability(sweeps: Sequence[dict], seed: int = 0) -> Verdict:
    """Claim: IS is less sensitive to the number of samples than FID.

    `sweeps`: one entry per run, {"fid": {n: value}, "is": {n: value}} at one snapshot. The
    sensitivity of a metric is |m(n_min) - m(n_max)| / |m(n_max)|; FID minus IS sensitivity is
    tested across runs (paired)."""
    claim = "IS is less sensitive to the number of samples than FID"
    d = []
    for s in sweeps:
        f, i = s.get("fid", {}), s.get("is", {})
        ns = sorted(set(f) & set(i))
        if len(ns) < 2 or f[ns[-1]] == 0 or i[ns[-1]] == 0:
            continue
        sf = abs(f[ns[0]] - f[ns[-1]]) / abs(f[ns[-1]])
        si = abs(i[ns[0]] - i[ns[-1]]) / abs(i[ns[-1]])
        d.append((sf, si))
    if not d:
        return Verdict(claim, "not tested", ["no run evaluated FID and IS at two or more sample counts (evaluation.n_sweep)"], 0)
    diff = [a - b for a, b in d]
    lo, hi = bootstrap_ci(diff, seed=seed)
    p = sign_flip_p(diff, seed=seed)
    ev = [f"relative change from the smallest to the largest n: FID {np.mean([a for a, _ in d]):.1%}, "
          f"IS {np.mean([b for _, b in d]):.1%}; FID - IS = {np.mean(diff):+.1%} [95% CI {lo:+.1%}, {hi:+.1%}], "
          f"p = {p:.3g}, {len(d)} runs"]
    v = "supported" if (p < ALPHA and lo > 0) else "contradicted" if (p < ALPHA and hi < 0) else "inconclusive"
    return Verdict(claim, v, ev, len(d))


def verdicts(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], *, budget: float | None = None,
             sweeps: Sequence[dict] = (), size_order: Sequence[Any] | None = None, seed: int = 0) -> list[Verdict]:
    """The verdict table: one row per claim of arXiv 2402.13369 (see docs/DESIGN)."""
    dyn = _find_axis(axes, "dynamics.name") or "dynamics.name"
    return [
        claim_better(records, axes, metrics, "DDPM-based beats NCSN-based (discrete: ddpm vs ncsn)", dyn, "ddpm", "ncsn", seed),
        claim_better(records, axes, metrics, "DDPM-based beats NCSN-based (SDE: vp vs ve)", dyn, "vp", "ve", seed),
        claim_similar_convergence(records, axes, metrics, budget, seed=seed),
        claim_guidance(records, axes, metrics, seed),
        claim_model_size(records, axes, metrics, size_order, seed),
        claim_is_stability(sweeps, seed),
    ]
