"""Statistics across trained models: paired comparisons, effect sizes and a verdict on each of the paper's claims.

Records
-------
The input of every function here is a plain list of dicts, one per (trained model, evaluation
setting, metric)::

    {"run": id,                       # the trained model (one seed of one configuration)
     "labels": {axis key: value, ..., "seed": s,
                "eval": "heun x18",   # the evaluation setting (sampler x steps [+ guidance])
                "guidance": "none",   # optional: guidance of the setting (an evaluation-level axis)
                "sampling": "heun x18"},  # optional: the setting without its guidance
     "metric": "fid", "final": float, "higher_is_better": bool | None,
     "converged_kimg": float | None,  # None: the curve never came within the band of its plateau
     "settled": bool,                 # the last points of the curve lie in the band (else censored)
     "budget_kimg": float,
     "draws": {"n": 500, "values": [...], "seeds": [...]}}   # optional: the same model evaluated on
                                                              # disjoint per-sample seed ranges

Labels in :data:`EVAL_LABELS` describe how a model was evaluated; every other label (the seed
included) says which model it is. A record without "run" is identified by those other labels.

The unit of evidence is the trained model
-----------------------------------------
Evaluation settings applied to one network are repeated measures of that network, not
replicates. A comparison of value a against value b of an axis therefore

1. reduces each trained model to one number: the mean of the metric over the evaluation settings
   that every compared model was evaluated with;
2. pairs models that share every other model label both sides define (the seed and any crossed
   axis); a label only one side defines (DDPM's beta schedule against NCSN) is averaged over;
   one difference per pair. For an evaluation-level axis (guidance), each model is its own pair:
   the difference between its settings with and without, matched on the sampler;
3. tests the mean difference with a paired t-test (primary; Student 1908) and checks it with
   the exact two-sided sign-flip permutation test (robustness; Good 2005, ch. 3). A direction
   is declared only when the t-test passes after the Holm correction (Holm 1979) and the sign-flip
   test passes at alpha. The sign-flip test cannot go below p = 2^(1-n) with n pairs, so fewer
   than 6 pairs (at alpha 0.05) cannot reach a verdict: such a comparison is "underpowered";
4. reports the mean difference with its t-interval (metric units), the standardized effect
   d_z = mean / sd of the differences with its exact noncentral-t interval (Cumming & Finch
   2001), and the smallest d_z the comparison detects with 80% power under its decision rule
   (:func:`detectable_dz`).

Per-setting analyses are secondary tests, Holm-corrected among themselves. The claims of a
verdict table form one Holm family (the claims whose design can reach a verdict). The operational
definition of each claim is in :data:`DEFINITIONS`; `diffatlas calibrate` runs this code on
simulated studies to measure its false-positive rate and power.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special

from ..data import DATASETS
from ..metrics.spec import higher_is_better
from ..metrics.spec import role as metric_role

ALPHA = 0.05
POWER = 0.8                  # the power the smallest detectable effects refer to
CONVERGENCE_SPREAD = 0.2     # claim 2: convergence points differ by at most this fraction of the budget
MIN_SETTLED = 0.5            # claim 2: similarity needs at least this fraction of settled curves per value
EVAL_KEY = "eval"            # label of the evaluation setting (sampler x steps [+ guidance]) in records
EVAL_LABELS = (EVAL_KEY, "guidance", "sampling")   # labels of how a model was evaluated, not of which model
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


def direction(metric: str, records: Iterable[dict] = ()) -> int:
    """+1 if higher values of `metric` are better, -1 if lower: the records' "higher_is_better"
    when one of them says, else the metric registry's (a name no metric yields is then an error)."""
    for r in records:
        if r.get("metric") == metric and r.get("higher_is_better") is not None:
            return 1 if r["higher_is_better"] else -1
    return 1 if higher_is_better(metric) else -1


# ---- tests -----------------------------------------------------------------------------------

def bootstrap_ci(x: Sequence[float], *, level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of x (Efron & Tibshirani 1993, ch. 13)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


@functools.lru_cache(maxsize=32)
def _sign_patterns(n: int) -> np.ndarray:
    """(2^n, n): every vector of signs."""
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)))


SIGN_FLIP_PERMS = 2000  # Monte Carlo sign vectors beyond 16 pairs in comparisons (p resolution 1/2001)


def sign_flip_p(d: Sequence[float], *, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of mean(d) = 0 for paired differences d (random sign flips):
    exact over all 2^n sign vectors for n <= 16, Monte Carlo (with the observed one) beyond."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan
    obs = abs(d.sum())
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))
    if n <= 16:
        return float(np.mean(np.abs(_sign_patterns(n) @ d) >= obs - tol))
    rng = np.random.default_rng(seed)
    signs = 1.0 - 2.0 * rng.integers(0, 2, size=(n_perm, n), dtype=np.int8)
    return float((1 + np.sum(np.abs(signs @ d) >= obs - tol)) / (n_perm + 1))


def min_sign_flip_p(n: int) -> float:
    """The smallest p-value the exact two-sided sign-flip test can give with n pairs: 2 / 2^n."""
    return 1.0 if n < 1 else 2.0 ** (1 - n)


@dataclass(frozen=True)
class TTest:
    """One-sample (paired) t-test of mean(d) = 0: t = mean / (sd / sqrt(n)), n - 1 degrees of freedom."""

    n: int
    mean: float
    sd: float
    t: float
    p: float            # two-sided
    p_greater: float    # one-sided, alternative mean > 0
    p_less: float       # one-sided, alternative mean < 0
    ci: tuple[float, float]


def paired_t(d: Sequence[float], *, level: float = 0.95) -> TTest:
    """Paired t-test and t-interval of the mean of the differences d (needs n >= 2)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n < 2:
        m = float(d.mean()) if n else math.nan
        return TTest(n, m, math.nan, math.nan, math.nan, math.nan, math.nan, (math.nan, math.nan))
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se <= 1e-15 * max(1.0, abs(mean)):
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        pg, pl = (0.5, 0.5) if mean == 0 else ((0.0, 1.0) if mean > 0 else (1.0, 0.0))
        return TTest(n, mean, sd, t, min(1.0, 2 * min(pg, pl)), pg, pl, (mean, mean))
    t = mean / se
    pl = float(special.stdtr(n - 1, t))
    pg = float(special.stdtr(n - 1, -t))
    q = float(special.stdtrit(n - 1, 0.5 + level / 2))
    return TTest(n, mean, sd, t, min(1.0, 2 * min(pg, pl)), pg, pl, (mean - q * se, mean + q * se))


def dz_interval(t: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact interval of d_z = mu / sigma from the observed t (n pairs): the noncentrality
    parameters that put t at the interval's tails, divided by sqrt(n) (Cumming & Finch 2001)."""
    if n < 2 or not math.isfinite(t):
        return (math.nan, math.nan)
    a = (1 - level) / 2
    lo = float(special.nctdtrinc(n - 1, 1 - a, t))
    hi = float(special.nctdtrinc(n - 1, a, t))
    return (lo / math.sqrt(n), hi / math.sqrt(n))


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979); NaN entries stay NaN and are not counted."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if np.isfinite(p[i])]
    k, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (k - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


_SIM_REPS = 4000      # simulated samples per power evaluation in detectable_dz
_SIM_MAX_N = 10       # the sign-flip check is simulated up to this many pairs (2^n patterns each)


@functools.lru_cache(maxsize=256)
def detectable_dz(n: int, alpha: float = ALPHA, power: float = POWER, robust_alpha: float = ALPHA) -> float:
    """The smallest standardized effect d_z = mu / sigma of normal paired differences that the
    decision rule detects (in the right direction) with probability `power`: the two-sided paired
    t-test at level `alpha` AND the exact sign-flip test at `robust_alpha`. inf if the sign-flip test
    cannot reach robust_alpha with n pairs.

    Up to 10 pairs the joint rule is simulated (4000 samples, common random numbers, bisection on
    d_z); beyond, the sign-flip check is ignored (its smallest p is far below alpha) and the
    t-test's power comes from the noncentral t distribution."""
    if n < 2 or min_sign_flip_p(n) >= robust_alpha:
        return math.inf
    df = n - 1
    tc = float(special.stdtrit(df, 1 - alpha / 2))
    if n > _SIM_MAX_N:
        def t_power(nc: float) -> float:  # P(T' > tc), T' ~ noncentral t(df, nc); the lower tail is negligible
            cdf = float(special.nctdtr(df, nc, tc))
            return (1.0 if not math.isfinite(cdf) else 1.0 - cdf) - power  # cdflib gives NaN far in the tail
        return float(optimize.brentq(t_power, 0.0, 30.0, xtol=1e-6)) / math.sqrt(n)
    z = np.random.default_rng(12345).standard_normal((_SIM_REPS, n))
    zc = z - z.mean(axis=1, keepdims=True)
    sd = np.sqrt((zc ** 2).sum(axis=1) / df)
    signs = _sign_patterns(n)

    def rate(dz: float) -> float:
        d = z + dz
        mean = d.mean(axis=1)
        t_ok = mean / (sd / math.sqrt(n)) > tc
        sums = np.abs(signs @ d.T)                                    # (2^n, reps)
        p_sf = (sums >= np.abs(d.sum(axis=1)) - 1e-12).mean(axis=0)
        return float(np.mean(t_ok & (p_sf < robust_alpha)))

    lo, hi = 0.0, 1.0
    while rate(hi) < power:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return math.inf
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < power else (lo, mid)
    return hi


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


def _icc(sum_m: Any, sum_m2: Any, within: Any, runs: int, k: int) -> Any:
    """ICC(1) from run-mean sums: (MSB - MSW) / (MSB + (k - 1) MSW) (Shrout & Fleiss 1979, case 1)."""
    msb = k * (sum_m2 - sum_m ** 2 / runs) / (runs - 1)
    msw = within / (runs * (k - 1))
    den = msb + (k - 1) * msw
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (msb - msw) / np.where(den > 0, den, 1.0), np.nan)


def icc1(x: np.ndarray) -> float:
    """ICC(1) of a (runs, draws) table: the share of one draw's variance that lies between runs."""
    x = np.asarray(x, dtype=np.float64)
    m = x.mean(axis=1)
    return float(_icc(m.sum(), (m ** 2).sum(), ((x - m[:, None]) ** 2).sum(), x.shape[0], x.shape[1]))


def icc1_jackknife(x: np.ndarray) -> tuple[float, np.ndarray]:
    """ICC(1) of x (runs, draws) and its leave-one-run-out values (runs,), vectorized."""
    x = np.asarray(x, dtype=np.float64)
    r, k = x.shape
    m = x.mean(axis=1)
    w = ((x - m[:, None]) ** 2).sum(axis=1)
    full = float(_icc(m.sum(), (m ** 2).sum(), w.sum(), r, k))
    return full, _icc(m.sum() - m, (m ** 2).sum() - m ** 2, w.sum() - w, r - 1, k)


def _jackknife_se(loo: np.ndarray) -> float:
    """Jackknife standard error from leave-one-out estimates (Efron & Tibshirani 1993, ch. 11)."""
    n = len(loo)
    return float(math.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()))


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
