"""The bpd metric: negative log-likelihood through the probability-flow ODE, against analytic densities
of Gaussian and Gaussian-mixture data under their exact denoisers, for every dynamics; Hutchinson's
estimator; uniform dequantisation against the exact discrete likelihood; `diffatlas evaluate --metrics
bpd` and a study that uses it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffatlas.cli import main
from diffatlas.config import load_config
from diffatlas.data.toy import ExactDenoiser, GaussianMixture, gaussian, standard_mixture
from diffatlas.dynamics import DYNAMICS
from diffatlas.errors import UserError
from diffatlas.metrics import compute_metrics
from diffatlas.metrics.likelihood import LikelihoodSettings, bits_per_dim, evaluate_bpd
from diffatlas.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
LN2 = math.log(2)


def _at(dyn, t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(dyn.alpha(tt)), float(dyn.sigma(tt))


@pytest.mark.parametrize("name", DYNAMICS.names())
def test_gaussian_data_within_a_hundredth_of_a_bit(name):
    """N(0, I) data, exact denoiser: the estimate is the analytic NLL to 0.01 bits/dim, per sample.

    With x_t = alpha x0 + sigma eps the marginals are N(0, (alpha^2 + sigma^2) I), and the exact flow only
    rescales them, so the model's density at t_min is the prior N(0, s_T^2 I) rescaled by
    sqrt((alpha_min^2 + sigma_min^2) / (alpha_T^2 + sigma_T^2)): N(0, v I) with v = s_T^2 (alpha_min^2 +
    sigma_min^2) / (alpha_T^2 + sigma_T^2). For every process but NCSN v = 1 within 1e-4, the data's own
    NLL; NCSN's prior N(0, 1) is narrower than its noised data N(0, 2), and the model inherits v = 1/2."""
    dyn = DYNAMICS.get(name)()
    dim = 3
    law = gaussian(dim)
    x = law.sample(64, torch.Generator().manual_seed(1))
    res = bits_per_dim(ExactDenoiser(law, dyn), x)
    (a0, s0), (a1, s1) = _at(dyn, dyn.t_min), _at(dyn, dyn.t_max)
    v = dyn.prior_std() ** 2 * (a0**2 + s0**2) / (a1**2 + s1**2)
    analytic = (0.5 * (x**2).sum(1) / v + 0.5 * dim * math.log(2 * math.pi * v)) / (dim * LN2)
    assert (res.bpd - analytic).abs().max() < 0.01, (name, float((res.bpd - analytic).abs().max()))
    if name != "ncsn":
        data_nll = -law.log_prob(x) / (dim * LN2)
        assert (res.bpd - data_nll).abs().max() < 0.01
    assert res.settings.divergence == "exact" and res.settings.dequantization == "none" and res.nfe > 10


@pytest.mark.parametrize("name", [n for n in DYNAMICS.names() if n != "ncsn"])
def test_gaussian_mixture_matches_the_marginal_density(name):
    """A Gaussian mixture (curved flow, every process moves it): the estimate is log p_{t_min}(x), the
    exact noised mixture's density at t_min, to 0.01 bits/dim per sample (NCSN: see above, its prior differs)."""
    dyn = DYNAMICS.get(name)()
    mix = standard_mixture(2)
    x = mix.sample(48, torch.Generator().manual_seed(2))
    res = bits_per_dim(ExactDenoiser(mix, dyn), x)
    a0, s0 = _at(dyn, dyn.t_min)
    analytic = -mix.log_prob(x, a0, s0) / (2 * LN2)
    assert (res.bpd - analytic).abs().max() < 0.01, (name, float((res.bpd - analytic).abs().max()))


def test_heun_converges_to_rk45():
    dyn = DYNAMICS.get("vp")()
    mix = standard_mixture(2)
    x = mix.sample(32, torch.Generator().manual_seed(3))
    den = ExactDenoiser(mix, dyn)
    ref = bits_per_dim(den, x, settings=LikelihoodSettings(rtol=1e-7, atol=1e-7)).bpd
    errs = [float((bits_per_dim(den, x, settings=LikelihoodSettings(solver="heun", steps=s)).bpd - ref).abs().max())
            for s in (12, 24, 48)]
    assert errs[2] < errs[1] < errs[0] and errs[0] / errs[2] > 8  # second order: ~16x over two doublings


def test_hutchinson_is_unbiased_and_probes_reduce_its_spread():
    """8-D mixture with random means (a full Jacobian): Hutchinson's estimate minus the exact one has mean
    zero within 4 standard errors, and 4 probes per sample shrink its spread (by 1/2 in theory)."""
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture(torch.randn(4, 8, generator=g, dtype=torch.float64), 0.4)
    x = mix.sample(512, torch.Generator().manual_seed(1))
    den = ExactDenoiser(mix, DYNAMICS.get("vp")())
    exact = bits_per_dim(den, x).bpd  # 8 <= 16 dimensions: exact by default
    spread = {}
    for probe, k in (("rademacher", 1), ("rademacher", 4), ("gaussian", 1)):
        s = LikelihoodSettings(divergence="hutchinson", probes=k, probe=probe)
        d = bits_per_dim(den, x, settings=s, generator=torch.Generator().manual_seed(5)).bpd - exact
        assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(len(d)), (probe, k)
        spread[probe, k] = float(d.std())
    assert spread["rademacher", 4] < 0.7 * spread["rademacher", 1]
    assert 0 < spread["rademacher", 1] < spread["gaussian", 1]  # Rademacher probes have no diagonal variance


def test_uniform_dequantization_bounds_the_discrete_likelihood():
    """8-bit images (1, 2, 2) of N(0, 0.5^2 I) data: E_u[-log2 p(x)] / D + 7 equals the exact discrete NLL,
    -log2 of the Gaussian mass of each pixel's bin [k/128 - 1, (k+1)/128 - 1), to 0.01 bits/dim on average
    (the bound's gap is tiny where bins are narrow against the density), and stays above it."""
    law = gaussian(4, 0.0, 0.5)
    den = ExactDenoiser(law, DYNAMICS.get("vp")())
    k = ((law.sample(512, torch.Generator().manual_seed(3)) + 1) * 127.5).round().clamp(0, 255).reshape(512, 1, 2, 2)
    x = k / 127.5 - 1  # the images as a dataset stores them
    res = bits_per_dim(den, x, generator=torch.Generator().manual_seed(4))
    assert res.settings.dequantization == "uniform"
    cdf = torch.special.ndtr
    discrete = -torch.log2(cdf(((k + 1) / 128 - 1) / 0.5) - cdf((k / 128 - 1) / 0.5)).flatten(1).sum(1) / 4
    assert abs(float(res.bpd.mean() - discrete.mean())) < 0.01
    assert float(res.bpd.mean()) > float(discrete.mean()) - 2 * float((res.bpd - discrete).std()) / math.sqrt(512)
    # without dequantisation: the continuous density at the pixel values, 7 bits lower
    cont = bits_per_dim(den, x, settings=LikelihoodSettings(dequantization="none")).bpd
    assert torch.allclose(cont, -law.log_prob(x.flatten(1)) / (4 * LN2), atol=0.01)


def test_record_says_how_it_was_estimated():
    mix = standard_mixture(2)
    x = mix.sample(20, torch.Generator().manual_seed(0))
    den = ExactDenoiser(mix, DYNAMICS.get("edm")())
    rec = evaluate_bpd(den, x, settings=LikelihoodSettings(divergence="hutchinson", probes=3), seed=1, n_boot=50,
                       batch=8)
    again = evaluate_bpd(den, x, settings=LikelihoodSettings(divergence="hutchinson", probes=3), seed=1, batch=8)
    assert rec["value"] == again["value"]  # dequantisation noise and probes come from the seed
    assert rec["metric"] == "bpd" and rec["higher_is_better"] is False and rec["n"] == 20
    assert rec["likelihood"] == {"solver": "rk45", "rtol": 1e-5, "atol": 1e-5, "divergence": "hutchinson", "probes": 3,
                                 "probe": "rademacher", "dequantization": "none", "max_nfe": 20000}
    assert rec["vjps_per_nfe"] == 3 and rec["nfe"] > 0 and rec["discretization_bits"] == 0.0 and rec["batch"] == 8
    assert rec["t_range"] == [0.002, 80.0] and rec["interval"][0] < rec["value"] < rec["interval"][1]


def test_bad_settings_are_one_line_user_errors():
    for opts, needle in (({"probs": 2}, "unknown bpd option(s) probs"), ({"probes": 0}, "probes >= 1"),
                         ({"probes": 1.5}, "probes must be an integer"), ({"solver": "euler"}, "solver must be one of"),
                         ({"rtol": -1}, "rtol > 0"), ({"dequantization": "x"}, "dequantization must be one of")):
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
            LikelihoodSettings.from_options(opts)
        assert "\n" not in str(e.value)
    assert LikelihoodSettings.from_options({"probes": "4", "solver": "heun"}).probes == 4
    with pytest.raises(UserError, match="need the model"):
        compute_metrics(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), None, metrics=("fid", "bpd"))


TOY = ["data.name=toy2d", "network.preset=mlp-xs", "train.batch=128", "train.tick_kimg=0.5", "train.warmup_kimg=0.1",
       "train.doctor=false", "train.device=cpu"]


def _lines(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


def test_evaluate_bpd_cli(tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config(None, TOY + ["train.kimg=1", "train.snapshot_kimg=0.5"]), run, progress=False, log=lambda *_: None)
    argv = ["evaluate", str(run), "--metrics", "bpd", "--n", "64", "--boot", "20", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bpd" in out and "64 data points, rk45" in out
    lines = _lines(run)
    assert [e["kimg"] for e in lines] == [0.512, 1.024]
    for e in lines:
        assert e["metric"] == "bpd" and e["extractor"] is None and e["sampler"] == "rk45" and e["n_real"] == 64
        assert e["reference_split"] == "test" and e["options"]["divergence"] == "exact" and e["nfe"] > 0
        assert math.isfinite(e["value"]) and e["interval"][0] <= e["value"] <= e["interval"][1]
    # one entry serves every sampling setting: another sampler recomputes nothing
    assert main(argv + ["--sampler", "euler", "--steps", "5"]) == 0
    assert len(_lines(run)) == 2
    # other estimator settings are another entry
    assert main(argv[:-4] + ["--snapshots", "last", "--bpd", "divergence=hutchinson", "--bpd", "probes=2"]) == 0
    new = _lines(run)[2:]
    assert len(new) == 1 and new[0]["options"]["probes"] == 2 and new[0]["vjps_per_nfe"] == 2
    capsys.readouterr()
    for bad, needle in ((["--metrics", "bpd", "--bpd", "probes=0"], "probes >= 1"),
                        (["--metrics", "fid,bpd"], "(fid) need an image dataset")):
        assert main(argv[:2] + bad) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    assert len(_lines(run)) == 3


def test_study_with_bpd(tmp_path):
    """A study measures bpd per snapshot; its entries feed the study's results as a lower-is-better metric."""
    from diffatlas.study import statistics as S
    from diffatlas.study.results import load_results
    from diffatlas.study.runner import Runner
    from diffatlas.study.spec import study_from_dict

    spec = {"name": "lik", "base": {"data": {"name": "toy2d"}, "network": {"preset": "mlp-xs"},
                                    "train": {"batch": 128, "tick_kimg": 0.5, "warmup_kimg": 0.1, "doctor": False,
                                              "device": "cpu"}},
            "axes": [{"product": {"dynamics.name": ["vp", "ve"]}}], "seeds": [0], "budget_kimg": 1,
            "evaluation": {"metrics": ["bpd"], "n": 32, "every_kimg": 0.5,
                           "samplers": [{"sampler": "heun", "steps": 4}, {"sampler": "euler", "steps": 4}]}}
    out = tmp_path / "out"
    Runner(study_from_dict(spec), out).run()
    res = load_results(out)
    assert len(res.runs) == 2 and "bpd" in res.metrics
    for r in res.runs:
        assert [m["metric"] for m in r.entries] == ["bpd", "bpd"]  # per snapshot, not per sampler setting
        assert list(r.curves) == [("bpd", "rk45")] and len(r.curves["bpd", "rk45"]) == 2
    assert S.direction("bpd") == -1
