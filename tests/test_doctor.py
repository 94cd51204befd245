"""The network doctor flags networks that ignore their noise level or class label, and passes ones that use them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from diffatlas.denoiser import Denoiser
from diffatlas.doctor import DiagnosisError, DoctorReport, diagnose
from diffatlas.dynamics import DYNAMICS, VPSDE
from diffatlas.dynamics.base import append_dims
from diffatlas.errors import UserError
from diffatlas.parameterization import PARAMETERIZATIONS, get_parameterization

NAMES = DYNAMICS.names()
F64 = torch.float64
SHAPE = (1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def make_data(n: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images (n, 1, 4, 4) from 3 classes with different means; labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    means = torch.tensor([-0.6, 0.0, 0.7]).reshape(3, 1, 1, 1) * torch.linspace(0.5, 1.5, 16).reshape(1, *SHAPE)
    x = means[labels] + 0.3 * torch.randn(n, *SHAPE, generator=g)
    return x, labels


class GaussianNetwork(nn.Module):
    """The exact F for data ~ N(m_y, diag(v)) per class y (one class if unconditional), from the network's
    inputs alone: sigma_hat = exp(4 c_noise), x_hat = input / c_in, D = m + v / (v + s^2) (x_hat - m)."""

    def __init__(self, means: Tensor, var: Tensor, parameterization: str) -> None:
        super().__init__()
        self.means, self.var = means.to(F64), var.to(F64)  # (C, *shape), (*shape)
        self.param = get_parameterization(parameterization)

    def forward(self, u: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        s = torch.exp(4 * c_noise.to(F64))
        c_skip, c_out, c_in = (append_dims(c, u.ndim) for c in self.param(s, self.param.default_sigma_data))
        x_hat = u.to(F64) / c_in
        m = self.means[cond] if cond is not None else self.means[0]
        d = m + self.var / (self.var + append_dims(s, u.ndim) ** 2) * (x_hat - m)
        return ((d - c_skip * x_hat) / c_out).to(u.dtype)


class NormalizedAwayNetwork(nn.Module):
    """Takes c_noise (and a label) but loses them: each enters as one number per sample added to every
    feature, and the LayerNorm that follows subtracts the per-sample mean -- the noise level is stripped."""

    def __init__(self, dim: int = 16, width: int = 32, num_classes: int | None = None,
                 label_blind_only: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.noise = nn.Linear(1, 1)  # a per-sample scalar bias from c_noise
        self.noise_feat = nn.Linear(1, width) if label_blind_only else None  # a proper per-feature embedding
        self.label = nn.Embedding(num_classes, 1) if num_classes else None
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(self, u: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.inp(u.flatten(1))
        h = h + self.noise(c_noise[:, None])  # same value on every feature: removed by the norm
        if self.noise_feat is not None:
            h = h + self.noise_feat(c_noise[:, None]) * 3.0
        if self.label is not None and cond is not None:
            h = h + self.label(cond)  # likewise removed
        return self.out(torch.nn.functional.silu(self.norm(h))).reshape(u.shape)


# ---- networks that use the noise level pass -------------------------------------------------------

@pytest.mark.parametrize("param", PARAMETERIZATIONS.names())
@pytest.mark.parametrize("name", NAMES)
def test_exact_gaussian_network_matches_the_reference(name, param):
    """For the exact denoiser of the data's own diagonal Gaussian, F changes across levels by exactly the
    reference amount: ratio 1 (to rounding), for every dynamics and parameterization."""
    x, _ = make_data()
    x64 = x.to(F64)
    net = GaussianNetwork(x64.mean(0, keepdim=True), x64.var(0, unbiased=False), param)
    den = Denoiser(net, DYNAMICS.get(name)(), param)
    report = diagnose(den, x, generator=torch.Generator().manual_seed(1))
    assert report.ok, report.problems
    assert report.noise_ratio == pytest.approx(1.0, rel=1e-6), report.to_dict()
    assert report.noise_reference > 0 and len(report.times) >= 2


def test_briefly_trained_network_uses_its_noise_level():
    """mlp-xs trained for 200 steps on the 3-class images (VP-SDE, eps): its output moves across noise levels
    by a good fraction of the Gaussian reference (random initialisation alone gives only a few percent)."""
    from diffatlas.losses import denoising_loss
    from diffatlas.networks import build_network

    torch.manual_seed(0)
    x, _ = make_data(256)
    den = Denoiser(build_network("mlp-xs", shape=SHAPE), VPSDE(), "eps")
    g = torch.Generator().manual_seed(2)
    opt = torch.optim.Adam(den.network.parameters(), lr=3e-3)
    for _ in range(200):
        loss = denoising_loss(den, x[torch.randint(0, len(x), (128,), generator=g)], generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = diagnose(den, x[:64], generator=torch.Generator().manual_seed(2))
    assert report.ok, report.problems
    assert report.noise_ratio > 0.5, report.noise_ratio  # measured 0.90


# ---- noise-blind networks are errors --------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_noise_blind_network_is_flagged(name):
    torch.manual_seed(0)
    x, _ = make_data()
    net = NormalizedAwayNetwork()
    net.train()
    den = Denoiser(net, DYNAMICS.get(name)(), "eps")
    report = diagnose(den, x, generator=torch.Generator().manual_seed(3))
    assert not report.ok
    assert report.noise_ratio < 1e-4, report.noise_ratio
    assert len(report.problems) == 1 and report.problems[0].startswith("noise-blind")
    assert net.training, "the network's mode is restored"
    with pytest.raises(DiagnosisError, match="noise-blind"):
        report.raise_on_problems()
    with pytest.raises(UserError, match="noise-blind"):
        diagnose(den, x, generator=torch.Generator().manual_seed(3), strict=True)


def test_network_ignoring_c_noise_entirely_is_flagged():
    class Blind(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 16)

        def forward(self, u, c_noise, cond=None):
            return self.lin(u.flatten(1)).reshape(u.shape)

    x, _ = make_data()
    report = diagnose(Denoiser(Blind(), VPSDE(), "v"), x, generator=torch.Generator().manual_seed(4))
    assert not report.ok and report.noise_ratio < 1e-4


# ---- class labels -------------------------------------------------------------------------------

def test_label_blind_network_is_flagged():
    torch.manual_seed(0)
    x, labels = make_data()
    net = NormalizedAwayNetwork(num_classes=3, label_blind_only=True)
    den = Denoiser(net, VPSDE(), "eps")
    for lab in (labels, None):
        report = diagnose(den, x, num_classes=3, labels=lab, generator=torch.Generator().manual_seed(5))
        assert report.noise_ratio > 0.01  # it does use the noise level (the per-feature embedding)
        assert not report.ok and report.label_ratio < 1e-4
        assert [p.split(":")[0] for p in report.problems] == ["label-blind"]


@pytest.mark.parametrize("name", NAMES)
def test_class_conditional_exact_network_passes(name):
    x, labels = make_data()
    x64 = x.to(F64)
    means = torch.stack([x64[labels == y].mean(0) for y in range(3)])
    var = (x64 - means[labels]).pow(2).mean(0)
    den = Denoiser(GaussianNetwork(means, var, "edm"), DYNAMICS.get(name)(), "edm")
    report = diagnose(den, x, num_classes=3, labels=labels, generator=torch.Generator().manual_seed(6))
    assert report.ok, report.problems
    assert report.label_ratio == pytest.approx(1.0, rel=1e-6)
    assert report.label_reference_kind == "class-conditional gaussian"
    # without labels the reference is the output's spread across inputs: still clearly label-sensitive
    report = diagnose(den, x, num_classes=3, generator=torch.Generator().manual_seed(6))
    assert report.ok and report.label_ratio > 0.05


def test_unconditional_network_asked_about_labels_is_label_blind():
    x, _ = make_data()
    x64 = x.to(F64)
    net = GaussianNetwork(x64.mean(0, keepdim=True), x64.var(0, unbiased=False), "eps")
    net.forward = lambda u, c_noise, cond=None: GaussianNetwork.forward(net, u, c_noise, None)
    report = diagnose(Denoiser(net, VPSDE(), "eps"), x, num_classes=3, generator=torch.Generator().manual_seed(7))
    assert report.noise_ratio == pytest.approx(1.0, rel=1e-6)
    assert not report.ok and report.problems[0].startswith("label-blind")


def test_zero_output_network_is_flagged_on_both_counts():
    """An untrained network with a zero-initialized output layer: nothing moves, both tests fail, and the
    message says why."""
    class Zero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 16)
            nn.init.zeros_(self.lin.weight)
            nn.init.zeros_(self.lin.bias)

        def forward(self, u, c_noise, cond=None):
            return self.lin(u.flatten(1) * c_noise[:, None]).reshape(u.shape)

    x, _ = make_data()
    report = diagnose(Denoiser(Zero(), VPSDE(), "eps"), x, num_classes=3, generator=torch.Generator().manual_seed(9))
    assert report.output_rms == 0 and report.noise_ratio == 0 and report.label_ratio == 0
    assert [p.split(":")[0] for p in report.problems] == ["noise-blind", "label-blind"]
    assert "identically zero" in report.problems[0]


# ---- the report and bad input ---------------------------------------------------------------------

def test_report_serializes_and_bad_input_is_a_user_error():
    x, labels = make_data()
    x64 = x.to(F64)
    den = Denoiser(GaussianNetwork(x64.mean(0, keepdim=True), x64.var(0, unbiased=False), "x0"), VPSDE(), "x0")
    report = diagnose(den, x, generator=torch.Generator().manual_seed(8))
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is True and d["problems"] == [] and d["label_ratio"] is None
    assert isinstance(report, DoctorReport)
    for bad in ({"x": x[:1]}, {"x": x, "num_classes": 1}, {"x": x, "labels": labels}, {"x": x, "levels": 1}):
        with pytest.raises(UserError):
            diagnose(den, **bad)


def test_the_check_after_training_and_the_doctor_command_write_the_same_record(tmp_path):
    """One check of a run: training's (on its EMA network) and `diffatlas doctor` on the final snapshot."""
    from diffatlas.cli import main
    from diffatlas.config import load_config
    from diffatlas.train import train

    run = tmp_path / "run"
    cfg = load_config(None, ["network.preset=unet-xs", "network.dropout=0.0", "train.batch=32", "train.kimg=0.064",
                             "train.tick_kimg=0.032", "train.snapshot_kimg=0.064", "train.warmup_kimg=0.032",
                             "train.doctor=true", "train.device=cpu"])
    train(cfg, run, progress=False, log=lambda *_: None)
    after_training = (run / "doctor.json").read_bytes()
    (run / "doctor.json").unlink()
    rc = main(["doctor", str(run)])
    assert (run / "doctor.json").read_bytes() == after_training
    assert rc == (0 if json.loads(after_training)["ok"] else 1)
