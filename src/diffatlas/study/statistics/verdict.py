"""The verdict on a claim: the verdicts a claim can get, the paper's claims with their operational
definitions (DEFINITIONS), the Verdict and Effect of a row of the verdict table, and the helpers
every claim shares (the primary metric, an axis by name, the decision by routes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .pairs import Comparison
from .tests import ALPHA

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
