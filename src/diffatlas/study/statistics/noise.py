"""How much of the spread between seeds is evaluation noise: the model-level values a comparison
tests are one evaluation each, so their seed-to-seed variance is the variance between trained models
plus the sampling noise of one evaluation. Independent draws of the same model (evaluation.draws:
disjoint per-sample seed ranges) measure the second term directly.

For one metric and evaluation setting with draws:

    s2_eval(n_d) = pooled within-model variance of the draws (each model: k draws of n_d samples)
    s2_eval(n)   = s2_eval(n_d) * n_d / n      (a mean-like statistic: variance ~ 1/n; FID and IS
                                                 estimators are smooth functions of sample means)
    s2_seeds     = pooled variance of the final values between the seeds of one configuration
    share        = s2_eval(n) / s2_seeds

A share near 1 says the seeds differ mostly by evaluation noise: a verdict near alpha can move with
another draw of sampler noise, and a larger n (or averaged draws) sharpens the comparisons more than
more seeds. A small share says the spread is between trained models, which only more seeds average.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .pairs import EVAL_KEY, EVAL_LABELS


@dataclass(frozen=True)
class NoiseShare:
    metric: str
    setting: str
    n: int                # the samples of one evaluation in the comparisons
    draw_n: int           # the samples of one draw
    draws: int            # draws per model (the fewest any model has)
    models: int           # models with draws
    sd_eval: float        # sd of one evaluation at n from sampling noise alone
    sd_seeds: float       # pooled sd between the seeds of one configuration (one evaluation each)
    configurations: int   # configurations with at least two seeds

    @property
    def share(self) -> float:
        """Evaluation noise as a fraction of the seed-to-seed variance (may exceed 1 by estimation error)."""
        return self.sd_eval ** 2 / self.sd_seeds ** 2 if self.sd_seeds > 0 else float("nan")


def _pooled_variance(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled sample variance of groups (each with >= 2 values) and its degrees of freedom."""
    ss, df = 0.0, 0
    for g in groups:
        a = np.asarray(g, dtype=float)
        if a.size >= 2:
            ss += float(((a - a.mean()) ** 2).sum())
            df += a.size - 1
    return (ss / df if df else float("nan")), df


def evaluation_noise(records: Sequence[dict], n: int) -> list[NoiseShare]:
    """One NoiseShare per (metric, evaluation setting) whose models carry draws (records' "draws",
    at least two models with >= 2 draws) and whose configurations have >= 2 seeds; `n` is the sample
    count of the evaluations the comparisons use."""
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        by_key[(r["metric"], str(r["labels"].get(EVAL_KEY)))].append(r)
    out = []
    for (metric, setting), recs in sorted(by_key.items()):
        drawn = [r["draws"] for r in recs if r.get("draws") and len(r["draws"].get("values") or ()) >= 2]
        draw_ns = {int(d["n"]) for d in drawn if d.get("n")}
        if len(drawn) < 2 or len(draw_ns) != 1:
            continue
        s2_draw, _ = _pooled_variance([[float(v) for v in d["values"]] for d in drawn])
        configs: dict[tuple, list[float]] = defaultdict(list)
        for r in recs:
            model = tuple(sorted((k, str(v)) for k, v in r["labels"].items() if k not in EVAL_LABELS and k != "seed"))
            configs[model].append(float(r["final"]))
        s2_seeds, df = _pooled_variance(list(configs.values()))
        if df == 0 or not np.isfinite(s2_draw):
            continue
        draw_n = draw_ns.pop()
        out.append(NoiseShare(metric, setting, int(n), draw_n, min(len(d["values"]) for d in drawn), len(drawn),
                              float(np.sqrt(s2_draw * draw_n / n)), float(np.sqrt(s2_seeds)),
                              sum(1 for v in configs.values() if len(v) >= 2)))
    return out
