"""The network doctor: does a trained network actually use its noise level and its class label?

A denoiser network F(u, c_noise, cond) that ignores c_noise (e.g. a normalisation that removes the
noise embedding it was given) still trains to a finite loss, because the loss averages over noise
levels; its samples are then poor for reasons no metric names. `diagnose` measures this directly.

Noise sensitivity. Fix N network inputs u_j (noised data, in the network's own input units c_in x_hat)
and evaluate the raw output at K noise levels t_k of the dynamics' range, holding u_j fixed: the input
x_t = alpha_k u_j / c_in_k makes the Denoiser hand the network exactly u_j together with c_noise(t_k).
The spread of F across levels,

    S = mean_j mean_k ||F(u_j, t_k) - mean_k F(u_j, t_k)||^2 / dim,

is compared with the same spread of the target the loss asks for when the data are replaced by a
Gaussian with the data's per-pixel mean m and variance v. Its exact denoiser (Bishop 2006, eq. 2.116)
in the scaled frame x_hat = x_t / alpha = x0 + sigma_hat eps is

    D*(x_hat; s) = m + v / (v + s^2) (x_hat - m),       F* = (D* - c_skip x_hat) / c_out,

so F* changes across levels by a computable amount R. The report gives ratio = sqrt(S / R);
below `threshold` (default 0.5%) the network is "noise-blind", an error. (Measured here: networks
that cannot see c_noise score < 1e-4; U-Nets trained 30 kimg on digits score about 2%, MLPs on toy data
about 90%.)

Label sensitivity (conditional networks). At levels around log-SNR 0, where the class decides most of
the answer, the output is evaluated for every class label with input and level fixed. The reference is
the same spread for class-conditional Gaussians (per-class means, per-pixel variance pooled within
classes) when `labels` are given, else the spread of the network's own output across the N inputs at
those levels (a scale for how much the output moves at all). Below `threshold`: "label-blind".

Everything goes through `Denoiser.scalings` and `Denoiser.network_output`; nothing depends on which
network, dynamics or parameterization is inside.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser
from .dynamics.base import append_dims
from .errors import UserError
from .io import atomic_write_json

# A log-SNR range wider than this says nothing more about noise conditioning (sigma_hat in [2e-3, 5e2]).
_LOG_SNR_LIMIT = 2 * math.log(500.0)


class DiagnosisError(UserError):
    """A network failed the doctor (noise-blind or label-blind)."""


@dataclass
class DoctorReport:
    """What `diagnose` measured. Ratios are RMS spreads relative to the reference; None where not measured.

    noise_sensitivity  RMS change of the raw output F across noise levels at fixed inputs
    noise_reference    the same for the exact denoiser of the data's diagonal Gaussian
    noise_ratio        noise_sensitivity / noise_reference
    label_*            the same across class labels (conditional networks only)
    output_rms         RMS of F over all evaluations (0 means a constant-zero network)
    times              the noise levels (dynamics times) used for the noise test
    """

    noise_sensitivity: float
    noise_reference: float
    noise_ratio: float
    output_rms: float
    times: list[float]
    threshold: float
    label_sensitivity: float | None = None
    label_reference: float | None = None
    label_ratio: float | None = None
    label_reference_kind: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def raise_on_problems(self) -> None:
        """Raise DiagnosisError naming every problem; do nothing if the network passed."""
        if self.problems:
            raise DiagnosisError("; ".join(self.problems))


def _levels(denoiser: Denoiser, k: int) -> Tensor:
    """K interior times spread evenly in log-SNR over the dynamics' range (on its steps if discrete)."""
    dyn = denoiser.dynamics
    if dyn.steps is not None:
        times = dyn.discrete_times()
        idx = torch.linspace(0, len(times) - 1, min(k, len(times))).round().long().unique()
        return times[idx]
    ends = torch.tensor([dyn.t_max, dyn.t_min], dtype=torch.float64)
    lo, hi = (float(v) for v in dyn.log_snr(ends).clamp(-_LOG_SNR_LIMIT, _LOG_SNR_LIMIT))
    lam = torch.linspace(lo, hi, k + 2, dtype=torch.float64)[1:-1]  # drop the ends (alpha = 0 for flow)
    return dyn.t_from_log_snr(lam).to(torch.float64)


def _label_levels(denoiser: Denoiser, levels: Tensor, k: int = 3) -> Tensor:
    """The k levels of `levels` with log-SNR closest to 0 (sigma_hat ~ 1)."""
    lam = denoiser.dynamics.log_snr(levels).abs()
    return levels[lam.argsort()[: min(k, len(levels))]].sort().values


def _coefficients(denoiser: Denoiser, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha, c_skip, c_out, c_in) for per-sample times t (M,), broadcast to `like` (M, ...), float64."""
    ones = torch.ones_like(like, dtype=torch.float64)
    x_hat, c_skip, c_out, c_in = denoiser.scalings(ones, t)
    alpha = ones / x_hat  # scalings divide by the alpha it uses (clamped where alpha -> 0)
    return alpha, c_skip, c_out, c_in


def _network_at(denoiser: Denoiser, u: Tensor, t: Tensor, cond: Tensor | None, batch: int) -> Tensor:
    """Raw output F(u, c_noise(t), cond) for inputs u (M, ...) already in network units, in float64."""
    outs = []
    for i in range(0, len(u), batch):
        ui, ti = u[i:i + batch], t[i:i + batch]
        alpha, _, _, c_in = _coefficients(denoiser, ti, ui)
        x_t = alpha * ui / c_in  # so that c_in * x_t / alpha = u
        ci = None if cond is None else cond[i:i + batch]
        out = denoiser.network_output(x_t.to(ui.dtype), ti, ci)[0]
        outs.append(out.to(torch.float64))
    return torch.cat(outs)


def _gaussian_target(denoiser: Denoiser, u: Tensor, t: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """F* at input u (M, ...) and times t (M,) for data ~ N(mean, diag(var)); mean/var (M, ...) or (...)."""
    u = u.to(torch.float64)
    _, c_skip, c_out, c_in = _coefficients(denoiser, t, u)
    x_hat = u / c_in
    s2 = append_dims(denoiser.dynamics.sigma_hat(t.to(torch.float64)), u.ndim).clamp(max=1e10) ** 2
    d_star = mean + var / (var + s2) * (x_hat - mean)  # Bishop 2006, eq. 2.116, per pixel
    return (d_star - c_skip * x_hat) / c_out


def _ratio(s: float, r: float) -> float:
    """sqrt(s / r); 0 when nothing moves at all (s = r = 0), inf when only the network moves."""
    if r > 0:
        return math.sqrt(s / r)
    return float("inf") if s > 0 else 0.0


def _spread(f: Tensor) -> float:
    """mean over groups of the per-dimension variance across axis 1 of f (G, K, ...)."""
    return float((f - f.mean(1, keepdim=True)).pow(2).mean())


@torch.no_grad()
def diagnose(denoiser: Denoiser, x: Tensor, *, num_classes: int | None = None, labels: Tensor | None = None,
             generator: torch.Generator | None = None, levels: int = 8, threshold: float = 0.005,
             batch: int = 256, strict: bool = False) -> DoctorReport:
    """Measure how much a denoiser's network uses its noise level (and class label).

    Args:
        denoiser: the Denoiser to examine (its network is put in eval mode and restored afterwards).
        x: (N, *shape) clean data in the units the model was trained on; N >= 2 (16..256 is plenty).
            Its per-pixel mean and variance define the Gaussian reference.
        num_classes: number of class labels for a conditional network; None skips the label test.
        labels: (N,) optional class labels of x; with them the label reference is class-conditional Gaussians.
        generator: source of the noise and of the levels assigned to each input.
        levels: number K of noise levels compared.
        threshold: ratio below which the network is flagged (default 0.005: under 0.5% of the reference).
        batch: network batch size.
        strict: raise DiagnosisError instead of returning a report with problems.

    Returns:
        DoctorReport; `ok` is False and `problems` names each failure ("noise-blind", "label-blind").
    """
    if x.ndim < 2 or x.shape[0] < 2:
        raise UserError(f"diagnose needs a batch of at least 2 samples shaped (N, ...), got shape {tuple(x.shape)}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise UserError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}")
    if labels is not None and (num_classes is None or labels.shape != (x.shape[0],)):
        raise UserError("labels need num_classes and must have shape (N,) matching x")
    if levels < 2:
        raise UserError(f"the doctor compares at least 2 noise levels, got levels={levels}")
    dyn = denoiser.dynamics
    net = denoiser.network
    was_training = net.training
    net.eval()  # dropout would fake a dependence on the noise level
    try:
        n = x.shape[0]
        device = x.device
        x64 = x.to(torch.float64)
        mean, var = x64.mean(0), x64.var(0, unbiased=False)
        ts = _levels(denoiser, levels).to(device)
        k = len(ts)

        # Fixed network inputs u_j = c_in x_hat of noised data, each at one of the levels.
        t_in = ts[torch.randint(0, k, (n,), generator=generator, device=device)]
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=device)
        x_t = dyn.noise(x64, t_in, eps)
        alpha_in, _, _, c_in_in = _coefficients(denoiser, t_in, x64)
        u = (c_in_in * x_t / alpha_in).to(x.dtype)
        cond = None
        if num_classes is not None:
            cond = labels.to(device) if labels is not None else torch.randint(
                0, num_classes, (n,), generator=generator, device=device)

        # Noise test: every input at every level, (N, K, ...).
        u_rep = u.repeat_interleave(k, 0)
        t_rep = ts.repeat(n)
        c_rep = None if cond is None else cond.repeat_interleave(k)
        f = _network_at(denoiser, u_rep, t_rep, c_rep, batch).reshape(n, k, *x.shape[1:])
        f_star = _gaussian_target(denoiser, u_rep, t_rep, mean, var).reshape(n, k, *x.shape[1:])
        s, r = _spread(f), _spread(f_star)
        noise_ratio = _ratio(s, r)
        report = DoctorReport(noise_sensitivity=math.sqrt(s), noise_reference=math.sqrt(r),
                              noise_ratio=noise_ratio, output_rms=float(f.pow(2).mean().sqrt()),
                              times=[float(v) for v in ts], threshold=threshold)
        if noise_ratio < threshold:
            zero = " -- its output is identically zero (untrained, zero-initialized output layer?)" \
                if report.output_rms == 0 else f" (output RMS {report.output_rms:.3g})"
            report.problems.append(
                f"noise-blind: the network output changes by {noise_ratio:.2%} of what the noise level should "
                f"change it (threshold {threshold:.1%}); it ignores c_noise{zero}")

        if num_classes is not None:
            _label_test(denoiser, report, u, x64, num_classes, labels, ts, batch, threshold)
    finally:
        net.train(was_training)
    if strict:
        report.raise_on_problems()
    return report


def _label_test(denoiser: Denoiser, report: DoctorReport, u: Tensor, x64: Tensor, num_classes: int,
                labels: Tensor | None, ts: Tensor, batch: int, threshold: float) -> None:
    """Fill the label fields of `report`: spread of F across all labels at fixed input and level."""
    n, shape = u.shape[0], u.shape[1:]
    tl = _label_levels(denoiser, ts)
    kl, c = len(tl), num_classes
    # (N, kl, C) evaluations: input j, level l, label y.
    u_rep = u.repeat_interleave(kl * c, 0)
    t_rep = tl.repeat_interleave(c).repeat(n)
    y_rep = torch.arange(c, device=u.device).repeat(n * kl)
    f = _network_at(denoiser, u_rep, t_rep, y_rep, batch).reshape(n * kl, c, *shape)
    s = _spread(f)
    if labels is not None:
        # Class-conditional Gaussians: class means, per-pixel variance pooled within classes.
        lab = labels.to(u.device)
        means = torch.stack([x64[lab == y].mean(0) if bool((lab == y).any()) else x64.mean(0) for y in range(c)])
        within = x64 - means[lab]
        var = within.pow(2).mean(0)
        f_star = _gaussian_target(denoiser, u_rep, t_rep, means[y_rep], var).reshape(n * kl, c, *shape)
        r, kind = _spread(f_star), "class-conditional gaussian"
    else:
        # The network's own output spread across inputs at the same level and label.
        f_in = f.reshape(n, kl, c, *shape).transpose(0, 1).reshape(kl * c, n, *shape)
        r, kind = _spread(f_in), "spread across inputs"
    ratio = _ratio(s, r)
    report.label_sensitivity, report.label_reference = math.sqrt(s), math.sqrt(r)
    report.label_ratio, report.label_reference_kind = ratio, kind
    if ratio < threshold:
        report.problems.append(
            f"label-blind: the network output changes by {ratio:.2%} of the reference ({kind}) across "
            f"{c} class labels (threshold {threshold:.0%}); it ignores its class condition")


DOCTOR_FILE = "doctor.json"  # RUN/<this>: the record of the doctor's check of a run
CHECK_SAMPLES = 64  # images of the run's dataset the check examines


def check_run(denoiser: Denoiser, dataset: Any, run_dir: str | Path, num_classes: int | None = None) -> DoctorReport:
    """The doctor's check of a run, the same after training and from `diffatlas doctor`: `diagnose` on
    CHECK_SAMPLES images of the run's dataset (the first of a seed-0 permutation), its noise from seed 0;
    recorded in RUN/doctor.json. num_classes: a conditional network's classes (None skips the label test)."""
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:CHECK_SAMPLES]
    x, _ = dataset.get_batch(idx)
    report = diagnose(denoiser, x, num_classes=num_classes, generator=torch.Generator(device=x.device).manual_seed(0))
    atomic_write_json(Path(run_dir) / DOCTOR_FILE, report.to_dict())
    return report
