"""Trained models, their pairs and paired comparisons (see the package docstring for the rules)."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...metrics.spec import higher_is_better
from .tests import (ALPHA, POWER, SIGN_FLIP_PERMS, bootstrap_ci, detectable_dz, dz_interval, holm, min_sign_flip_p,
                    paired_t, sign_flip_p)

EVAL_KEY = "eval"            # label of the evaluation setting (sampler x steps [+ guidance]) in records
EVAL_LABELS = (EVAL_KEY, "guidance", "sampling")   # labels of how a model was evaluated, not of which model


def direction(metric: str, records: Iterable[dict] = ()) -> int:
    """+1 if higher values of `metric` are better, -1 if lower: the records' "higher_is_better"
    when one of them says, else the metric registry's (a name no metric yields is then an error)."""
    for r in records:
        if r.get("metric") == metric and r.get("higher_is_better") is not None:
            return 1 if r["higher_is_better"] else -1
    return 1 if higher_is_better(metric) else -1


# ---- trained models and pairs ----------------------------------------------------------------

_Setting = tuple  # (eval, guidance, sampling) labels of a record, None where absent


def _setting_of(labels: dict) -> _Setting:
    return tuple(None if labels.get(k) is None else str(labels[k]) for k in EVAL_LABELS)


def _mean(x: Sequence[float]) -> float:
    return sum(x) / len(x)


@dataclass
class _Model:
    labels: dict                                    # model-level labels (no evaluation labels)
    at: dict = field(default_factory=dict)          # setting -> value


class _Index:
    """The records of one verdict table, grouped once: per (metric, value) the trained models."""

    def __init__(self, records: Sequence[dict], budget: float | None = None) -> None:
        self.records = list(records)
        self.budget = budget
        self.by_metric: dict[str, list[dict]] = defaultdict(list)
        for r in self.records:
            self.by_metric[r["metric"]].append(r)
        self._tables: dict[tuple[str, str], dict[Any, _Model]] = {}
        self._models: dict[Any, dict] = {}     # model key -> model-level labels
        self._where: dict[int, tuple] = {}     # id(record) -> (model key, setting)

    def direction(self, metric: str) -> int:
        return direction(metric, self.by_metric.get(metric, ()))

    def budget_of(self, r: dict) -> float | None:
        return self.budget or r.get("budget_kimg") or None

    def value(self, r: dict, value: str) -> float | None:
        """A record's number: a field ("final", "converged_kimg", ...) or "restricted_kimg", the
        convergence point censored at the budget (a curve that never settled counts as the budget)."""
        if value != "restricted_kimg":
            v = r.get(value)
            return None if v is None else float(v)
        budget = self.budget_of(r)
        settled = r.get("settled", r.get("converged_kimg") is not None)
        if r.get("converged_kimg") is None or not settled:
            return None if budget is None else float(budget)
        return float(r["converged_kimg"]) if budget is None else min(float(r["converged_kimg"]), float(budget))

    def table(self, metric: str, value: str = "final") -> dict[Any, _Model]:
        key = (metric, value)
        if key not in self._tables:
            raw: dict[Any, dict] = {}
            for r in self.by_metric.get(metric, ()):
                v = self.value(r, value)
                if v is None or not math.isfinite(v):
                    continue
                mk, setting = self._locate(r)
                raw.setdefault(mk, defaultdict(list))[setting].append(v)
            self._tables[key] = {mk: _Model(self._models[mk], {s: _mean(v) for s, v in at.items()})
                                 for mk, at in raw.items()}
        return self._tables[key]

    def _locate(self, r: dict) -> tuple:
        """(model key, setting) of a record, computed once."""
        where = self._where.get(id(r))
        if where is None:
            labels = {k: x for k, x in r["labels"].items() if k not in EVAL_LABELS}
            mk = r.get("run") or tuple(sorted((k, str(x)) for k, x in labels.items()))
            self._models.setdefault(mk, labels)
            where = self._where[id(r)] = (mk, _setting_of(r["labels"]))
        return where


@dataclass
class Pairing:
    """The paired differences (a - b) of one comparison: one per pair of trained models (or per
    model for an evaluation-level axis), with what they were formed from."""

    differences: list[float]
    models_a: int = 0
    models_b: int = 0
    settings: list[str] = field(default_factory=list)   # evaluation settings averaged over
    note: str = ""


def _context(labels: dict, keys: Iterable[str]) -> tuple:
    return tuple((k, str(labels.get(k))) for k in sorted(keys))


def _pair(table: dict[Any, _Model], axis: str, a: Any, b: Any,
          settings: Callable[[_Setting], bool] | None = None) -> Pairing:
    """Pairs of a and b in `table` (see the module docstring); `settings` restricts the settings used."""
    if axis in EVAL_LABELS:
        return _pair_within(table, axis, a, b)
    sa, sb = str(a), str(b)
    side_a = [m for m in table.values() if axis in m.labels and str(m.labels[axis]) == sa]
    side_b = [m for m in table.values() if axis in m.labels and str(m.labels[axis]) == sb]
    if not side_a or not side_b:
        return Pairing([], len(side_a), len(side_b), note=f"no evaluated models of both {a} and {b}")
    common = set.intersection(*(set(m.at) for m in side_a + side_b))
    if settings is not None:
        common = {s for s in common if settings(s)}
    if not common:
        return Pairing([], len(side_a), len(side_b), note="no evaluation setting shared by every compared model")
    shared = set.intersection(*(set(m.labels) for m in side_a + side_b)) - {axis}
    groups: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for side, models in ((0, side_a), (1, side_b)):
        for m in models:
            groups[_context(m.labels, shared)][side].append(_mean([m.at[s] for s in common]))
    diffs = [_mean(va) - _mean(vb) for _, (va, vb) in sorted(groups.items()) if va and vb]
    return Pairing(diffs, len(side_a), len(side_b), sorted(str(s[0]) for s in common),
                   "" if diffs else f"no {a} and {b} models share a seed")


def _pair_within(table: dict[Any, _Model], axis: str, a: Any, b: Any) -> Pairing:
    """An evaluation-level axis: each model's a-settings minus its b-settings, matched on the other
    evaluation labels that do not depend on the axis (guidance: the sampler, "sampling")."""
    i = EVAL_LABELS.index(axis)
    match = [j for j, k in enumerate(EVAL_LABELS) if axis == "guidance" and k == "sampling"]
    diffs, used = [], set()
    for m in table.values():
        va: dict[tuple, list[float]] = defaultdict(list)
        vb: dict[tuple, list[float]] = defaultdict(list)
        for s, v in m.at.items():
            key = tuple(s[j] for j in match)
            if s[i] == str(a):
                va[key].append((v, s[0]))
            elif s[i] == str(b):
                vb[key].append((v, s[0]))
        common = sorted(set(va) & set(vb), key=str)
        if not common and va and vb:  # nothing to match on: every a-setting against every b-setting
            va, vb, common = {(): [x for v in va.values() for x in v]}, {(): [x for v in vb.values() for x in v]}, [()]
        if common:
            diffs.append(_mean([_mean([x for x, _ in va[k]]) - _mean([x for x, _ in vb[k]]) for k in common]))
            used.update(e for k in common for _, e in va[k] + vb[k])
    return Pairing(diffs, len(diffs), len(diffs), sorted(used), "" if diffs else f"no model was evaluated with both {a} and {b}")


# ---- comparisons -----------------------------------------------------------------------------

@dataclass
class Comparison:
    """a vs b on one metric, over paired trained models.

    diff = mean(a - b) in metric units with its 95% t-interval `ci`; gain = diff * direction
    (> 0: a better); p: two-sided paired t-test; p_adj: p after the Holm correction of its family
    (= p when alone); p_signflip: the exact sign-flip test; d_z = mean / sd of the differences with
    its exact interval; detectable_dz: the smallest d_z detected with 80% power at `alpha_bar`
    (inf: the sign-flip test cannot reach alpha with n_pairs); verdict: "a" | "b" | "none"
    (no detectable difference) | "underpowered" | "untested"."""

    axis: str
    a: Any
    b: Any
    metric: str
    n_pairs: int
    diff: float
    ci: tuple[float, float]
    p: float
    gain: float
    verdict: str
    differences: list[float] = field(default_factory=list)
    sign: int = -1
    sd: float = math.nan
    p_signflip: float = math.nan
    dz: float = math.nan
    dz_ci: tuple[float, float] = (math.nan, math.nan)
    p_adj: float = math.nan
    p_better: float = math.nan    # one-sided p: a better than b
    p_worse: float = math.nan     # one-sided p: a worse than b
    alpha: float = ALPHA
    alpha_bar: float = ALPHA      # the level the detectable effect refers to (Holm's strictest step)
    settings: list[str] = field(default_factory=list)
    models: tuple[int, int] = (0, 0)
    note: str = ""

    @property
    def reachable(self) -> bool:
        """Whether this design can reach a verdict at all (the sign-flip check needs 2^(1-n) < alpha)."""
        return self.n_pairs >= 2 and min_sign_flip_p(self.n_pairs) < self.alpha

    @property
    def robust(self) -> bool:
        return self.p_signflip < self.alpha

    @property
    def detectable(self) -> float:
        """Smallest detectable d_z (80% power) at alpha_bar."""
        return detectable_dz(self.n_pairs, self.alpha_bar, POWER, self.alpha)

    def decide(self, p_adj: float | None = None, alpha_bar: float | None = None) -> Comparison:
        """Set the verdict from the (adjusted) p-value; returns self."""
        self.p_adj = self.p if p_adj is None else p_adj
        if alpha_bar is not None:
            self.alpha_bar = alpha_bar
        if self.n_pairs == 0:
            self.verdict = "untested"
        elif not self.reachable:
            self.verdict = "underpowered"
        elif self.p_adj < self.alpha and self.robust and self.gain != 0:
            self.verdict = "a" if self.gain > 0 else "b"
        else:
            self.verdict = "none"
        return self

    def summary(self) -> str:
        if self.n_pairs == 0:
            return f"{self.metric}: no paired models of {self.a} and {self.b} ({self.note})"
        better = self.a if self.gain > 0 else self.b
        word = "lower" if self.sign < 0 else "higher"
        if self.n_pairs < 2:
            return f"{self.metric} {self.a} - {self.b} = {self.diff:+.4g} from 1 pair ({word} is better): no test possible"
        adj = f", Holm {self.p_adj:.3g}" if np.isfinite(self.p_adj) and self.p_adj != self.p else ""
        det = self.detectable
        if math.isfinite(det) and self.sd > 0:
            mde = (f"smallest detectable effect at 80% power: d_z {det:.2g} = {det * self.sd:.3g} {self.metric} "
                   f"(alpha {self.alpha_bar:.3g})")
        elif math.isfinite(det):
            mde = f"smallest detectable effect at 80% power: d_z {det:.2g} (alpha {self.alpha_bar:.3g})"
        else:
            mde = (f"underpowered: with {self.n_pairs} pairs the sign-flip test cannot go below p = "
                   f"{min_sign_flip_p(self.n_pairs):.3g} (needs {min_pairs(self.alpha)} pairs at alpha {self.alpha:g})")
        state = {"a": f"{better} better", "b": f"{better} better", "none": "no detectable difference",
                 "underpowered": "underpowered"}.get(self.verdict, self.verdict)
        dz = (f"d_z {self.dz:+.2f} [{self.dz_ci[0]:+.2f}, {self.dz_ci[1]:+.2f}]" if self.sd > 0
              else "every difference equal (d_z undefined)")
        return (f"{self.metric} {self.a} - {self.b} = {self.diff:+.4g} [95% CI {self.ci[0]:+.4g}, {self.ci[1]:+.4g}] "
                f"({word} is better), {dz}; paired t p = "
                f"{self.p:.3g}{adj}, sign-flip p = {self.p_signflip:.3g}; {self.n_pairs} pairs of trained models "
                f"(mean over {len(self.settings)} evaluation setting(s)); {mde}; {state}")


def min_pairs(alpha: float = ALPHA) -> int:
    """Fewest pairs with which the sign-flip test can reach p < alpha."""
    return math.floor(1 - math.log2(alpha)) + 1


def _comparison(pairing: Pairing, axis: str, a: Any, b: Any, metric: str, sign: int, alpha: float, seed: int) -> Comparison:
    d = pairing.differences
    if not d:
        return Comparison(axis, a, b, metric, 0, math.nan, (math.nan, math.nan), math.nan, math.nan, "untested", [],
                          sign, alpha=alpha, alpha_bar=alpha, models=(pairing.models_a, pairing.models_b),
                          note=pairing.note)
    tt = paired_t(d)
    c = Comparison(axis, a, b, metric, len(d), tt.mean, tt.ci, tt.p, tt.mean * sign, "none", list(d), sign, tt.sd,
                   sign_flip_p(d, n_perm=SIGN_FLIP_PERMS, seed=seed), tt.mean / tt.sd if tt.sd > 0 else math.nan, dz_interval(tt.t, len(d)),
                   p_better=tt.p_greater if sign > 0 else tt.p_less, p_worse=tt.p_less if sign > 0 else tt.p_greater,
                   alpha=alpha, alpha_bar=alpha, settings=pairing.settings, models=(pairing.models_a, pairing.models_b),
                   note=pairing.note)
    return c.decide()


def _compare(ix: _Index, axis: str, a: Any, b: Any, metric: str, *, value: str = "final", alpha: float = ALPHA,
             seed: int = 0, sign: int | None = None, settings: Callable[[_Setting], bool] | None = None) -> Comparison:
    sgn = ix.direction(metric) if sign is None else sign
    return _comparison(_pair(ix.table(metric, value), axis, a, b, settings), axis, a, b, metric, sgn, alpha, seed)


def paired_differences(records: Sequence[dict], axis: str, a: Any, b: Any, metric: str, value: str = "final") -> list[float]:
    """One difference (a - b) per pair of trained models; see the module docstring."""
    return _pair(_Index(records).table(metric, value), axis, a, b).differences


def compare(records: Sequence[dict], axis: str, a: Any, b: Any, metric: str, *, value: str = "final",
            alpha: float = ALPHA, seed: int = 0, higher_is_better: bool | None = None) -> Comparison:
    """Paired comparison of axis value a against b (one test, no correction: p_adj = p)."""
    sign = None if higher_is_better is None else (1 if higher_is_better else -1)
    return _compare(_Index(records), axis, a, b, metric, value=value, alpha=alpha, seed=seed, sign=sign)


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


def all_pairwise(records: Sequence[dict], axes: Sequence[str], metrics: Sequence[str], seed: int = 0,
                 alpha: float = ALPHA) -> list[Comparison]:
    """Every pair of values of every axis on every metric, Holm-corrected over the whole list."""
    ix = _Index(records)
    out = []
    for axis in axes:
        for a, b in itertools.combinations(axis_values(records, axis), 2):
            for m in metrics:
                c = _compare(ix, axis, a, b, m, alpha=alpha, seed=seed)
                if c.n_pairs:
                    out.append(c)
    return _holm_decide(out, alpha)


def _holm_decide(comps: list[Comparison], alpha: float) -> list[Comparison]:
    """Holm over the comparisons that can reach a verdict; each decided with its adjusted p."""
    family = [c for c in comps if c.reachable]
    for c, p in zip(family, holm([c.p for c in family])):
        c.decide(p, alpha / max(1, len(family)))
    return comps
