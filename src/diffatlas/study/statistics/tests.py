"""The paired tests of the statistics and their power: percentile bootstrap, exact and Monte Carlo
sign-flip tests, the paired t-test with its d_z interval, Holm's correction, the smallest detectable
d_z of the decision rule, and ICC(1) with its jackknife (for the IS-vs-FID claim)."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

ALPHA = 0.05
POWER = 0.8                  # the power the smallest detectable effects refer to


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
