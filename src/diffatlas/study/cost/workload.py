"""The work of each run of a study, counted from its config and the evaluation plan; nothing is timed.

The work of a run (:func:`run_work`) is what `study run` makes it do (study.work.train_and_evaluate):
train `train.kimg` of images, writing a snapshot every `snapshot_kimg` (train.Schedule); evaluate
every kept snapshot with every evaluation setting at n samples, then the final snapshot at each
other n of `n_sweep` and `draws.count` times at `draws.n`, the last two with the first setting. A
setting's NFE is its plan's (sampling.run_plan, the evaluation's own resolution of the request):
the sampler runs its planned grid on a stand-in denoiser that only counts its calls. Classifier
guidance adds a gradient of the noise-aware classifier to every call and trains that classifier
once per dataset and process (shared by their runs, `train_noisy_classifier_for` at its default steps and batch);
classifier-free guidance calls the network on a doubled batch.

Also the labels a plan prints for a run's network and data (:func:`network_label`, :func:`data_label`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ...checkpoint import list_snapshots
from ...evaluation import NOISY_CLASSIFIER_DIR
from ...guidance import parse_guidance_spec
from ...metrics import METRICS
from ...model import make_dynamics
from ...samplers import SAMPLERS
from ...samplers.api import prior_from_seeds
from ...sampling import run_plan
from ...train import Schedule
from ..results import setting_label
from ..spec import Evaluation, RunSpec


@dataclass(frozen=True)
class Job:
    """`count` snapshot evaluations of one run, each sampling n images with `nfe` denoiser evaluations
    per sample, guided by `guidance` ("classifier", "cfg" or None)."""

    n: int
    nfe: int
    guidance: str | None
    count: int
    what: str


@dataclass(frozen=True)
class Work:
    """What one run does. calls: evaluate_run calls (each loads the extractor, the reference data and
    statistics); real_images: real images through the extractor (the KID / precision-recall subsets,
    once per call); noisy_classifier: the run needs the noise-aware classifier of its dataset and process (classifier guidance; trained by the first such run)."""

    train_images: int
    train_steps: int
    batch: int
    snapshots: int
    calls: int
    jobs: tuple[Job, ...]
    noisy_classifier: bool
    real_images: int
    model_metrics: tuple[str, ...] = ()

    @property
    def samples(self) -> int:
        return sum(j.n * j.count for j in self.jobs)

    @property
    def sample_nfe(self) -> int:
        """Samples x denoiser evaluations over every snapshot evaluation."""
        return sum(j.n * j.nfe * j.count for j in self.jobs)

    def describe(self) -> str:
        parts = [f"{j.count} x n={j.n} at {j.nfe} NFE{' ' + j.guidance + '-guided' if j.guidance else ''} ({j.what})"
                 for j in self.jobs]
        return "; ".join(parts)


class _CountingDenoiser:
    """A stand-in denoiser (x0 estimate 0) that only counts its calls: a plan's NFE without a network."""

    def __init__(self, dynamics: Any) -> None:
        self.dynamics = dynamics
        self.calls = 0

    def __call__(self, x: Any, t: Any, cond: Any = None) -> Any:
        import torch

        self.calls += 1
        return torch.zeros_like(x)


def setting_nfe(cfg: Any, dynamics: Any, setting: dict) -> int:
    """Denoiser evaluations per sample of one evaluation setting on a run: its plan (sampling.run_plan,
    as evaluate_run resolves it) sampled on a counting stand-in; an adaptive sampler's count is capped
    by the plan's NFE budget when it has one."""
    import torch

    plan = run_plan(cfg, dynamics, **{k: setting[k] for k in ("sampler", "steps", "nfe", "grid", "options") if k in setting})
    stub = _CountingDenoiser(dynamics)
    x = prior_from_seeds(dynamics, (1, 2), [0])  # the NFE does not depend on the sample's shape
    with torch.no_grad():
        res = SAMPLERS.get(plan.sampler)(stub, x, plan.times(dynamics), generator=torch.Generator().manual_seed(0),
                                         cond=None, **plan.options)
    nfe = int(res.nfe)
    return min(nfe, int(plan.nfe_budget)) if plan.nfe_budget else nfe


def snapshot_count(cfg: Any) -> int:
    """Snapshots a training run keeps (train.Schedule: every snapshot_kimg and at the end); 1 without keep_snapshots."""
    if not cfg.train.keep_snapshots:
        return 1
    s = Schedule(cfg)
    return sum(1 for step in range(s.snapshot, s.total, s.snapshot) if s.is_snapshot(step)) + 1


def _guidance_kind(setting: dict) -> str | None:
    parsed = parse_guidance_spec(setting.get("guidance"))
    return parsed[0] if parsed else None


def run_work(run: RunSpec, ev: Evaluation, nfe_of: Callable[[RunSpec, dict], int] | None = None) -> Work:
    """The work of one run under the evaluation plan `ev` (see the module docstring)."""
    cfg = run.config
    nfe_of = nfe_of or (lambda r, s: setting_nfe(r.config, _dynamics(r.config), s))
    if run.run_dir is not None:  # a finished run, evaluated in place

        snaps, images, steps = len(list_snapshots(run.run_dir)), 0, 0
    else:
        snaps = snapshot_count(cfg)
        steps = Schedule(cfg).total
        images = steps * cfg.train.batch
    model_metrics = tuple(m for m in ev.metrics if METRICS.get(m).needs_model)
    feature_metrics = [m for m in ev.metrics if m not in model_metrics]
    real = any(METRICS.get(m).needs_real_features for m in feature_metrics)
    jobs: list[Job] = []
    calls = 0
    real_images = 0
    for s in ev.samplers:
        jobs.append(Job(ev.n, nfe_of(run, s), _guidance_kind(s), snaps, f"setting {setting_label(s)}"))
        calls += 1
        real_images += ev.n if real else 0
    first = ev.samplers[0]
    nfe0, kind0 = nfe_of(run, first), _guidance_kind(first)
    for n in ev.n_sweep:
        if n != ev.n:
            jobs.append(Job(n, nfe0, kind0, 1, "n sweep"))
            calls += 1
            real_images += n if real else 0
    if ev.draws:
        jobs.append(Job(ev.draws["n"], nfe0, kind0, ev.draws["count"], "independent draws"))
        calls += ev.draws["count"]
        real_images += ev.draws["n"] * ev.draws["count"] if real else 0
    if not feature_metrics:  # only model metrics: nothing is sampled
        jobs = []
    guided = any(_guidance_kind(s) == "classifier" for s in ev.samplers)
    if run.run_dir is not None and (run.run_dir / NOISY_CLASSIFIER_DIR).is_dir():
        guided = False  # a finished run's guidance classifier is trained already
    return Work(images, steps, cfg.train.batch, snaps, calls, tuple(jobs), guided and bool(feature_metrics),
                real_images, model_metrics)


def _dynamics(cfg: Any) -> Any:
    return make_dynamics(cfg)


# ---- labels ------------------------------------------------------------------------------------------

def _options_text(options: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items()))


def network_label(cfg: Any) -> str:
    """'unet-xs', or with the run's network overrides: 'unet-xs base_channels=8'."""
    n = cfg.network
    extra = dict(n.options)
    if n.conditional:
        extra["conditional"] = True
    return n.preset + (" " + _options_text(extra) if extra else "")


def data_label(cfg: Any) -> str:
    """'digits', 'fashion-mnist resolution=32', with the dataset's options."""
    d = cfg.data
    extra = dict(d.options)
    if d.resolution:
        extra["resolution"] = d.resolution
    if d.split != "train":
        extra["split"] = d.split
    return d.name + (" " + _options_text(extra) if extra else "")
