"""What a study's runs cost: the work of each run counted from its config and the evaluation plan,
unit costs measured on this machine through the code that does the work, and GPU times predicted
from rates recorded on a GPU.

The work of a run (:func:`run_work`) is what `study run` makes it do (study.work.train_and_evaluate):
train `train.kimg` of images, writing a snapshot every `snapshot_kimg` (train.Schedule); evaluate
every kept snapshot with every evaluation setting at n samples, then the final snapshot at each
other n of `n_sweep` and `draws.count` times at `draws.n`, the last two with the first setting. A
setting's NFE is its plan's (sampling.run_plan, the evaluation's own resolution of the request):
the sampler runs its planned grid on a stand-in denoiser that only counts its calls. Classifier
guidance adds a gradient of the noise-aware classifier to every call and trains that classifier
once per dataset and process (shared by their runs, `train_noisy_classifier_for` at its default steps and batch);
classifier-free guidance calls the network on a doubled batch.

Unit costs (:func:`measure_evaluation`) are timed on a snapshot written by the training
calibration (study.plan), through the functions the evaluation calls: `sampling.load_run`,
`sampling.generate` at the evaluation's batch (evaluation.SAMPLE_BATCH) with the guidance wrappers,
the extractor's `features_and_logits`, the registered metric functions on features of the study's
sample counts, `tensorboard_log.log_evaluation`, the data loader and the Frechet reference built
once per evaluate_run call, and a few steps of the two classifiers that may be trained on the way.

GPU predictions (:func:`gpu_times`, :func:`gpu_estimate`) use measured rates recorded in :data:`GPU_RATES` (from
benchmarks/RESULTS.md), scaled by each network's forward FLOPs (networks.count_flops)."""

from __future__ import annotations

import heapq
import inspect
import json
import math
import statistics as pystats
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from .spec import Evaluation, RunSpec
from .status import format_duration

# ---- the work of one run (counted; nothing is timed) ------------------------------------------------


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

    from ..samplers import SAMPLERS
    from ..samplers.api import prior_from_seeds
    from ..sampling import run_plan

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
    from ..train import Schedule

    if not cfg.train.keep_snapshots:
        return 1
    s = Schedule(cfg)
    return sum(1 for step in range(s.snapshot, s.total, s.snapshot) if s.is_snapshot(step)) + 1


def _guidance_kind(setting: dict) -> str | None:
    from ..guidance import parse_guidance_spec

    parsed = parse_guidance_spec(setting.get("guidance"))
    return parsed[0] if parsed else None


def run_work(run: RunSpec, ev: Evaluation, nfe_of: Callable[[RunSpec, dict], int] | None = None) -> Work:
    """The work of one run under the evaluation plan `ev` (see the module docstring)."""
    from ..evaluation import NOISY_CLASSIFIER_DIR
    from ..metrics import METRICS
    from .results import setting_label

    cfg = run.config
    nfe_of = nfe_of or (lambda r, s: setting_nfe(r.config, _dynamics(r.config), s))
    if run.run_dir is not None:  # a finished run, evaluated in place
        from ..checkpoint import list_snapshots

        snaps, images, steps = len(list_snapshots(run.run_dir)), 0, 0
    else:
        from ..train import Schedule

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
    from ..model import make_dynamics

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


# ---- unit costs measured on this machine ---------------------------------------------------------------

@dataclass
class EvalUnits:
    """Measured costs of the evaluation of one (data, network) on this machine, at `threads` threads.

    nfe_s: seconds per sample per denoiser evaluation at the evaluation's batch, by guidance kind;
    feature_s: seconds per image through the extractor (None: not measurable here);
    metrics_s: seconds of the metric computation of one snapshot evaluation, by n;
    load_s: loading a snapshot; log_s: the TensorBoard record of one snapshot evaluation;
    call_s: what each evaluate_run call does once (extractor load, reference data, Frechet reference);
    noisy_s: one run's noise-aware classifier; dataset_s: the per-dataset one-offs (evaluation
    classifier and reference statistics when not cached; 0 when cached)."""

    threads: int
    load_s: float
    nfe_s: dict
    feature_s: float | None
    metrics_s: dict
    log_s: float
    call_s: float
    noisy_s: float | None = None
    dataset_s: float = 0.0
    dataset_what: str = ""
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    def snapshot_eval_s(self, job: Job) -> float:
        """Seconds of one snapshot evaluation of `job`."""
        per_nfe = self.nfe_s.get(job.guidance, self.nfe_s[None])
        return (self.load_s + job.n * job.nfe * per_nfe + job.n * (self.feature_s or 0.0)
                + self.metrics_s.get(job.n, 0.0) + self.log_s)

    def run_s(self, work: Work) -> float:
        """Seconds of a run's evaluation (one-offs apart)."""
        return (work.calls * self.call_s + work.real_images * (self.feature_s or 0.0)
                + sum(j.count * self.snapshot_eval_s(j) for j in work.jobs))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _median_time(fn: Callable[[], Any], *, budget_s: float = 1.5, max_reps: int = 3) -> float:
    """Median seconds of up to `max_reps` calls of fn, stopping once `budget_s` has been spent."""
    times: list[float] = []
    spent = 0.0
    while len(times) < max_reps and (not times or spent < budget_s):
        t, _ = _timed(fn)
        times.append(t)
        spent += t
    return float(pystats.median(times))


class _Subset:
    """The first m items of a labelled dataset (what the classifier trainers read)."""

    def __init__(self, ds: Any, m: int) -> None:
        import torch

        self.m = min(int(m), len(ds))
        self.x, self.labels = ds.get_batch(torch.arange(self.m))
        self.num_classes = ds.num_classes
        self.name = getattr(ds, "name", "subset")
        self.split = getattr(ds, "split", "train")

    def __len__(self) -> int:
        return self.m

    def get_batch(self, idx: Any) -> tuple[Any, Any]:
        return self.x[idx], self.labels[idx]


def _load_split(cfg: Any, split: str) -> Any:
    from ..data import load_dataset

    d = cfg.data
    return load_dataset(d.name, root=d.root, split=split, resolution=d.resolution, **dict(d.options))


def _eval_classifier_s(cfg: Any, dev: Any, train_set: Any, feature_s: float) -> tuple[float, str]:
    """Seconds to train the evaluation classifier of the run's dataset as train_eval_classifier
    (metrics.eval_classifier) does (its epochs and batch for the dataset's size), from the time of a
    few steps of train_classifier."""
    from ..metrics.eval_classifier import train_eval_classifier
    from ..metrics.extractors import train_classifier

    params = inspect.signature(train_eval_classifier).parameters
    batch = int(params["batch_size"].default)
    n_train = len(train_set)
    try:
        n_test = len(_load_split(cfg, "test"))
    except (UserError, OSError):
        n_test = max(1, n_train // 10)   # a held-out 10% of the train split
        n_train -= n_test
    epochs = 20 if n_train <= 20_000 else 10   # train_eval_classifier's default
    sub = _Subset(train_set, batch * 20)

    def steps(k: int) -> float:
        x, y = sub.x[: batch * k].float(), sub.labels[: batch * k].long()
        t, _ = _timed(lambda: train_classifier(x, y, x[:batch], y[:batch], epochs=1, batch_size=batch, device=dev,
                                               num_classes=int(sub.num_classes)))
        return t

    steps(1)  # warm-up
    per_step = max(0.0, (steps(20) - steps(4)) / 16)
    total_steps = epochs * math.ceil(n_train / batch)
    seconds = total_steps * per_step + (n_train + n_test) * feature_s
    return seconds, (f"evaluation classifier: {epochs} epochs x {math.ceil(n_train / batch)} steps of batch {batch} "
                     f"at {per_step * 1e3:.1f} ms per step + accuracy over {n_train + n_test} images")


def _noisy_classifier_s(cfg: Any, dynamics: Any, dev: Any, train_set: Any) -> tuple[float, str]:
    """Seconds to train one run's noise-aware classifier as guidance.train_noisy_classifier_for does (its
    default steps and batch; accuracy at 8 noise levels over the test split, else the train split)."""
    from ..guidance import accuracy_by_noise_level, train_noisy_classifier, train_noisy_classifier_for

    params = inspect.signature(train_noisy_classifier_for).parameters
    total, batch = int(params["steps"].default), int(params["batch"].default)
    levels = int(inspect.signature(accuracy_by_noise_level).parameters["levels"].default)
    try:
        n_eval = len(_load_split(cfg, "test"))
    except (UserError, OSError):
        n_eval = len(train_set)
    small = _Subset(train_set, 256)

    def steps(k: int) -> tuple[float, Any]:
        return _timed(lambda: train_noisy_classifier(train_set, dynamics, steps=k, batch=batch, device=dev, log=None,
                                                     eval_dataset=small, eval_levels=1)[0])

    steps(1)  # warm-up
    t20, model = steps(20)
    t4, _ = steps(4)
    per_step = max(0.0, (t20 - t4) / 16)
    x, y = small.x.float().to(dev), small.labels.long()
    t_acc, _ = _timed(lambda: accuracy_by_noise_level(model, x, y, dynamics, levels=1))
    per_image = t_acc / len(small)
    seconds = total * per_step + levels * n_eval * per_image
    return seconds, (f"noise-aware classifier: {total} steps of batch {batch} at {per_step * 1e3:.1f} ms per step + "
                     f"accuracy at {levels} noise levels over {n_eval} images")


def measure_evaluation(run_dir: Path, ev: Evaluation, *, threads: int, one_offs: bool = True,
                       sample_steps: int = 8) -> EvalUnits:
    """Time the evaluation's pieces on the snapshot in `run_dir` (see the module docstring) with
    `threads` torch threads. Classifiers are timed for a few steps only; nothing is written but into
    temporary folders (the run directory may be a finished run of an evaluation-only study)."""
    import numpy as np
    import torch

    from ..evaluation import SAMPLE_BATCH
    from ..metrics.eval_classifier import data_id, default_classifier_dir
    from ..metrics import METRICS, MetricContext
    from ..metrics.reference import RefKey, default_cache_dir
    from ..metrics.stats import FrechetReference
    from .. import validate
    from ..rundir import RunDir
    from ..sampling import generate, load_run, run_plan
    from ..tensorboard_log import log_evaluation

    t_start = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    notes: list[str] = []
    try:
        cfg = RunDir(run_dir).config()
        dev = torch.device(validate.device("auto"))  # where evaluate_run samples, as the study runner calls it
        run = load_run(run_dir, None, device=dev)
        load_s = _median_time(lambda: load_run(run_dir, None, device=dev), budget_s=0.5)
        shape, k = run.shape, RunDir(run_dir).dataset().num_classes  # the dataset's classes, as evaluate_run
        dyn = run.denoiser.dynamics
        steps = sample_steps if dyn.steps is None else max(1, min(sample_steps, int(dyn.steps)))
        plan = run_plan(cfg, dyn, sampler="ddim", steps=steps)
        seeds = list(range(SAMPLE_BATCH))
        labels = (torch.arange(SAMPLE_BATCH) % k) if k else None

        def per_nfe(den: Any, cond: Any) -> float:
            def call(m: int) -> int:
                return generate(den, shape, seeds[:m], sampler=plan.sampler, grid=plan.grid, steps=plan.steps,
                                cond=None if cond is None else cond[:m], options=plan.options, clip=cfg.sample.clip,
                                batch=SAMPLE_BATCH, device=dev)[1]

            nfe = call(8)  # warm-up
            return _median_time(lambda: call(SAMPLE_BATCH)) / (SAMPLE_BATCH * nfe)

        cond_net = labels if cfg.network.conditional else None
        nfe_s: dict = {None: per_nfe(run.denoiser, cond_net)}
        kinds = {_guidance_kind(s) for s in ev.samplers} - {None}
        if "classifier" in kinds and k:
            from ..guidance import make_guidance, untrained_classifier

            clf = untrained_classifier(shape, k).to(dev)
            nfe_s["classifier"] = per_nfe(make_guidance(run, "classifier", 1.0, classifier=clf, device=dev)(run.denoiser),
                                          labels)
        if "cfg" in kinds and k and cfg.network.conditional:
            from ..guidance import classifier_free_guidance

            nfe_s["cfg"] = per_nfe(classifier_free_guidance(run.denoiser, 2.0, num_classes=k), labels)

        # the extractor: the dataset's evaluation classifier (cached, else the same architecture untrained)
        # or Inception (its weights file, else the same architecture with random weights)
        ext, feature_s, call_s, ext_hash = None, None, 0.0, None
        images = len(shape) == 3
        train_set = None
        metrics = [m for m in ev.metrics if not METRICS.get(m).needs_model]
        if metrics and images:
            d = cfg.data
            t_data, train_set = _timed(lambda: _load_split(cfg, d.split))
            call_s += t_data  # evaluate_run loads the reference split in every call
            cached = default_classifier_dir(d.name, d.resolution, d.options)
            if ev.extractor == "classifier":
                from ..metrics.extractors import ClassifierExtractor, SmallCNN, load_classifier, save_classifier

                if (cached / "classifier.json").is_file():
                    t_load, ext = _timed(lambda: load_classifier(cached, device=dev))
                    ext_hash = ext.weights_hash
                else:
                    if not k:
                        raise UserError(f"the evaluation classifier needs class labels; {d.name} has none")
                    with torch.random.fork_rng(devices=[]):
                        ext = ClassifierExtractor(SmallCNN(shape[0], k, shape[-1])).to(dev)
                    with tempfile.TemporaryDirectory(prefix="diffatlas-calib-clf-") as tmp:
                        save_classifier(tmp, ext)
                        t_load, _ = _timed(lambda: load_classifier(tmp, device=dev))
                call_s += t_load
                fwd = ext.features_and_logits
                batch = ext.batch_size
                dim, classes = ext.feature_dim, ext.num_classes
            else:
                from ..metrics.extractors import InceptionExtractor, file_hash, inception_weights_path
                from ..metrics.inception import FEATURE_DIM, NUM_CLASSES, FIDInceptionV3

                path = inception_weights_path()
                if path.is_file():
                    t_load, ext = _timed(lambda: InceptionExtractor(path, device=dev))
                    call_s += t_load
                    ext_hash = file_hash(path)
                    fwd, batch = ext.features_and_logits, ext.batch_size
                else:
                    notes.append(f"no Inception weights at {path}: the evaluation stops there until they are fetched; "
                                 "features timed on the same network with random weights")
                    net = FIDInceptionV3().to(dev).eval()
                    if dev.type == "cpu":
                        net.to(memory_format=torch.channels_last)

                    @torch.no_grad()
                    def fwd(x: Any) -> Any:
                        p = ((x.clamp(-1, 1) + 1) * 127.5).round()
                        p = p.expand(-1, 3, -1, -1) if p.shape[1] == 1 else p
                        pool = net(p.to(dev))
                        return pool, net.logits(pool)

                    batch = 64
                dim, classes = FEATURE_DIM, NUM_CLASSES
            x = torch.rand(batch, *shape) * 2 - 1
            fwd(x[:2])  # warm-up
            feature_s = _median_time(lambda: fwd(x)) / batch

            # the metric computation of one snapshot evaluation at each n of the plan, on random features
            rng = np.random.default_rng(0)
            a = rng.standard_normal((2 * dim, dim))
            t_ref, reference = _timed(lambda: FrechetReference(np.zeros(dim), a.T @ a / (2 * dim)))
            call_s += t_ref
            metrics_s = {}
            real_needed = any(METRICS.get(m).needs_real_features for m in metrics)
            for n in sorted({ev.n, *ev.n_sweep, *([ev.draws["n"]] if ev.draws else [])}):
                feats, logits = rng.standard_normal((n, dim)), rng.standard_normal((n, classes))
                real = rng.standard_normal((min(n, len(train_set)), dim)) if real_needed else None
                full = real is not None and min(1000, n, real.shape[0]) == n == real.shape[0]
                opts = {"is_splits": min(10, n), "kid_subsets": 1 if full else 100, "kid_subset_size": 1000, "pr_k": 3,
                        "labels": (np.arange(n) % classes)}
                ctx = MetricContext(fake_features=feats, fake_logits=logits, real_features=real, reference=reference,
                                    n_real=len(train_set), extractor=_FakeExtractor(classes), n_boot=0, seed=0,
                                    alpha=0.05, options=opts)
                metrics_s[n] = _timed(lambda: [METRICS.get(m)(ctx) for m in metrics])[0]
            # the per-dataset one-offs, when their caches are empty
            dataset_s, dataset_what = 0.0, ""
            if one_offs:
                stats_key = RefKey(data_id(d.name, d.resolution, d.options, d.root, with_root=True), str(d.split),
                                   ev.extractor, str(ext_hash), len(train_set))
                parts = []
                if ev.extractor == "classifier" or "class_accuracy" in metrics:
                    if not (cached / "classifier.json").is_file():
                        s, what = _eval_classifier_s(cfg, dev, train_set, feature_s)
                        dataset_s += s
                        parts.append(what)
                if ext_hash is None or not (default_cache_dir() / stats_key.filename()).is_file():
                    dataset_s += len(train_set) * feature_s
                    parts.append(f"reference statistics over {len(train_set)} images of {d.name}/{d.split}")
                dataset_what = "; ".join(parts)
        else:
            metrics_s = {}
            dataset_s, dataset_what = 0.0, ""
            if metrics:
                notes.append(f"{', '.join(metrics)} need images; this data has samples of shape {tuple(shape)}")
        if any(METRICS.get(m).needs_model for m in ev.metrics):
            notes.append("bpd (an adaptive probability-flow ODE per data point) is not included")

        log_s = 0.0
        if cfg.train.tensorboard and images:
            xs = torch.rand(64, *shape) * 2 - 1
            entries = [{"metric": m, "value": 1.0, "sampler": plan.sampler, "steps": plan.steps, "grid": plan.grid,
                        "setting": "calibration", "n": ev.n} for m in metrics]
            with tempfile.TemporaryDirectory(prefix="diffatlas-calib-tb-") as tmp:  # never into the run itself
                log_s = _median_time(lambda: log_evaluation(tmp, True, 0.0, entries, xs), max_reps=2)

        noisy_s, noisy_what = None, ""
        if one_offs and "classifier" in kinds and k:
            train_set = train_set if train_set is not None else _load_split(cfg, cfg.data.split)
            noisy_s, noisy_what = _noisy_classifier_s(cfg, dyn, dev, train_set)
            notes.append(noisy_what)
        if dataset_what:
            notes.append(dataset_what)
    finally:
        torch.set_num_threads(old_threads)
    return EvalUnits(int(threads), load_s, nfe_s, feature_s, metrics_s, log_s, call_s, noisy_s, dataset_s,
                     dataset_what, notes, time.perf_counter() - t_start)


class _FakeExtractor:
    """What a metric record reads of its extractor (name, weights hash, classes)."""

    name = "calibration"
    weights_hash = "0" * 16

    def __init__(self, classes: int) -> None:
        self.num_classes = classes


# ---- workers --------------------------------------------------------------------------------------------

def cpu_count() -> int:
    """The cores this process may run on (what the local runner splits among its workers)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on this machine has used, CPU seconds this process and its waited-for
    children have used), from /proc/stat and getrusage; None where /proc/stat is not there (not Linux).
    Their growth over an interval, less ours, is what other processes took meanwhile."""
    import os
    import resource

    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / ticks
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
    return busy, own


def worker_threads(workers: int, cores: int, main_threads: int) -> int:
    """Torch threads of each worker of `study run --workers W` (study.runner): one worker runs in the
    runner's own process (its default threads); several get cores // W each, at least 1."""
    return main_threads if workers == 1 else max(1, cores // workers)


def makespan(times: list[float], workers: int) -> float:
    """Wall time of runs taken in order by the first free of `workers` workers (the ledger's order)."""
    free = [0.0] * max(1, workers)
    for t in times:
        heapq.heapreplace(free, free[0] + t)
    return max(free)


@dataclass(frozen=True)
class RunTime:
    """One run's seconds for the wall-time simulation: `before` (training) until its evaluation asks
    for the dataset's cached classifier and statistics, which cost `shared` (0 when cached) under
    `key`; then `after` (its evaluation and its own one-offs)."""

    before: float
    after: float
    key: str = ""
    shared: float = 0.0


def wall_time(runs: list[RunTime], workers: int) -> float:
    """Wall time of runs taken in order by the first free of `workers` workers. A dataset's one-offs
    (its evaluation classifier and reference statistics, io.build_once) are paid by the first run that
    reaches evaluation; a run that needs them while they are being built waits until they are ready."""
    free = [0.0] * max(1, workers)
    ready: dict[str, float] = {}
    for r in runs:
        need = free[0] + r.before
        end = need + r.after
        if r.shared:
            if r.key not in ready:
                ready[r.key] = need + r.shared
                end += r.shared
            elif need < ready[r.key]:
                end = ready[r.key] + r.after
        heapq.heapreplace(free, end)
    return max(free)


# ---- GPU predictions from recorded rates --------------------------------------------------------------

@dataclass(frozen=True)
class GpuRates:
    """Rates measured on one GPU model. The reference network is ddpm-cifar10 at 3x32x32
    (`reference_gflop` forward per image); `step_img_s`: its training step alone (network, loss,
    optimizer) at batch 128 by mode; `end_to_end_img_s`: `diffatlas train` end to end in
    `end_to_end_mode`; `small_step_s`: the end-to-end time per step of a small network without CUDA
    graphs (host-bound: the least a step takes there)."""

    name: str
    measured: str
    reference_gflop: float
    end_to_end_img_s: tuple[float, float]
    end_to_end_mode: str
    step_img_s: dict
    small_step_s: float
    small_what: str


# From benchmarks/RESULTS.md ("Networks: diffatlas U-Net vs diffusers UNet2DModel"), one NVIDIA H200,
# torch 2.11.0+cu130, 2026-11-26: ddpm-cifar10 (12.44 GFLOP forward per 3x32x32 image) at batch 128.
# Training step alone: fp32 eager 2,063.1 img/s; bf16 channels_last eager 2,247.2; bf16 channels_last
# torch.compile 3,599.0; the same with mode reduce-overhead (CUDA graphs) 5,058.7. End to end
# (`diffatlas train`, bf16 + channels_last + compile reduce-overhead): 3,870-3,935 img/s per tick.
# unet-s on digits padded to 32x32 at batch 256, bf16 + channels_last + compile (default mode), end
# to end: 4,400-5,200 img/s, i.e. 49-58 ms per step whatever its FLOPs: the host sets the pace.
GPU_RATES: dict[str, GpuRates] = {
    "h200": GpuRates(
        name="NVIDIA H200", measured="benchmarks/RESULTS.md, 2026-11-26, torch 2.11.0+cu130",
        reference_gflop=12.44, end_to_end_img_s=(3870.0, 3935.0), end_to_end_mode="bf16 compiled, CUDA graphs",
        step_img_s={"fp32 eager": 2063.1, "bf16 eager": 2247.2, "bf16 compiled": 3599.0,
                    "bf16 compiled, CUDA graphs": 5058.7},
        small_step_s=256 / 5200, small_what="unet-s on 1x32x32 at batch 256, compiled without CUDA graphs"),
}


def gpu_mode(train_cfg: Any) -> tuple[str, str]:
    """(measured mode, note) of a run's training settings on the GPU table."""
    bf16 = train_cfg.precision == "bf16"
    if not train_cfg.compile:
        return ("bf16 eager" if bf16 else "fp32 eager"), ""
    if not bf16:
        return "fp32 eager", "fp32 with torch.compile was not measured: the fp32 eager rate is used"
    if train_cfg.compile_mode == "reduce-overhead":
        return "bf16 compiled, CUDA graphs", ""
    return "bf16 compiled", ""


NATIVE_DATA = {  # shape, classes, train-split size of the datasets whose files may be absent
    "digits": ((1, 8, 8), 10, 1500), "mnist": ((1, 28, 28), 10, 60000), "fashion-mnist": ((1, 28, 28), 10, 60000),
    "cifar10": ((3, 32, 32), 10, 50000), "image-folder": ((3, 0, 0), None, None),
}


def data_shape(cfg: Any) -> tuple[tuple[int, ...], int | None, int | None, str]:
    """(shape, classes, train-split size, source) of a run's data: from the dataset when it loads here,
    else from NATIVE_DATA and data.resolution."""
    d = cfg.data
    try:
        ds = _load_split(cfg, d.split)
        return tuple(int(s) for s in ds.shape), ds.num_classes, len(ds), "shape read from the dataset"
    except (UserError, OSError) as e:
        if d.name not in NATIVE_DATA:
            raise UserError(f"the shape of {d.name} is unknown here ({e})") from None
        shape, k, size = NATIVE_DATA[d.name]
        if d.resolution:
            shape = (shape[0], int(d.resolution), int(d.resolution))
        if 0 in shape:
            raise UserError(f"the shape of {d.name} is unknown here without data.resolution ({e})") from None
        return shape, k, size, f"the shape of {d.name}{' at resolution ' + str(d.resolution) if d.resolution else ''}; its files are not here"


def _flops(module: Any, *args: Any) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    return int(counter.get_total_flops())


def model_flops(cfg: Any, shape: tuple[int, ...], classes: int | None, extractor: str) -> dict:
    """Forward FLOPs per sample: the run's network, the extractor, the dataset's evaluation classifier, the
    noise-aware classifier (0 where they do not apply). Built on the meta device: no memory, no weights."""
    import torch

    from ..guidance import untrained_classifier
    from ..model import make_network
    from ..networks import count_flops

    out = {"network": 0, "extractor": 0, "classifier": 0, "noisy": 0}
    with torch.device("meta"):
        net = make_network(cfg, shape, classes)
    out["network"] = count_flops(net, shape, cond=bool(cfg.network.conditional))
    if len(shape) == 3:
        from ..metrics.extractors import SmallCNN

        with torch.device("meta"):
            if 8 <= shape[-1] <= 64:
                cnn = SmallCNN(shape[0], classes or 10, shape[-1])
                out["classifier"] = _flops(cnn.forward_features, torch.zeros(1, *shape))
            if extractor == "classifier":
                out["extractor"] = out["classifier"]
            else:
                from ..metrics.inception import FIDInceptionV3

                ext = FIDInceptionV3()
                out["extractor"] = _flops(lambda x: ext.logits(ext(x)), torch.zeros(1, 3, shape[1], shape[2]))
    if classes:
        with torch.device("meta"):
            clf = untrained_classifier(shape, classes)
            out["noisy"] = _flops(clf, torch.zeros(1, *shape), torch.zeros(1))
    return out


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def gpu_train_img_s(rates: GpuRates, mode: str, gflop: float) -> float:
    """Training images/s of a network of `gflop` forward GFLOP per sample in `mode`: the end-to-end rate
    measured on the reference network (the middle of its range), times the training-step rate of `mode`
    over that of the end-to-end measurement's mode, times reference FLOPs / the network's FLOPs."""
    ref = sum(rates.end_to_end_img_s) / 2
    return ref * rates.step_img_s[mode] / rates.step_img_s[rates.end_to_end_mode] * rates.reference_gflop / gflop


def gpu_forward_flop_s(rates: GpuRates) -> float:
    """FLOP/s of forward passes in fp32 eager (how the evaluation samples): the FLOP rate of the fp32 eager
    training step of the reference network (3 forwards' worth of FLOPs per image)."""
    return 3 * rates.reference_gflop * 1e9 * rates.step_img_s["fp32 eager"]


def gpu_times(runs: list[RunSpec], works: list[Work], ev: Evaluation, gpu: str,
              flops_of: Callable[[Any], dict] | None = None) -> dict:
    """Per-run GPU seconds {train, eval, oneoff} on one GPU of the kind `gpu` (a GPU_RATES key) from the
    recorded rates scaled by FLOPs (see gpu_train_img_s, gpu_forward_flop_s), with what went into them.

    Training: steps x batch / rate, each step at least `small_step_s` outside CUDA graphs (host-bound).
    Evaluation: every sample x NFE through the network (x2 for cfg; + 3 classifier forwards' worth for
    classifier guidance, its forward and input gradient) and once through the extractor, plus the real
    images of KID / precision-recall. One-offs: a run's noise-aware classifier (its default steps x
    batch x 3 forwards), and per dataset the evaluation classifier (20 epochs up to 20,000 images, else
    10; 3 forwards per image and epoch) and the reference statistics (one forward per image)."""
    rates = GPU_RATES[gpu]
    fwd = gpu_forward_flop_s(rates)
    flops_of = flops_of or _flops_of_run(ev)
    out: dict[str, Any] = {"runs": [], "models": {}, "floor_steps": 0, "calls": 0, "modes": set(), "notes": set(),
                           "unknown_sizes": set()}
    datasets: set[str] = set()
    for run, work in zip(runs, works):
        cfg = run.config
        f = flops_of(cfg)
        out["models"][f["key"]] = f
        mode, note = gpu_mode(cfg.train)
        out["modes"].add(mode)
        if note:
            out["notes"].add(note)
        step_s = cfg.train.batch / gpu_train_img_s(rates, mode, f["network"] / 1e9) if f["network"] else 0.0
        if mode != "bf16 compiled, CUDA graphs" and step_s < rates.small_step_s:
            step_s = rates.small_step_s
            out["floor_steps"] += work.train_steps
        t_train = work.train_steps * step_s
        flop = 0.0
        for j in work.jobs:
            per = f["network"] * (2 if j.guidance == "cfg" else 1) + (3 * f["noisy"] if j.guidance == "classifier" else 0)
            flop += j.count * j.n * (j.nfe * per + f["extractor"])
            out["calls"] += j.count * math.ceil(j.n / 256) * j.nfe
        flop += work.real_images * f["extractor"]
        t_one = 0.0
        if work.noisy_classifier:
            from ..guidance import train_noisy_classifier_for

            p = inspect.signature(train_noisy_classifier_for).parameters
            t_one += int(p["steps"].default) * int(p["batch"].default) * 3 * f["noisy"] / fwd
        dkey = json.dumps(_section(cfg, "data"), sort_keys=True)
        if dkey not in datasets and f["extractor"] and work.jobs:
            datasets.add(dkey)
            if f["size"]:
                epochs = 20 if f["size"] <= 20_000 else 10
                classifier = ev.extractor == "classifier" or "class_accuracy" in ev.metrics
                t_one += ((3 * epochs * f["size"] * f["classifier"] if classifier else 0.0)
                          + f["size"] * f["extractor"]) / fwd
            else:
                out["unknown_sizes"].add(cfg.data.name)
        out["runs"].append({"train": t_train, "eval": flop / fwd, "oneoff": t_one})
    return out


def _flops_of_run(ev: Evaluation) -> Callable[[Any], dict]:
    """FLOPs per (data, network) of a run's config, computed once each."""
    seen: dict[str, dict] = {}

    def of(cfg: Any) -> dict:
        key = json.dumps([_section(cfg, "data"), _section(cfg, "network")], sort_keys=True)
        if key not in seen:
            shape, classes, size, source = data_shape(cfg)
            seen[key] = {**model_flops(cfg, shape, classes, ev.extractor), "shape": shape, "size": size,
                         "source": source, "key": key, "label": network_label(cfg)}
        return seen[key]

    return of


def gpu_estimate(runs: list[RunSpec], works: list[Work], ev: Evaluation, gpu: str, workers: int = 1) -> list[str]:
    """The plan's lines predicting the study's time on one GPU of the kind `gpu` and on `workers` of them."""
    rates = GPU_RATES[gpu]
    t = gpu_times(runs, works, ev, gpu)
    lines = [f"GPU estimate, one {rates.name}: predicted from rates measured there ({rates.measured}), "
             "not measured on this machine:"]
    for f in t["models"].values():
        lines.append(f"  {f['label']} on {'x'.join(map(str, f['shape']))} ({f['source']}): {f['network'] / 1e9:.4g} "
                     f"GFLOP forward per sample; extractor {ev.extractor} {f['extractor'] / 1e9:.4g} GFLOP per image")
    graphs = rates.step_img_s[rates.end_to_end_mode]
    tot = {k: sum(r[k] for r in t["runs"]) for k in ("train", "eval", "oneoff")}
    lines.append(f"  training: {format_duration(tot['train'])}: `diffatlas train` end to end on ddpm-cifar10 "
                 f"({rates.reference_gflop:g} GFLOP forward) at {'-'.join(_fmt_rate(v) for v in rates.end_to_end_img_s)} "
                 f"img/s ({rates.end_to_end_mode}), x "
                 + ", ".join(f"{_fmt_rate(rates.step_img_s[m])}/{_fmt_rate(graphs)} for {m}" for m in sorted(t["modes"]))
                 + " (the training-step rates of the two modes), scaled by forward FLOPs"
                 + (f"; {t['floor_steps']:,} steps held at the {rates.small_step_s * 1e3:.0f} ms per step of "
                    f"{rates.small_what} (host-bound; FLOPs alone would give less)" if t["floor_steps"] else ""))
    for note in sorted(t["notes"]):
        lines.append(f"  note: {note}")
    lines.append(f"  evaluation: {format_duration(tot['eval'])}: samples x NFE through the network in fp32, and the "
                 f"extractor's features, at the FLOP rate of the fp32 eager training step "
                 f"({gpu_forward_flop_s(rates) / 1e12:.0f} TFLOP/s); a lower bound: {t['calls']:,} batched network "
                 "calls, whose per-call overhead was not measured")
    unknown = (f" (reference statistics of {', '.join(sorted(t['unknown_sizes']))} not included: the dataset's size "
               "is unknown here)" if t["unknown_sizes"] else "")
    lines.append(f"  one-off classifiers and reference statistics: {format_duration(tot['oneoff'])} by FLOPs at the "
                 f"same rate, a lower bound{unknown}")
    per_run = [sum(r.values()) for r in t["runs"]]
    lines.append(f"  total, one {rates.name}: {format_duration(sum(per_run))}"
                 + (f"; {workers} workers on {workers} GPUs: {format_duration(makespan(per_run, workers))}"
                    if workers > 1 else "")
                 + "; small networks do not fill the GPU, so these are lower bounds")
    return lines


def _section(cfg: Any, section: str) -> dict:
    from .. import config as C

    return C.to_dict(cfg)[section]
