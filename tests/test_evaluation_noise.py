"""Evaluation noise against the spread between seeds (study.statistics.evaluation_noise): exact on a
hand-computed case, right on a simulated study whose two variance components are known, and said in
the report's threats to validity."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from diffatlas.report.threats import noise_text
from diffatlas.study import statistics as S


def _rec(config: str, seed: int, final: float, draws: list[float] | None = None, draw_n: int = 500,
         metric: str = "fid") -> dict:
    r = {"run": f"{config}-{seed}", "labels": {"dynamics.name": config, "seed": seed, S.EVAL_KEY: "ancestral nfe10"},
         "metric": metric, "final": final, "higher_is_better": False}
    if draws is not None:
        r["draws"] = {"n": draw_n, "values": draws, "seeds": [10_000 + i * draw_n for i in range(len(draws))]}
    return r


def test_hand_computed_share():
    # draws: two models, variance 2 each at n = 500 -> 1 at n = 1000; seeds: variance 2 in each configuration
    recs = [_rec("ddpm", 0, 0.0, [1.0, 3.0]), _rec("ddpm", 1, 2.0, [2.0, 4.0]), _rec("ncsn", 0, 5.0), _rec("ncsn", 1, 7.0)]
    (s,) = S.evaluation_noise(recs, n=1000)
    assert (s.metric, s.setting, s.n, s.draw_n, s.draws, s.models, s.configurations) == ("fid", "ancestral nfe10", 1000,
                                                                                          500, 2, 2, 2)
    assert s.sd_eval == pytest.approx(1.0, rel=1e-12) and s.sd_seeds == pytest.approx(np.sqrt(2.0), rel=1e-12)
    assert s.share == pytest.approx(0.5, rel=1e-12)
    assert S.evaluation_noise([{**r, "draws": None} for r in recs], n=1000) == []   # nothing measured: nothing said


@pytest.mark.parametrize("tau, sigma", [(3.0, 1.0), (1.0, 3.0)])
def test_simulated_components_are_recovered(tau, sigma):
    """Each model: a true value (between-model sd tau around its configuration's mean), one evaluation at
    n = 1000 with sampling sd sigma, and 4 draws at n = 250 (sd 2 sigma). The share estimates
    sigma^2 / (tau^2 + sigma^2) within 20%."""
    rng = np.random.default_rng(0)
    recs = []
    for c, mu in enumerate((10.0, 20.0, 30.0)):
        for seed in range(200):
            true = mu + tau * rng.standard_normal()
            draws = list(true + 2 * sigma * rng.standard_normal(4))
            recs.append(_rec(f"c{c}", seed, true + sigma * rng.standard_normal(), draws, draw_n=250))
    (s,) = S.evaluation_noise(recs, n=1000)
    assert s.sd_eval == pytest.approx(sigma, rel=0.1)
    assert s.share == pytest.approx(sigma ** 2 / (tau ** 2 + sigma ** 2), rel=0.2)


def test_threats_say_which_lever_helps():
    res = SimpleNamespace(n=500)   # draws at the evaluation's own n: the draws' variance equals the seeds'
    noisy = [_rec("ddpm", 0, 0.0, [1.0, 3.0]), _rec("ddpm", 1, 2.0, [2.0, 4.0]), _rec("ncsn", 0, 5.0), _rec("ncsn", 1, 7.0)]
    text = noise_text(res, noisy)
    assert "sd 1.414 from sampling alone at n = 500 against sd 1.414 between the seeds" in text
    assert "about 100% of the seed-to-seed variance is evaluation noise" in text and "larger n" in text
    quiet = [{**r, "draws": {**r["draws"], "values": [v / 10 for v in r["draws"]["values"]]}} if "draws" in r else r
             for r in noisy]
    assert "more seeds, not more samples" in noise_text(res, quiet)
    assert noise_text(res, [{**r, "draws": None} for r in noisy]).startswith("Evaluation noise: not measured")
