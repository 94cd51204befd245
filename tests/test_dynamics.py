"""Conformance of every registered dynamics, and the schedules, against analytic oracles.

Every test parametrized over `DYNAMICS.names()` runs for a newly registered process with no new
code. Numerical checks run in float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from diffatlas.dynamics import DDPM, DYNAMICS, EDM, NCSN, VESDE, VPSDE, Dynamics, RectifiedFlow, SubVPSDE
from diffatlas.dynamics.discrete import max_pairwise_distance, ncsnv2_ratio
from diffatlas.errors import UserError
from diffatlas.schedules import (BETA_SCHEDULES, GRID_SIGMA_HAT_MAX, GRIDS, beta_cosine, beta_linear, make_grid,
                                 sigma_karras)

NAMES = DYNAMICS.names()
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def build(name: str) -> Dynamics:
    return DYNAMICS.get(name)()


def interior_times(dyn: Dynamics, fractions=(0.05, 0.2137, 0.5071, 0.7713, 0.9)) -> torch.Tensor:
    """Times at fixed fractions of [t_min, t_max]; the odd fractions keep clear of DDPM's knots i/T."""
    f = torch.tensor(fractions, dtype=F64)
    return dyn.t_min + (dyn.t_max - dyn.t_min) * f


# ---- the marginal x_t = alpha x0 + sigma eps --------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_noised_marginal_moments(name):
    """x0 ~ N(mu, s^2) => x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2): mean and variance of 1e5 draws
    within 5 standard errors (mean: sqrt(var/n); variance: var sqrt(2/n))."""
    dyn = build(name)
    g = torch.Generator().manual_seed(0)
    n, mu, s = 100_000, 0.7, 0.5
    for t in interior_times(dyn):
        x0 = mu + s * torch.randn(n, 1, generator=g, dtype=F64)
        eps = torch.randn(n, 1, generator=g, dtype=F64)
        xt = dyn.noise(x0, t.expand(n), eps)
        a, sg = float(dyn.alpha(t)), float(dyn.sigma(t))
        var = a**2 * s**2 + sg**2
        assert abs(float(xt.mean()) - a * mu) < 5 * math.sqrt(var / n), (name, float(t))
        assert abs(float(xt.var()) - var) < 5 * var * math.sqrt(2 / n), (name, float(t))


@pytest.mark.parametrize("name", NAMES)
def test_drift_and_diffusion_integrate_to_the_marginal(name):
    """The moment equations of dx = f x dt + g dw (Saerkkae & Solin 2019, eq. 5.51):
    m' = f m and (var)' = 2 f var + g^2, solved: alpha(t)/alpha(t0) = exp(int f) and
    sigma_hat(t)^2 - sigma_hat(t0)^2 = int g^2 / alpha^2. Quadrature of the derived f, g2 on a fine
    grid must reproduce alpha and sigma (relative error < 1e-4)."""
    dyn = build(name)
    t0 = dyn.t_min
    t1 = dyn.t_min + 0.9 * (dyn.t_max - dyn.t_min)  # clear of alpha = 0 (rectified flow at t = 1)
    # log-spaced when the range spans decades (EDM's sigma = t in [0.002, 80]); uniform otherwise
    if t0 > 0 and t1 / t0 > 100:
        t = torch.logspace(math.log10(t0), math.log10(t1), 200_001, dtype=F64)
    else:
        t = torch.linspace(t0, t1, 200_001, dtype=F64)
    log_ratio = torch.trapezoid(dyn.f(t), t)
    assert math.isclose(float(log_ratio.exp()), float(dyn.alpha(t[-1]) / dyn.alpha(t[0])), rel_tol=1e-4)
    var_gain = torch.trapezoid(dyn.g2(t) / dyn.alpha(t) ** 2, t)
    expected = float(dyn.sigma_hat(t[-1]) ** 2 - dyn.sigma_hat(t[0]) ** 2)
    assert math.isclose(float(var_gain), expected, rel_tol=1e-4), (float(var_gain), expected)


# Prior vs marginal at t_max: relative variance mismatch alpha(t_max)^2 var_data / sigma(t_max)^2 for unit
# data variance, i.e. SNR(t_max). NCSN's default sigma_1 = 1 is Song & Ermon 2019's value for data in [0, 1];
# their annealed Langevin sampler starts from uniform noise and relies on mixing at sigma_1 (NCSN.from_data,
# NCSNv2's technique 1, makes sigma_1 the largest pairwise distance instead).
PRIOR_SNR_BOUND = {"ncsn": 1.01}


@pytest.mark.parametrize("name", NAMES)
def test_prior_matches_marginal_at_t_max(name):
    dyn = build(name)
    g = torch.Generator().manual_seed(1)
    t_max = torch.tensor(dyn.t_max, dtype=F64)
    a, sg = float(dyn.alpha(t_max)), float(dyn.sigma(t_max))
    assert dyn.prior_std() == pytest.approx(sg, rel=1e-12)
    # the prior's variance equals the marginal's up to exactly the data term alpha(t_max)^2 var_data
    n, var_data = 100_000, 0.36
    x0 = 0.6 * torch.randn(n, 1, generator=g, dtype=F64)
    xt = dyn.noise(x0, t_max.expand(n), torch.randn(n, 1, generator=g, dtype=F64))
    z = dyn.prior_sample((n, 1), generator=g, dtype=F64)
    gap = float(xt.var() - z.var())
    se = 5 * math.sqrt(2 / n) * (a**2 * var_data + 2 * sg**2)
    assert abs(gap - a**2 * var_data) < se, (gap, a**2 * var_data)
    # and that term is small: SNR(t_max) below the stated bound (default 1e-3)
    assert math.exp(float(dyn.log_snr(t_max))) <= PRIOR_SNR_BOUND.get(name, 1e-3)
    # prior_logp is the log-density of N(0, sigma(t_max)^2 I), summed over dimensions
    x = dyn.prior_sample((5, 3, 2), generator=g, dtype=F64)
    ref = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.tensor(sg, dtype=F64)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(dyn.prior_logp(x), ref, rtol=1e-10, atol=1e-10)


# ---- derivatives and derived coefficients -------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_finite_differences(name):
    """d_alpha, d_sigma and g2 = d sigma^2/dt - 2 f sigma^2 (f = d log alpha/dt) against central differences."""
    dyn = build(name)
    t = interior_times(dyn)
    h = 1e-6 * (dyn.t_max - dyn.t_min)
    fd = lambda fn: (fn(t + h) - fn(t - h)) / (2 * h)
    torch.testing.assert_close(dyn.d_alpha(t), fd(dyn.alpha), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(dyn.d_sigma(t), fd(dyn.sigma), rtol=1e-6, atol=1e-9)
    f_fd = fd(lambda u: torch.log(dyn.alpha(u)))
    g2_fd = fd(lambda u: dyn.sigma(u) ** 2) - 2 * f_fd * dyn.sigma(t) ** 2
    torch.testing.assert_close(dyn.f(t), f_fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(dyn.g2(t), g2_fd, rtol=1e-5, atol=1e-8)
    assert bool((dyn.g2(t) > 0).all())


def test_g2_matches_the_papers_closed_forms():
    """VP: g^2 = beta(t); sub-VP: beta(t)(1 - e^{-2 int beta}); VE: d sigma^2/dt (Song et al. 2021, eqs. 9, 11, 12);
    EDM (sigma = t): g^2 = 2 sigma sigma' = 2t (Karras et al. 2022, eq. 4 with s = 1)."""
    t = torch.linspace(0.01, 1.0, 50, dtype=F64)
    beta = 0.1 + t * (20.0 - 0.1)
    int_beta = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    torch.testing.assert_close(VPSDE().g2(t), beta, rtol=1e-10, atol=0)
    torch.testing.assert_close(SubVPSDE().g2(t), beta * (1 - torch.exp(-2 * int_beta)), rtol=1e-10, atol=0)
    ve = VESDE()
    sig = 0.01 * (50 / 0.01) ** t
    torch.testing.assert_close(ve.g2(t), 2 * sig**2 * math.log(50 / 0.01), rtol=1e-10, atol=0)
    te = torch.linspace(0.002, 80, 50, dtype=F64)
    torch.testing.assert_close(EDM().g2(te), 2 * te, rtol=1e-12, atol=0)
    # rectified flow: sigma = t, alpha = 1 - t, f = -1/(1-t): g^2 = 2t + 2t^2/(1-t) = 2t/(1-t)
    tf = torch.linspace(0.01, 0.99, 50, dtype=F64)
    torch.testing.assert_close(RectifiedFlow().g2(tf), 2 * tf / (1 - tf), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_decreasing_and_inverses(name):
    dyn = build(name)
    t = torch.linspace(dyn.t_min, dyn.t_max, 2001, dtype=F64)
    lam = dyn.log_snr(t)
    assert bool((torch.diff(lam) < 0).all()), "log-SNR must decrease strictly from t_min to t_max"
    torch.testing.assert_close(lam, 2 * torch.log(dyn.alpha(t) / dyn.sigma(t)))
    # t_from_log_snr and t_from_sigma_hat invert log_snr and sigma_hat (interior; flow's t_max has lambda = -inf)
    ti = t[1:-1]
    tol = 1e-9 * (dyn.t_max - dyn.t_min)
    torch.testing.assert_close(dyn.t_from_log_snr(dyn.log_snr(ti)).to(F64), ti, rtol=0, atol=tol)
    torch.testing.assert_close(dyn.t_from_sigma_hat(dyn.sigma_hat(ti)).to(F64), ti, rtol=0, atol=tol)
    lam_i = torch.linspace(float(lam[-2]), float(lam[1]), 101, dtype=F64)
    torch.testing.assert_close(dyn.log_snr(dyn.t_from_log_snr(lam_i)), lam_i, rtol=1e-7, atol=1e-7)
    # c_noise = log(sigma_hat)/4 (Karras et al. 2022, Table 1), and sigma_hat = sigma/alpha
    torch.testing.assert_close(dyn.sigma_hat(ti), dyn.sigma(ti) / dyn.alpha(ti))
    torch.testing.assert_close(dyn.c_noise(ti), 0.25 * torch.log(dyn.sigma_hat(ti)))


# ---- training noise levels -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_sample_training_t(name):
    dyn = build(name)
    g = torch.Generator().manual_seed(2)
    n = 100_000
    t = dyn.sample_training_t(n, generator=g, dtype=F64)
    assert t.shape == (n,) and t.dtype == F64 and bool(torch.isfinite(t).all())
    assert bool((dyn.sigma(t) > 0).all())
    # reproducible from the generator
    torch.testing.assert_close(dyn.sample_training_t(50, generator=torch.Generator().manual_seed(3), dtype=F64),
                               dyn.sample_training_t(50, generator=torch.Generator().manual_seed(3), dtype=F64))
    inside = ((t >= dyn.t_min) & (t <= dyn.t_max)).to(F64).mean()
    if dyn.steps is not None:
        # a discrete process draws only its step times, each about equally often
        times = dyn.discrete_times(dtype=F64)
        assert bool(torch.isin(t, times).all())
        counts = torch.bincount(torch.searchsorted(times, t), minlength=len(times)).to(F64)
        assert float(counts.min()) > 0.5 * n / len(times)
    elif type(dyn).sample_training_t is Dynamics.sample_training_t:
        # the default density: uniform on [t_min, t_max] (Kolmogorov-Smirnov)
        assert float(inside) == 1.0
        u = ((t - dyn.t_min) / (dyn.t_max - dyn.t_min)).numpy()
        assert stats.kstest(u, "uniform").pvalue > 1e-3
    else:
        # a custom density (EDM's unclipped log-normal) stays essentially inside the range
        assert float(inside) > 0.999


def test_edm_training_sigma_is_log_normal():
    """ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2 (Karras et al. 2022, Table 1)."""
    dyn = EDM()
    n = 100_000
    log_s = torch.log(dyn.sigma(dyn.sample_training_t(n, generator=torch.Generator().manual_seed(4), dtype=F64)))
    assert abs(float(log_s.mean()) - (-1.2)) < 5 * 1.2 / math.sqrt(n)
    assert abs(float(log_s.std()) - 1.2) < 5 * 1.2 / math.sqrt(2 * n)
    assert stats.kstest(((log_s + 1.2) / 1.2).numpy(), "norm").pvalue > 1e-3


# ---- discrete processes as limits of continuous ones ---------------------------------------------------

def test_ddpm_converges_to_vp_sde():
    """DDPM with beta_i = beta(t_i)/T (linear betas 0.1/T..20/T) approaches the VP-SDE at matched t = i/T as
    T grows (Song et al. 2021, eq. 10 -> 11): the error falls about as 1/T."""
    vp = VPSDE()
    t = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.73, 0.9, 1.0], dtype=F64)
    errors = []
    for steps in (25, 250, 2500, 25000):
        d = DDPM(steps=steps, beta_min=0.1 / steps, beta_max=20.0 / steps)
        err = max(float((d.alpha(t) - vp.alpha(t)).abs().max()), float((d.sigma(t) - vp.sigma(t)).abs().max()))
        errors.append(err)
    assert all(b < a / 5 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-3, errors
    # the default DDPM (T = 1000, 1e-4..0.02) is the VP-SDE's default (0.1..20) discretized, and `scale`
    # multiplies both ends of the linear schedule: scale = 1000/T gives the same process at any T.
    d = DDPM()
    assert float((d.alpha(t) - vp.alpha(t)).abs().max()) < 2e-3
    torch.testing.assert_close(DDPM(steps=500, scale=2.0).betas, DDPM(steps=500, beta_min=2e-4, beta_max=0.04).betas)


def test_ncsn_is_the_ve_sde_at_its_levels():
    """NCSN's sigma law is the VE-SDE's, sigma(t) = sigma_min (sigma_max/sigma_min)^t; its L levels are the VE
    sigmas at the level times, and as L grows the levels fill the VE range (max log-gap log(ratio)/(L-1))."""
    ve = VESDE(sigma_min=0.01, sigma_max=1.0)
    t = torch.linspace(0, 1, 101, dtype=F64)
    prev_gap = math.inf
    for levels in (10, 100, 1000):
        nc = NCSN(levels=levels, sigma_min=0.01, sigma_max=1.0)
        torch.testing.assert_close(nc.sigma(t), ve.sigma(t), rtol=1e-12, atol=0)
        torch.testing.assert_close(nc.sigmas, ve.sigma(nc.discrete_times()).flip(0), rtol=1e-12, atol=0)
        assert float(nc.sigmas[0]) == pytest.approx(1.0) and float(nc.sigmas[-1]) == pytest.approx(0.01)
        gap = float(torch.diff(torch.log(nc.sigmas)).abs().max())
        assert gap == pytest.approx(math.log(100) / (levels - 1), rel=1e-9) and gap < prev_gap
        prev_gap = gap
        # training draws: Kolmogorov distance to the VE-SDE's uniform t shrinks as 1/L
        draws = nc.sample_training_t(20_000, generator=torch.Generator().manual_seed(levels), dtype=F64)
        ks = stats.kstest(draws.numpy(), "uniform").statistic
        assert ks < 1.5 / levels + 0.02


def test_ncsnv2_techniques():
    """Technique 2 of Song & Ermon 2020: Phi(sqrt(2D)(g-1) + 3g) - Phi(sqrt(2D)(g-1) - 3g) = 0.5, solved here
    with scipy; technique 1: sigma_max = the largest pairwise distance."""
    for dim in (5, 16, 64, 3072, 12288):
        ref = optimize.brentq(lambda g, d=dim: stats.norm.cdf(math.sqrt(2 * d) * (g - 1) + 3 * g)
                              - stats.norm.cdf(math.sqrt(2 * d) * (g - 1) - 3 * g) - 0.5, 1 + 1e-9, 1e3, xtol=1e-13)
        assert ncsnv2_ratio(dim) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError):  # sqrt(2D) <= 3: the rule has no root
        ncsnv2_ratio(4)
    # the paper's CIFAR-10 setting (sigma 50 -> 0.01 in L = 232 levels) has ratio 1.0376; the rule gives ~1.040
    assert ncsnv2_ratio(3072) == pytest.approx((50 / 0.01) ** (1 / 231), rel=3e-3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 1, 4, 4, generator=g)
    nc = NCSN.from_data(x, sigma_min=0.01)
    flat = x.flatten(1).double().numpy()
    brute = max(np.linalg.norm(a - b) for a in flat for b in flat)
    assert nc.sigma_max == pytest.approx(brute, rel=1e-9) == pytest.approx(max_pairwise_distance(x, chunk=7), rel=1e-12)
    ratios = nc.sigmas[:-1] / nc.sigmas[1:]
    assert float(ratios.max()) <= ncsnv2_ratio(16) + 1e-12  # levels at least as dense as the rule asks
    assert float(ratios.max()) > (ncsnv2_ratio(16) - 1) * 0.8 + 1  # and not needlessly many


# ---- schedules ---------------------------------------------------------------------------------------

def test_cosine_alpha_bar_closed_form():
    """alpha_bar_i = f(i/T)/f(0), f(u) = cos^2((u + s)/(1 + s) pi/2), s = 0.008 (Nichol & Dhariwal 2021, eq. 17);
    betas clipped at 0.999, which only the last steps reach."""
    steps = 1000
    i = torch.arange(1, steps + 1, dtype=F64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    closed = f(i / steps) / f(torch.zeros(1, dtype=F64))
    betas = beta_cosine(steps)
    unclipped = betas < 0.999
    assert int((~unclipped).sum()) <= 2 and bool(unclipped[:-2].all())
    ab = DDPM(steps=steps, schedule="cosine").alphas_cumprod  # the process uses the same table
    torch.testing.assert_close(ab[unclipped], closed[unclipped], rtol=1e-9, atol=1e-12)
    assert float(ab[-1]) < 1e-6  # the prior is reached
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), ab, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES.names())
def test_beta_schedules_are_valid(schedule):
    b = BETA_SCHEDULES.get(schedule)(1000)
    assert b.shape == (1000,) and b.dtype == F64
    assert bool(((b > 0) & (b < 1)).all()) and bool((torch.diff(b) >= 0).all())
    d = DDPM(steps=1000, schedule=schedule)
    torch.testing.assert_close(d.betas, b, rtol=1e-9, atol=1e-15)
    assert float(d.alphas_cumprod[-1]) < 0.05  # each reaches (close to) the prior


def test_linear_scale_multiplies_both_ends():
    for scale in (0.5, 1.0, 4.0):
        b = beta_linear(100, beta_min=1e-4, beta_max=0.02, scale=scale)
        assert float(b[0]) == pytest.approx(scale * 1e-4, rel=1e-12)
        assert float(b[-1]) == pytest.approx(scale * 0.02, rel=1e-12)
        torch.testing.assert_close(b, scale * beta_linear(100), rtol=1e-12, atol=0)
    q = BETA_SCHEDULES.get("quadratic")(100, scale=3.0)
    assert float(q[0]) == pytest.approx(3e-4) and float(q[-1]) == pytest.approx(0.06)


def test_sigma_karras_formula():
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (Karras et al. 2022, eq. 5)."""
    s = sigma_karras(18, 0.002, 80.0)
    i = torch.arange(18, dtype=F64)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(s, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("grid", GRIDS.names())
@pytest.mark.parametrize("name", NAMES)
def test_grids_decrease_from_t_max_to_t_min(name, grid):
    dyn = build(name)
    if dyn.steps is None and grid == "discrete":
        with pytest.raises(ValueError):
            make_grid(grid, dyn, 10)
        return
    for steps in (2, 7, 10, 50):
        if dyn.steps is not None and steps > dyn.steps:  # no grid has more points than the process has steps
            with pytest.raises(ValueError):
                make_grid(grid, dyn, steps)
            continue
        t = make_grid(grid, dyn, steps)
        assert t.dtype == F64 and t.shape == (steps,)
        assert float(t[0]) == pytest.approx(dyn.t_max, rel=1e-12) and float(t[-1]) == pytest.approx(dyn.t_min, abs=1e-12)
        assert bool((torch.diff(t) < 0).all()), (name, grid, steps, t)
        if dyn.steps is not None:  # every grid of a discrete process lies on its own steps
            assert bool(torch.isin(t, dyn.discrete_times()).all()), (name, grid, steps)
    t1 = make_grid(grid, dyn, 1)
    assert t1.shape == (1,) and float(t1[0]) == pytest.approx(dyn.t_max)
    with pytest.raises(ValueError):
        make_grid(grid, dyn, 0)
    if dyn.steps is not None and grid == "discrete":
        # on the process's own step times
        assert bool(torch.isin(make_grid(grid, dyn, dyn.steps), dyn.discrete_times()).all())


@pytest.mark.parametrize("name", NAMES)
def test_karras_and_logsnr_grids_follow_their_laws(name):
    dyn = build(name)
    t = GRIDS.get("karras")(dyn, 12)  # the law itself (make_grid moves it onto a discrete process's steps)
    s = dyn.sigma_hat(t[1:-1])
    ends = dyn.sigma_hat(torch.tensor([dyn.t_max, dyn.t_min], dtype=F64)).clamp(max=GRID_SIGMA_HAT_MAX)
    ref = sigma_karras(12, float(ends[1]), float(ends[0]))[1:-1]
    torch.testing.assert_close(s, ref, rtol=1e-6, atol=0)
    t = GRIDS.get("logsnr")(dyn, 12)
    lam = dyn.log_snr(t[1:-1])
    torch.testing.assert_close(torch.diff(lam), torch.full_like(lam[1:], float(lam[1] - lam[0])), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ddpm", "ncsn"])
def test_snap_to_steps_keeps_the_count_and_the_ends(name):
    """Every grid of a discrete process is moved onto distinct steps of nearest log-SNR, keeping its
    number of points and both ends; a grid of T points is all T steps."""
    from diffatlas.schedules import snap_to_steps

    dyn = build(name)
    own = dyn.discrete_times()
    T = dyn.steps
    for n in (1, 2, 3, T // 2, T):
        for grid in ("logsnr", "karras", "uniform"):
            raw = GRIDS.get(grid)(dyn, n)
            t = snap_to_steps(dyn, raw)
            assert t.shape == (n,) and bool(torch.isin(t, own).all()) and bool((torch.diff(t) < 0).all())
            assert float(t[0]) == pytest.approx(dyn.t_max)
            if n > 1:
                assert float(t[-1]) == pytest.approx(dyn.t_min)
    torch.testing.assert_close(make_grid("logsnr", dyn, T), own.flip(0))
    # where the grid is coarse, each point takes the step of nearest log-SNR
    raw = GRIDS.get("logsnr")(dyn, 5)
    t = snap_to_steps(dyn, raw)
    nearest = own[(dyn.log_snr(raw)[:, None] - dyn.log_snr(own)[None, :]).abs().argmin(1)]
    torch.testing.assert_close(t, nearest)
    with pytest.raises(ValueError, match="discrete steps"):
        snap_to_steps(dyn, GRIDS.get("logsnr")(dyn, T + 1))


# ---- the log-SNR plot ----------------------------------------------------------------------------------

@pytest.mark.parametrize("x", ["t", "fraction"])
def test_plot_log_snr(tmp_path, x):
    from diffatlas.dynamics.plot import log_snr_curve, plot_log_snr

    dyns = {n: build(n) for n in NAMES}
    out = plot_log_snr(dyns, tmp_path / "sub" / f"logsnr-{x}.png", x=x)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for d in dyns.values():
        xs, lam = log_snr_curve(d, x=x)
        assert float(xs[0]) == 0.0 and float(xs[-1]) == pytest.approx(1.0)
        assert bool(torch.isfinite(lam).all())
        # along normalized time log-SNR falls; along the sampling steps it rises (noisy first)
        assert bool((torch.diff(lam) < 0).all()) if x == "t" else bool((torch.diff(lam) > 0).all())
    with pytest.raises(UserError):
        plot_log_snr(dyns, tmp_path / "bad.png", x="sigma")
