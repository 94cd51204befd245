"""The exact-denoiser study of `diffatlas calibrate`: every dynamics with the exact Gaussian-mixture
denoiser through the real sampler and verdict code finds no difference; a degraded process is found worse."""

from __future__ import annotations

from dataclasses import replace

import pytest

from diffatlas import cli
from diffatlas.dynamics import DYNAMICS
from diffatlas.study import calibration, exact
from diffatlas.study import statistics as S

# Smaller than the command's study (1000 samples x 8 draws at 80 NFE, x0 shrunk by 0.97): the same
# processes, sampler and verdict code, with 400 samples per draw (more draw-to-draw noise, so the
# degradation is 0.95) and 40 NFE.
QUICK = exact.ExactStudy(n=400, draws=8, nfe=40, reference=5000, projections=64, shrink=0.95)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def outcome():
    return exact.run_exact_study(QUICK, seed=0)


def test_every_dynamics_ties_and_the_degraded_one_loses(outcome):
    assert outcome.ok, outcome.verdict + "\n" + "\n".join(outcome.lines)
    n_dyn = len(DYNAMICS.names())
    assert outcome.verdict.startswith(f"no difference between {n_dyn + 1} configurations of {n_dyn} dynamics; "
                                      "degraded ncsn detected (p="), outcome.verdict
    # every registered process was sampled, DDPM with both schedules, each draw a 'trained model'
    names = {r["labels"]["dynamics.name"] for r in outcome.exact}
    assert names == set(DYNAMICS.names())
    assert {r["labels"].get("dynamics.schedule") for r in outcome.exact} == {None, "linear", "cosine"}
    assert len(outcome.exact) == (n_dyn + 1) * QUICK.draws
    # the real verdict code, on the records the study produced
    claims = {v.claim: v for v in S.verdicts(outcome.exact, list(exact.AXES), [exact.METRIC])}
    assert claims[S.CLAIM_DISCRETE].verdict == S.NO_DIFFERENCE
    assert claims[S.CLAIM_SDE].verdict == S.NO_DIFFERENCE
    assert not [c for c in S.all_pairwise(outcome.exact, list(exact.AXES), [exact.METRIC]) if c.verdict in ("a", "b")]
    bad = {v.claim: v for v in S.verdicts(outcome.degraded, list(exact.AXES), [exact.METRIC])}
    assert bad[S.CLAIM_DISCRETE].verdict == "supported"    # ddpm beats the degraded ncsn
    assert bad[S.CLAIM_SDE].verdict == S.NO_DIFFERENCE
    ncsn = [r["final"] for r in outcome.degraded if r["labels"]["dynamics.name"] == "ncsn"]
    vp = [r["final"] for r in outcome.degraded if r["labels"]["dynamics.name"] == "vp"]
    assert min(ncsn) > max(vp)   # the shrunk x0 estimate moves every draw away from the data


def test_a_degraded_ve_contradicts_nothing_but_loses_the_sde_claim():
    out = exact.run_exact_study(replace(QUICK, dynamics=("vp", "ve", "edm"), degrade="ve"), seed=1)
    assert out.ok, out.verdict
    assert out.verdict.startswith("no difference between 3 configurations of 3 dynamics; degraded ve detected")
    bad = {v.claim: v for v in S.verdicts(out.degraded, list(exact.AXES), [exact.METRIC])}
    assert bad[S.CLAIM_SDE].verdict == "supported"


def test_the_study_fails_when_it_should():
    # nothing degraded: the "degraded" process cannot be detected
    out = exact.run_exact_study(replace(QUICK, dynamics=("vp", "ve"), degrade="ve", shrink=1.0), seed=0)
    assert not out.ok and out.verdict.startswith("FAILED: degraded ve found worse in only 0/1"), out.verdict


def test_ncsn_at_its_default_sigma_max_is_a_real_difference(monkeypatch):
    # sigma_max = 1 is below the data's diameter: the prior N(0, 1) misses p_1 and NCSN loses for
    # that reason alone (Song & Ermon 2020, technique 1), which the study must not call a tie
    monkeypatch.setitem(exact.VARIANTS, "ncsn", ({},))
    out = exact.run_exact_study(replace(QUICK, dynamics=("ddpm", "ncsn"), degrade="ddpm"), seed=0)
    assert out.verdict.startswith("FAILED: ddpm vs ncsn differ"), out.verdict


def test_calibrate_ends_with_the_exact_study_verdict(capsys, monkeypatch, outcome):
    assert calibration.CHECKS[calibration.EXACT_DENOISER] is calibration._exact_denoiser
    monkeypatch.setattr(exact, "STUDY", QUICK)   # the registered hook, on the smaller study
    assert cli.main(["calibrate", "--null", "20", "--planted", "0"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("false positives ") and " over 20 null studies; power not run at effect" in out[-1]
    assert out[-1].endswith(f"; exact-denoiser study: {outcome.verdict}"), out[-1]   # seed 0, as the fixture
    assert f"exact-denoiser study: {outcome.verdict}" in out
    assert sum(line.startswith("  exact-denoiser study: ") and " sampled " in line for line in out) == len(
        exact.configurations(QUICK))   # progress
    assert any(line.startswith("  ncsn ") for line in out)   # the table rows
