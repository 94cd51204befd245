"""Unit costs of a study's evaluation, measured on this machine through the code that does the work.

Unit costs (:func:`measure_evaluation`) are timed on a snapshot written by the training
calibration (study.cost.training.calibrate), through the functions the evaluation calls: `sampling.load_run`,
`sampling.generate` at the evaluation's batch (evaluation.SAMPLE_BATCH) with the guidance wrappers,
the extractor's `features_and_logits`, the registered metric functions on features of the study's
sample counts, `tensorboard_log.log_evaluation`, the data loader and the Frechet reference built
once per evaluate_run call, and a few steps of the two classifiers that may be trained on the way.
They are priced per run's counted work (study.cost.workload)."""

from __future__ import annotations

import inspect
import math
import statistics as pystats
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ... import validate
from ...data import load_dataset
from ...errors import UserError
from ...evaluation import SAMPLE_BATCH
from ...guidance import (accuracy_by_noise_level, classifier_free_guidance, make_guidance,
                         train_noisy_classifier, train_noisy_classifier_for, untrained_classifier)
from ...metrics import METRICS, MetricContext
from ...metrics.eval_classifier import data_id, default_classifier_dir, train_eval_classifier
from ...metrics.extractors import (ClassifierExtractor, InceptionExtractor, SmallCNN, file_hash,
                                   inception_weights_path, load_classifier, save_classifier, train_classifier)
from ...metrics.inception import FEATURE_DIM, FIDInceptionV3, NUM_CLASSES
from ...metrics.reference import RefKey, default_cache_dir
from ...metrics.stats import FrechetReference
from ...rundir import RunDir
from ...sampling import generate, load_run, run_plan
from ...tensorboard_log import log_evaluation
from ..spec import Evaluation
from .workload import Job, Work, _guidance_kind


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
    d = cfg.data
    return load_dataset(d.name, root=d.root, split=split, resolution=d.resolution, **dict(d.options))


def _eval_classifier_s(cfg: Any, dev: Any, train_set: Any, feature_s: float) -> tuple[float, str]:
    """Seconds to train the evaluation classifier of the run's dataset as train_eval_classifier
    (metrics.eval_classifier) does (its epochs and batch for the dataset's size), from the time of a
    few steps of train_classifier."""
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
            clf = untrained_classifier(shape, k).to(dev)
            nfe_s["classifier"] = per_nfe(make_guidance(run, "classifier", 1.0, classifier=clf, device=dev)(run.denoiser),
                                          labels)
        if "cfg" in kinds and k and cfg.network.conditional:
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
