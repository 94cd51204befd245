"""Evaluation of a run over training: sample every chosen snapshot, measure it, log it.

Evaluation is a job over snapshots, separate from training (it can run beside a training run that
is still going: only complete snapshots are listed). For one *evaluation setting* (sampler, grid,
steps, sampler options, guidance, n, extractor, seed), every chosen snapshot is sampled from the
SAME per-sample seeds seed, seed + 1, ..., seed + n - 1 (EMA weights), so the metric-vs-kimg curve
changes only through the weights. Each metric of each snapshot becomes one JSON line of
``RUN/metrics.jsonl``::

    {"kimg": 0.192, "snapshot": "snapshot-000000.192", "metric": "fid", "value": 12.3, "interval": null,
     "n": 1000, "n_real": 1500, "extractor": "classifier", "extractor_hash": "…", "sampler": "ddim",
     "grid": "uniform", "steps": 20, "options": {}, "nfe": 21, "guidance": null, "seed": 0,
     "wall_s": 4.2, "what": "Frechet distance …", "higher_is_better": false, …}

The reference side is the split the run was trained on (``data.split`` of its config, normally
"train"): FID uses the mean and covariance of the extractor's features over the whole split,
cached by :func:`diffatlas.metrics.reference_stats`; KID and precision/recall use the features of
``min(n, split size)`` real images drawn by a fixed permutation (seed 0), equal in number to the
generated ones as Kynkaanniemi et al. (2019) do.

Resuming: a line is identified by :data:`KEY_FIELDS`; entries already in the log are not computed
again, and a snapshot's lines are appended (with fsync) only after all of its metrics are known, so
an evaluation killed mid-way resumes where it stopped without duplicates. Readers deduplicate by
the same key, the last line winning (:func:`read_metrics`).

Extractors: "classifier" is the evaluation classifier of the run's dataset (a small CNN trained on
the labelled train split, see :mod:`diffatlas.metrics.extractors`), trained once and cached under
``$DIFFATLAS_CACHE/classifiers/<dataset>-<resolution>`` (default ``~/.cache/diffatlas``) when absent;
"inception" is the FID Inception-v3 (local weights only).

The ``bpd`` metric is the snapshot's own likelihood of held-out data (test split) through the
probability-flow ODE (:mod:`diffatlas.metrics.likelihood`); it needs no samples and no extractor, and
its entries name the ODE solver and the estimator settings where sampling entries name the sampler.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import validate
from .checkpoint import list_snapshots, load_meta
from .data import dataset_from_config, load_dataset
from .errors import UserError
from .io import append_jsonl, atomic_write, atomic_write_json, atomic_write_text, build_once, cache_root, read_jsonl
from .rundir import METRICS_FILE, RunDir, RunInfo
from .samplers.clip import resolve_clip
from .samplers.plan import request_label
from .sampling import generate, load_run, read_run_config, run_plan
from .tensorboard_log import log_evaluation

# What identifies an evaluation entry: an entry with the same values is not computed again.
KEY_FIELDS = ("kimg", "metric", "setting", "sampler", "grid", "steps", "options", "clip", "nfe_budget", "guidance",
              "guidance_classifier", "n", "extractor", "extractor_hash", "seed")
SAMPLE_BATCH = 256  # samples per sampler call (memory and progress; the samples do not depend on it)
REAL_SUBSET_SEED = 0  # the permutation that picks the real images of KID and precision/recall
NOISY_CLASSIFIER_DIR = "noisy-classifier"  # RUN/<this>: a run's own guidance classifier, used when present

LogFn = Callable[[str], Any]


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _quiet(_: str) -> None:
    return None


def _json_clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(v, dict):
        return {str(k): _json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.ndarray):
        return _json_clean(v.tolist())
    return v


def _options_text(options: dict[str, Any] | None) -> str:
    return json.dumps(_json_clean(options or {}), sort_keys=True)


def data_id(name: str, resolution: int | None = None, options: dict[str, Any] | None = None,
            root: str | None = None, *, with_root: bool = False) -> str:
    """A name for a dataset variant: ``<name>-<resolution>`` (resolution 0 = native), plus 8 hex digits of
    its extra options (and of its root, with_root=True) when it has any; used to key cached statistics
    and classifiers, so two variants never share them."""
    label = f"{name}-{int(resolution) if resolution else 0}"
    extra: dict[str, Any] = dict(options or {})
    if with_root and root:
        extra["root"] = str(Path(root).expanduser().resolve())
    if extra:
        label += "-" + hashlib.sha256(json.dumps(_json_clean(extra), sort_keys=True).encode()).hexdigest()[:8]
    return label


def default_classifier_dir(name: str, resolution: int | None = None, options: dict[str, Any] | None = None) -> Path:
    """``$DIFFATLAS_CACHE/classifiers/<dataset>-<resolution>`` (or under ~/.cache/diffatlas): where the
    evaluation classifier of a dataset variant lives. resolution None/0 means the native size."""
    return cache_root() / "classifiers" / data_id(name, resolution, options)


# ------------------------------------------------------------------------------------------------
# the evaluation classifier
# ------------------------------------------------------------------------------------------------
def train_eval_classifier(dataset: str, *, root: str | None = None, resolution: int | None = None,
                          options: dict[str, Any] | None = None, out_dir: str | Path | None = None,
                          epochs: int | None = None, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                          device: str | torch.device = "auto", log: LogFn | None = print) -> tuple[Any, dict[str, Any], Path]:
    """Train the evaluation classifier of a dataset on its train split and save it.

    Accuracy is measured on the dataset's test split, or, when it has none, on a held-out 10% of the
    train split (a fixed permutation of `seed`), which is then left out of training.

    Args:
        dataset: a DATASETS name with class labels (digits, mnist, fashion-mnist, cifar10, ...).
        out_dir: where to save (default :func:`default_classifier_dir`); written atomically as a folder.
        epochs: default 20 for up to 20,000 training images, else 10.
    Returns:
        (ClassifierExtractor, info, path); info["test_accuracy"] is the held-out accuracy.
    """
    from .metrics import save_classifier, train_classifier

    log = log or _quiet
    opts = dict(options or {})
    train_set = load_dataset(dataset, root=root, split="train", resolution=resolution, **opts)
    if getattr(train_set, "labels", None) is None or not getattr(train_set, "num_classes", None):
        raise UserError(f"dataset {dataset!r} has no class labels, which the evaluation classifier needs; "
                        "use --extractor inception")
    if len(train_set.shape) != 3:
        raise UserError(f"the evaluation classifier needs images (C, H, W); {dataset!r} yields samples of shape "
                        f"{tuple(train_set.shape)}")
    x, y = train_set.get_batch(torch.arange(len(train_set)))
    x, y = x.float().cpu(), y.long().cpu()
    test_split = "test"
    try:
        test_set = load_dataset(dataset, root=root, split="test", resolution=resolution, **opts)
        xt, yt = test_set.get_batch(torch.arange(len(test_set)))
        xt, yt = xt.float().cpu(), yt.long().cpu()
    except (UserError, OSError):
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))
        hold = max(1, x.shape[0] // 10)
        xt, yt, x, y = x[perm[:hold]], y[perm[:hold]], x[perm[hold:]], y[perm[hold:]]
        test_split = "holdout-10%-of-train"
    if epochs is None:
        epochs = 20 if x.shape[0] <= 20_000 else 10
    dev = torch.device(validate.device(device))
    log(f"training the evaluation classifier for {dataset} ({x.shape[0]} images {tuple(x.shape[1:])}, "
        f"{epochs} epochs, {dev.type})")
    ext, info = train_classifier(x, y, xt, yt, epochs=int(epochs), batch_size=batch_size, lr=lr, seed=seed,
                                 device=dev, dataset=dataset, num_classes=int(train_set.num_classes))
    info.update({"resolution": resolution, "root": root, "options": opts, "test_split": test_split,
                 "data_id": data_id(dataset, resolution, opts), "device": dev.type})
    ext.info = dict(info)
    out = Path(out_dir) if out_dir is not None else default_classifier_dir(dataset, resolution, opts)
    save_classifier(out, ext, info)
    log(f"evaluation classifier: test accuracy {info['test_accuracy']:.4f} ({test_split})")
    return ext, info, out


def evaluation_classifier(dataset: str, *, root: str | None = None, resolution: int | None = None,
                          options: dict[str, Any] | None = None, path: str | Path | None = None,
                          device: str | torch.device = "cpu", log: LogFn | None = print) -> Any:
    """The evaluation classifier of a dataset variant: loaded from `path` (which must exist), or from
    :func:`default_classifier_dir`, trained there first when absent (logged). Trained into a temporary
    folder and renamed into place, so concurrent evaluations never read a half-written classifier."""
    from .metrics import load_classifier

    log = log or _quiet
    if path is not None:
        return load_classifier(path, device=device)
    final = default_classifier_dir(dataset, resolution, options)
    with build_once(final, ready="classifier.json") as tmp:  # concurrent evaluations train it once
        if tmp is not None:
            log(f"no evaluation classifier for {final.name} at {final}: training one (cached for later evaluations)")
            train_eval_classifier(dataset, root=root, resolution=resolution, options=options, out_dir=tmp,
                                  device=device, log=log)
            log(f"evaluation classifier cached at {final}")
    return load_classifier(final, device=device)


def _load_extractor(name: str, cfg: Any, path: str | Path | None, device: torch.device, log: LogFn) -> Any:
    from .metrics import EXTRACTORS

    if name == "classifier":
        d = cfg.data
        return evaluation_classifier(d.name, root=d.root, resolution=d.resolution, options=d.options, path=path,
                                     device=device, log=log)
    ext = EXTRACTORS.get(name)(path, device=device)
    if getattr(ext, "standard", True) is False:
        log(f"{name} weights {getattr(ext, 'weights_path', path)} (sha256 {ext.weights_hash}) are not the standard "
            "FID weights file: its numbers are not comparable to published ones")
    return ext


# ------------------------------------------------------------------------------------------------
# the log: metrics.jsonl
# ------------------------------------------------------------------------------------------------
METRICS_FIELDS = {"kimg": "number", "metric": "string", "value": "number or null"}


def entry_key(entry: dict[str, Any]) -> tuple:
    """The identity of a metrics.jsonl entry (:data:`KEY_FIELDS`); kimg rounded to 1e-6."""
    out = []
    for f in KEY_FIELDS:
        v = entry.get(f)
        if f == "kimg" and v is not None:
            v = round(float(v), 6)
        elif f == "options":
            v = _options_text(v if isinstance(v, dict) else {})
        out.append(v)
    return tuple(out)


def read_metrics(run_dir: str | Path, *, dedupe: bool = True) -> list[dict[str, Any]]:
    """Entries of RUN/metrics.jsonl in file order; a torn last line is skipped; with dedupe, one entry
    per :func:`entry_key`, the last written winning (kept at its first position)."""
    entries = read_jsonl(Path(run_dir) / METRICS_FILE, "metrics log", fields=METRICS_FIELDS,
                         fix="delete that line (`diffatlas evaluate` computes missing entries again)")
    if not dedupe:
        return entries
    by: dict[tuple, dict[str, Any]] = {}
    for e in entries:
        by[entry_key(e)] = e
    return list(by.values())


# ------------------------------------------------------------------------------------------------
# choosing snapshots
# ------------------------------------------------------------------------------------------------
SNAPSHOTS_HELP = "all, last (or latest), 'every K' (about one snapshot per K kimg, and the last), or kimg values 'a,b,c'"


def select_snapshots(run_dir: str | Path, spec: str | float | Sequence[float] = "all") -> list[tuple[float, Path]]:
    """The complete snapshots of a run that `spec` chooses, as (kimg, path), oldest first.

    spec: "all"; "last"/"latest"; "every K" (the first snapshot at or past each multiple of K kimg,
    plus the last); or kimg values ("0.2,0.4" or a list). Raises UserError when the run has no
    complete snapshot or the spec is malformed."""
    snaps = list_snapshots(Path(run_dir))
    if not snaps:
        raise UserError(f"run {str(run_dir)!r} has no complete snapshot yet; train it first (diffatlas train)")
    items = [(float(load_meta(s)["kimg"]), s) for s in snaps]
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = str(spec)
    if not isinstance(spec, str):
        wanted = [float(v) for v in spec]
    else:
        text = spec.strip().lower()
        if text == "all":
            return items
        if text in ("last", "latest"):
            return items[-1:]
        if text.startswith("every"):
            arg = text[len("every"):].strip(" :=")
            try:
                step = float(arg)
            except ValueError:
                raise UserError(f"snapshots {spec!r}: 'every K' needs a number of kimg K; use {SNAPSHOTS_HELP}") from None
            if not step > 0 or not math.isfinite(step):
                raise UserError(f"snapshots {spec!r}: K must be a positive number of kimg")
            out, mark = [], 0.0
            for kimg, s in items:
                if kimg >= mark - 1e-9:
                    out.append((kimg, s))
                    mark = (math.floor(kimg / step + 1e-9) + 1) * step
            if out[-1][1] != items[-1][1]:
                out.append(items[-1])
            return out
        try:
            wanted = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"snapshots {spec!r} not understood; use {SNAPSHOTS_HELP}") from None
    out = []
    for w in wanted:
        hit = [it for it in items if abs(it[0] - w) < 1e-6]
        if not hit:
            raise UserError(f"run {str(run_dir)!r} has no snapshot at kimg {w:g}; it has: "
                            + ", ".join(f"{k:g}" for k, _ in items))
        out.append(hit[0])
    return sorted(set(out), key=lambda it: it[0])


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def _check_metrics(metrics: str | Iterable[str]) -> list[str]:
    from .metrics import METRICS

    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if str(m).strip()]
    if not names:
        raise UserError(f"no metric given; choose from: {', '.join(METRICS.names())}")
    for m in names:
        METRICS.get(m)  # UnknownNameError (one line) for a name that is not a metric
    return list(dict.fromkeys(names))


def _dataset_info(run_dir: Path) -> tuple[tuple[int, ...], int | None]:
    d = RunDir(run_dir).dataset()
    return d.shape, d.num_classes


def _check_request(run_dir: Path, shape: tuple[int, ...], n: int, seed: int) -> None:
    """Before any work: the seeds seed..seed+n-1 are valid, n samples fit in memory, the log can be written."""
    validate.seeds(seed, n, "seed")
    per = 4 * math.prod(shape) * 3  # the samples, their clamped copy and a chunk of features
    validate.memory(per * n, f"{n} samples of shape {tuple(shape)}", "cpu", per, "samples")
    validate.writable_dir(run_dir, "run directory")
    log = run_dir / METRICS_FILE
    if log.exists() and not validate.can_write(log):
        raise UserError(f"metrics log {str(log)!r} is not writable by this user; fix its permissions")


class _Reference:
    """The real side, computed on first use: cached FID statistics of the whole split, and the
    features of a fixed subset of real images for KID and precision/recall."""

    def __init__(self, cfg: Any, extractor: Any, log: LogFn) -> None:
        self.cfg, self.extractor, self.log = cfg, extractor, log
        self._dataset = None
        self._stats = None
        self._frechet = None
        self._real: dict[int, np.ndarray] = {}

    @property
    def dataset(self):
        if self._dataset is None:
            d = self.cfg.data
            self._dataset = dataset_from_config(d)
        return self._dataset

    @property
    def split(self) -> str:
        return str(self.cfg.data.split)

    @property
    def data_id(self) -> str:
        d = self.cfg.data
        return data_id(d.name, d.resolution, d.options, d.root, with_root=True)

    def stats(self):
        """RefStats over the whole split (from the cache when present)."""
        from .metrics import reference_stats

        if self._stats is None:
            t = time.perf_counter()
            self._stats = reference_stats(self.dataset, self.extractor, self.data_id, self.split)
            self.log(f"reference statistics {self.data_id}/{self.split} ({self._stats.n} images, "
                     f"{self.extractor.name}): {time.perf_counter() - t:.1f} s, {self._stats.path}")
        return self._stats

    def frechet(self):
        """The Frechet reference of :meth:`stats` (its covariance's square root is computed once)."""
        if self._frechet is None:
            self._frechet = self.stats().frechet()
        return self._frechet

    def features(self, m: int) -> np.ndarray:
        """(m', D) float64 features of m' = min(m, split size) real images chosen by a fixed permutation."""
        ds = self.dataset
        m = min(int(m), len(ds))
        if m not in self._real:
            perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:m]
            idx = perm.sort().values
            chunks = []
            for i in range(0, m, 1024):
                x, _ = ds.get_batch(idx[i:i + 1024])
                chunks.append(self.extractor.features(x.float()).double().numpy())
            self._real[m] = np.concatenate(chunks)
        return self._real[m]


def _likelihood_data(cfg: Any, m: int) -> tuple[Tensor, Tensor | None, str]:
    """min(m, split size) data points (with labels, or None) for the likelihood, chosen by the fixed
    permutation REAL_SUBSET_SEED: from the test split when the dataset has one (held-out data, as NLLs are
    reported), else from the split the run trained on. Returns (x, labels, split name)."""
    d = cfg.data
    try:
        ds, split = dataset_from_config(d, "test"), "test"
    except (UserError, OSError):
        ds, split = dataset_from_config(d), d.split
    m = min(int(m), len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:m].sort().values
    x, labels = ds.get_batch(idx)
    return x.float().cpu(), (labels.cpu() if labels is not None else None), str(split)


def _sample(denoiser: Any, shape: tuple[int, ...], seeds: list[int], *, sampler: str, grid: str, steps: int,
            cond: Tensor | None, options: dict[str, Any], clip: str, device: torch.device, progress: bool | None,
            log: LogFn, what: str) -> tuple[Tensor, int]:
    """generate() in chunks of SAMPLE_BATCH seeds (identical to one call: a sample depends on its seed alone) with
    progress reports: a tqdm bar (progress=True), log lines (None, when there are several chunks), or nothing."""
    chunks = [(i, seeds[i:i + SAMPLE_BATCH]) for i in range(0, len(seeds), SAMPLE_BATCH)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seeds), desc=what, unit="img", leave=False)
    outs, nfe = [], 0
    t = time.perf_counter()
    for i, chunk in chunks:
        c = cond[i:i + len(chunk)] if cond is not None else None
        x, nfe = generate(denoiser, shape, chunk, sampler=sampler, grid=grid, steps=steps, cond=c, options=options,
                          clip=clip, batch=SAMPLE_BATCH, device=device)
        outs.append(x)
        if bar is not None:
            bar.update(len(chunk))
        elif progress is None and len(chunks) > 1:
            log(f"{what}: {i + len(chunk)}/{len(seeds)} samples ({time.perf_counter() - t:.1f} s)")
    if bar is not None:
        bar.close()
    return torch.cat(outs), nfe


def default_noisy_classifier_dir(cfg: Any) -> Path:
    """``$DIFFATLAS_CACHE/noisy-classifiers/<dataset>/<dynamics>-<hash>``: where the default noise-aware
    classifier of classifier guidance lives. It depends only on the run's dataset variant and forward
    process (and the training recipe, guidance.NOISY_RECIPE), not on the run's network or seed, so
    every run of a study with the same data and process shares one classifier instead of training
    its own."""
    from .guidance.classifier import NOISY_RECIPE, _dynamics_record
    from .model import make_dynamics

    d = cfg.data
    record = {"dynamics": _dynamics_record(make_dynamics(cfg), cfg.dynamics.name), "recipe": NOISY_RECIPE,
              "split": d.split}
    digest = hashlib.sha256(json.dumps(_json_clean(record), sort_keys=True).encode()).hexdigest()[:12]
    return (cache_root() / "noisy-classifiers" / data_id(d.name, d.resolution, d.options, d.root, with_root=True)
            / f"{cfg.dynamics.name}-{digest}")


def _train_shared_noisy_classifier(run_dir: Path, final: Path, device: torch.device, log: LogFn) -> None:
    """Train the noise-aware classifier into `final` once: concurrent evaluations (study workers) wait
    for the first of them and then load the one it wrote."""
    from .guidance import train_noisy_classifier_for

    with build_once(final) as tmp:
        if tmp is not None:
            log(f"no guidance classifier given: training the noise-aware classifier of this dataset and process "
                f"into {final} (shared by every run with the same data and process)")
            train_noisy_classifier_for(run_dir, tmp, device=device, log=log)


def _guidance_classifier(run_dir: Path, cfg: Any, shape: tuple[int, ...], k: int | None, snapshot: Path,
                         classifier_dir: str | Path | None, device: torch.device, log: LogFn) -> tuple[Any, str]:
    """The noise-aware classifier of classifier guidance and its identity (weights hash). Default:
    RUN/noisy-classifier when a run has its own, else the shared one of its dataset and process
    (default_noisy_classifier_dir), trained there first when absent."""
    from .guidance import resolve_classifier
    from .metrics.extractors import state_dict_hash

    if classifier_dir is None:
        classifier_dir = run_dir / NOISY_CLASSIFIER_DIR
        if not classifier_dir.is_dir():
            if not k:
                raise UserError("classifier guidance needs a labelled dataset; this run's dataset has no classes")
            classifier_dir = default_noisy_classifier_dir(cfg)
            if not classifier_dir.is_dir():
                _train_shared_noisy_classifier(run_dir, classifier_dir, device, log)
    clf = resolve_classifier(RunInfo(cfg, shape, k, snapshot), classifier_dir, device)
    return clf, state_dict_hash(clf.state_dict())


def evaluate_run(
    run_dir: str | Path,
    *,
    metrics: str | Sequence[str] = ("fid", "is"),
    n: int = 1000,
    snapshots: str | float | Sequence[float] = "all",
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    options: dict[str, Any] | None = None,
    nfe: int | None = None,
    clip: str | None = None,
    guidance: str | None = None,
    classifier_dir: str | Path | None = None,
    extractor: str = "classifier",
    extractor_path: str | Path | None = None,
    seed: int = 0,
    n_boot: int = 0,
    likelihood: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    log: LogFn | None = print,
) -> list[dict[str, Any]]:
    """Evaluate chosen snapshots of a run with one evaluation setting; append to RUN/metrics.jsonl.

    Every snapshot (EMA weights) is sampled with per-sample seeds seed..seed+n-1 (images (n, C, H, W)
    in [-1, 1]); the extractor's features (n, D) and logits (n, K) are computed once per snapshot, in
    batches on `device`, and every metric is computed from them (see the module docstring for the
    reference side). Entries already in the log (same :data:`KEY_FIELDS`) are skipped, unless intervals
    are asked for (n_boot > 0) and the logged entry has fewer resamples: then a new line supersedes it.

    Args:
        run_dir: a run directory (config.yaml, dataset.json, snapshots/).
        metrics: METRICS names: fid, is, kid, pr (logged as precision and recall), class_accuracy, bpd.
            bpd is a model metric: the snapshot's own likelihood of min(n, split size) data points of the
            test split (else the training split) through the probability-flow ODE, with `likelihood`'s
            settings (metrics.likelihood.LikelihoodSettings); its entries carry the ODE solver in
            "sampler" and the settings in "options" instead of the sampling setting, which it ignores
            (and guidance), so one entry serves every sampling setting. It works on points too.
            class_accuracy needs class labels: a class-conditional run or guidance gets labels cycling
            0..K-1; an unconditional unguided run is logged against the same cycling labels, which its
            samples ignore (the chance baseline that guidance is compared with; "conditioned": false).
            It is skipped, with a note, when the dataset has no labels.
        n: generated samples per snapshot (>= 2).
        snapshots: see :func:`select_snapshots`.
        sampler, steps, grid, options, nfe: as for `diffatlas sample`; default to the run's sample config
            (sampling.run_plan); options are merged over the config's sample.options; nfe is a budget
            of denoiser evaluations that the sampler's own plan spends (instead of steps).
        clip: x0 clipping (samplers.clip); default the run's sample.clip ("auto": static for images).
            Entries record the resolved mode, the budget ("nfe_budget") and the NFE used ("nfe").
        guidance: "classifier:S" or "cfg:W" (guidance.parse_guidance_spec), or None.
        classifier_dir: noise-aware classifier for classifier guidance, or "untrained[:SEED]"; default
            RUN/noisy-classifier if the run has one, else the classifier shared by every run with the
            same dataset and process (default_noisy_classifier_dir; trained there when absent).
        extractor: "classifier" (the dataset's evaluation classifier) or "inception".
        extractor_path: the evaluation classifier's folder, or the Inception weights file.
        seed: first per-sample seed; also seeds the bootstrap and the KID subsets.
        n_boot: bootstrap resamples for 95% percentile intervals (0: none).
        likelihood: bpd settings (solver, rtol, atol, grid, steps, divergence, probes, probe, dequantization,
            max_nfe); defaults: rk45 at 1e-5, exact divergence up to 16 dimensions, else 1 Rademacher probe.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".
        progress: True: tqdm bar while sampling; None: progress lines through `log`; False: one line per snapshot.
        log: where progress lines go (None: silent).
    Returns:
        The entries of this setting for the chosen snapshots and metrics (logged earlier or now), by kimg.
    """
    from .guidance import make_guidance, parse_guidance_spec
    from .metrics import METRICS, MetricContext
    from .metrics.spec import yielded_by
    from .model import make_dynamics

    log = log or _quiet
    run_dir = Path(run_dir)
    requested = _check_metrics(metrics)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 2:
        raise UserError(f"n must be an integer number of samples >= 2, got {n!r}")
    n, seed = int(n), int(seed)
    if int(n_boot) < 0:
        raise UserError(f"the number of bootstrap resamples must be >= 0, got {n_boot}")
    n_boot = int(n_boot)
    # model metrics (bpd) read the snapshot's denoiser; the others the features of its samples
    model_metrics = [m for m in requested if METRICS.get(m).needs_model]
    feature_metrics = [m for m in requested if m not in model_metrics]
    if extractor not in ("classifier", "inception"):
        from .metrics import EXTRACTORS
        EXTRACTORS.get(extractor)
    cfg = read_run_config(run_dir)
    shape, k = _dataset_info(run_dir)
    if feature_metrics and len(shape) != 3:
        raise UserError(f"image metrics ({', '.join(feature_metrics)}) need an image dataset; this run's samples have "
                        f"shape {shape} (bpd works on any data)")
    chosen = select_snapshots(run_dir, snapshots)
    dyn = make_dynamics(cfg)
    lik_base: dict[str, Any] = {}
    if model_metrics:
        from .metrics.likelihood import LikelihoodSettings

        lik = LikelihoodSettings.from_options(likelihood).resolved(shape, dyn)
        heun = lik.solver == "heun"
        lik_base = {"sampler": lik.solver, "grid": lik.grid if heun else None, "steps": lik.steps if heun else None,
                    "options": _json_clean(lik.describe()), "guidance": None, "guidance_classifier": None, "n": n,
                    "seed": seed}
        if guidance:
            log("bpd ignores guidance: it is the likelihood of the model itself")
    setting = request_label(sampler, steps, nfe, grid, options, clip)
    plan = run_plan(cfg, dyn, sampler=sampler, steps=steps, grid=grid, options=options, nfe=nfe)
    sampler, grid, steps, opts = plan.sampler, plan.grid, plan.steps, plan.options
    clip = resolve_clip(clip or cfg.sample.clip, shape)
    parsed = parse_guidance_spec(guidance)
    guidance_label = f"{parsed[0]}:{parsed[1]:g}" if parsed else None
    dev = torch.device(validate.device(device))
    _check_request(run_dir, shape, n, seed)
    conditional = bool(cfg.network.conditional)
    if parsed is not None and parsed[0] == "cfg":  # fail before any work: cfg needs a conditional run
        make_guidance(RunInfo(cfg, shape, k if conditional else None), *parsed)

    ext = _load_extractor(extractor, cfg, extractor_path, dev, log) if feature_metrics else None
    labelled = k is not None
    use_labels = labelled and (conditional or parsed is not None)  # the sampler is told a class
    acc_ext = None  # the classifier that judges class accuracy
    label_metrics = [m for m in requested if METRICS.get(m).needs_labels]
    if label_metrics:
        if not labelled:
            log(f"{', '.join(label_metrics)} skipped: the run's dataset has no class labels")
            requested = [m for m in requested if m not in label_metrics]
        elif ext.name == "classifier" and ext.num_classes == k:
            acc_ext = ext
        else:
            d = cfg.data
            acc_ext = evaluation_classifier(d.name, root=d.root, resolution=d.resolution, options=d.options,
                                            device=dev, log=log)
        if acc_ext is not None and acc_ext.num_classes != k:
            raise UserError(f"the evaluation classifier has {acc_ext.num_classes} classes, the run's dataset {k}")
        if acc_ext is not None and not use_labels:
            log(f"{', '.join(label_metrics)} of an unconditional, unguided run: logged against labels cycling 0..K-1 that the "
                "sampler does not see (the chance baseline for guidance)")
    if not requested:
        return []

    gclf, gclf_id = None, None
    if parsed is not None and parsed[0] == "classifier":
        gclf, gclf_id = _guidance_classifier(run_dir, cfg, shape, k, chosen[-1][1], classifier_dir, dev, log)

    base = {"setting": setting, "sampler": sampler, "grid": grid, "steps": int(steps), "options": _json_clean(opts),
            "clip": clip, "nfe_budget": plan.nfe_budget, "guidance": guidance_label, "guidance_classifier": gclf_id,
            "n": n, "seed": seed}

    def key_for(kimg: float, name: str) -> tuple:
        if name in model_metrics:
            return entry_key({**lik_base, "kimg": kimg, "metric": name, "extractor": None, "extractor_hash": None})
        e = acc_ext if yielded_by(name).needs_labels else ext   # name: a record's metric (pr -> precision)
        return entry_key({**base, "kimg": kimg, "metric": name, "extractor": e.name, "extractor_hash": e.weights_hash})

    logged = {entry_key(e): e for e in read_metrics(run_dir)}

    def satisfied(key: tuple) -> bool:
        e = logged.get(key)
        return e is not None and (n_boot == 0 or int(e.get("n_boot") or 0) >= n_boot)

    seeds = list(range(seed, seed + n))
    labels = (torch.arange(n) % k) if labelled else None  # (n,) requested classes, cycling 0..K-1
    reference = _Reference(cfg, ext, log)
    lik_data = None  # (x, labels, split) of the likelihood, loaded on first use
    results: list[dict[str, Any]] = []

    def _feature_records(run: Any, pending: list[str], what: str) -> tuple[list[dict[str, Any]], int, float, Tensor]:
        """Sample the snapshot with this setting; the records of the feature metrics in `pending`, and the samples."""
        recs: list[dict[str, Any]] = []
        start = time.perf_counter()
        den = run.denoiser
        if parsed is not None:
            den = make_guidance(run, parsed[0], parsed[1], classifier=gclf, device=dev)(den)
        x, nfe = _sample(den, run.shape, seeds, sampler=sampler, grid=grid, steps=int(steps),
                         cond=labels if use_labels else None, options=opts, clip=clip, device=dev,
                         progress=progress, log=log, what=f"sampling {what}")
        sample_s = time.perf_counter() - start
        del den
        if not torch.isfinite(x).all():
            log(f"{what}: {int((~torch.isfinite(x)).flatten(1).any(1).sum())} of {n} samples are not finite; "
                "they are clamped to [-1, 1] for the metrics")
            x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        x = x.clamp(-1, 1)  # the images a PNG would hold (values outside [-1, 1] are not pixels)
        feats, logits = ext.features_and_logits(x)
        needs_stats = any(not METRICS.get(p).needs_labels for p in pending)
        ref = reference.stats() if needs_stats else None
        real_feats = None
        if any(METRICS.get(m).needs_real_features for m in pending):
            real_feats = reference.features(n)
        # KID averages MMD^2 over random subsets of m = min(1000, n, n_real) per side (Binkowski et al. 2018,
        # app. D); when m covers both sides every subset is the whole set, and one subset gives the same value
        full = real_feats is not None and min(1000, n, real_feats.shape[0]) == n == real_feats.shape[0]
        ctx_opts = {"is_splits": min(10, n), "kid_subsets": 1 if full else 100, "kid_subset_size": 1000, "pr_k": 3,
                    "labels": labels.numpy() if labels is not None else None}
        for m in pending:
            spec = METRICS.get(m)
            if spec.needs_labels:  # judged by the dataset's evaluation classifier, against the requested classes
                acc_logits = logits if acc_ext is ext else acc_ext.logits(x)
                ctx = MetricContext(fake_features=feats.double().numpy(), fake_logits=acc_logits.double().numpy(),
                                    real_features=None, reference=None, n_real=0, extractor=acc_ext,  # type: ignore[arg-type]
                                    n_boot=n_boot, seed=seed, alpha=0.05, options=ctx_opts)
            else:
                ctx = MetricContext(fake_features=feats.double().numpy(), fake_logits=logits.double().numpy(),
                                    real_features=real_feats, reference=reference.frechet(), n_real=ref.n, extractor=ext,
                                    n_boot=n_boot, seed=seed, alpha=0.05, options=ctx_opts)
            for rec in spec(ctx):
                if spec.needs_real_features:
                    rec["n_real"] = int(real_feats.shape[0])
                    rec["real"] = f"{real_feats.shape[0]} images of {reference.data_id}/{reference.split}"
                elif spec.needs_labels:
                    rec["n_real"] = 0
                    rec["conditioned"] = use_labels
                    rec["labels"] = "cycling 0..K-1"
                    if not use_labels:
                        rec["what"] += ("; unconditional sampling: the labels were not given to the sampler, so this"
                                        " is the chance baseline that guided sampling is compared with")
                else:
                    rec["real"] = f"statistics of {reference.data_id}/{reference.split}"
                recs.append(rec)
        return recs, nfe, sample_s, x

    for i, (kimg, snap) in enumerate(chosen):
        pending = [m for m in requested if not all(satisfied(key_for(kimg, p)) for p in METRICS.get(m).produces)]
        if not pending:
            results.extend(logged[key_for(kimg, p)] for m in requested for p in METRICS.get(m).produces)
            continue
        start = time.perf_counter()
        what = f"kimg {kimg:g} ({i + 1}/{len(chosen)})"
        run = load_run(run_dir, kimg, device=dev)
        recs: list[dict[str, Any]] = []
        nfe, sample_s, x = None, 0.0, None
        feature_pending = [m for m in pending if m not in model_metrics]
        if feature_pending:
            recs, nfe, sample_s, x = _feature_records(run, feature_pending, what)
        for m in pending:
            if m not in model_metrics:
                continue
            if lik_data is None:
                lik_data = _likelihood_data(cfg, n)
            xs, ys, split = lik_data
            for rec in METRICS.get(m)(run.denoiser, xs, ys if run.num_classes else None, settings=lik, seed=seed,
                                      n_boot=n_boot, batch=SAMPLE_BATCH, device=dev,
                                      log=log if progress is not False else None):
                rec.pop("likelihood")  # the settings are the entry's options
                rec.update(_setting=lik_base, extractor=None, weights_hash=None, n_real=rec.pop("n"), seeds=None,
                           reference_split=split, real=f"{xs.shape[0]} data points of {reference.data_id}/{split}")
                recs.append(rec)
        del run
        wall = time.perf_counter() - start
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        path = run_dir / METRICS_FILE
        lines = []
        for rec in recs:
            e_name = rec.pop("extractor")
            e_hash = rec.pop("weights_hash")
            setting = rec.pop("_setting", base)  # a model metric's own setting replaces the sampling setting
            entry = {"kimg": kimg, "snapshot": snap.name, "metric": rec.pop("metric"), "value": rec.pop("value"),
                     "interval": rec.pop("interval"), **setting, "n_real": rec.pop("n_real"), "extractor": e_name,
                     "extractor_hash": e_hash, "nfe": nfe, "seeds": [seed, seed + n - 1], "ema": True,
                     "dataset": reference.data_id, "reference_split": reference.split,
                     "wall_s": round(wall, 3), "sample_s": round(sample_s, 3), "time": stamp, **rec}
            if e_name == "classifier":
                e_obj = acc_ext if yielded_by(entry["metric"]).needs_labels else ext
                entry["extractor_accuracy"] = getattr(e_obj, "info", {}).get("test_accuracy")
            entry = _json_clean(entry)
            lines.append(entry)
        for entry in lines:  # all metrics of the snapshot are known: now log them
            append_jsonl(path, entry)
            logged[entry_key(entry)] = entry
        log_evaluation(run_dir, cfg.train.tensorboard, kimg, lines, x)
        results.extend(logged[key_for(kimg, p)] for m in requested for p in METRICS.get(m).produces)
        log(f"evaluated {what}: " + "  ".join(f"{e['metric']} {e['value']:.4g}" for e in lines if e["value"] is not None)
            + f"  ({'' if nfe is None else f'NFE {nfe}, '}{wall:.1f} s)")
    return results


# ------------------------------------------------------------------------------------------------
# curves and the sample-size analysis
# ------------------------------------------------------------------------------------------------
def setting_label(entry: dict[str, Any], with_n: bool = False) -> str:
    """'sampler xSTEPS grid [guidance] [options] [n=N]' of an entry: one curve per label."""
    label = f"{entry.get('sampler')} x{entry.get('steps')} {entry.get('grid')}"
    if entry.get("guidance"):
        label += f" {entry['guidance']}"
    if entry.get("options"):
        label += " " + ",".join(f"{k}={v}" for k, v in sorted(entry["options"].items()))
    if with_n:
        label += f" n={entry.get('n')}"
    return label


def metric_curves(run_dir: str | Path, metric: str = "fid") -> dict[str, list[dict[str, Any]]]:
    """{setting label: entries of `metric` sorted by kimg} from RUN/metrics.jsonl (deduplicated).
    Settings that differ in n, extractor or seed get n / extractor / seed in their label."""
    entries = [e for e in read_metrics(run_dir) if e.get("metric") == metric and e.get("value") is not None]
    many_n = len({e.get("n") for e in entries}) > 1
    many_ext = len({(e.get("extractor"), e.get("extractor_hash")) for e in entries}) > 1
    many_seed = len({e.get("seed") for e in entries}) > 1
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        label = setting_label(e, with_n=many_n)
        if many_ext:
            label += f" {e.get('extractor')}:{str(e.get('extractor_hash'))[:6]}"
        if many_seed:
            label += f" seed={e.get('seed')}"
        out.setdefault(label, []).append(e)
    for v in out.values():
        v.sort(key=lambda e: float(e["kimg"]))
    return out


def plot_curves(run_dir: str | Path, metric: str = "fid", out: str | Path | None = None) -> Path:
    """Plot `metric` against kimg, one line per evaluation setting, with bootstrap bands where logged.
    Writes a PNG (matplotlib Agg) to `out` (default RUN/curves-<metric>.png) and returns its path."""
    curves = metric_curves(run_dir, metric)
    if not curves:
        have = sorted({e.get("metric") for e in read_metrics(run_dir)})
        raise UserError(f"run {str(run_dir)!r} has no {metric!r} entries in {METRICS_FILE}"
                        + (f"; it has: {', '.join(map(str, have))}" if have else "; run `diffatlas evaluate` first"))
    path = Path(out) if out is not None else Path(run_dir) / f"curves-{metric}.png"
    validate.figure_path(path, "curves plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"text.parse_math": False}):  # labels hold user strings: '$' is not math here
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for label, es in curves.items():
            ks = [float(e["kimg"]) for e in es]
            vs = [float(e["value"]) for e in es]
            (line,) = ax.plot(ks, vs, marker="o", ms=3, label=label)
            iv = [e.get("interval") for e in es]
            if all(isinstance(v, list) and len(v) == 2 and None not in v for v in iv):
                ax.fill_between(ks, [v[0] for v in iv], [v[1] for v in iv], color=line.get_color(), alpha=0.2)
        hib = next(iter(curves.values()))[0].get("higher_is_better")
        better = "" if hib is None else (" (higher is better)" if hib else " (lower is better)")
        ax.set(xlabel="training images seen (kimg)", ylabel=f"{metric}{better}",
               title=f"{metric} over training: {Path(run_dir).name}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


SAMPLE_SIZE_METRICS = ("fid", "is", "kid")


def sample_size_run(
    run_dir: str | Path,
    *,
    metrics: str | Sequence[str] = ("fid", "is"),
    ns: Sequence[int] = (100, 200, 500, 1000),
    n_boot: int = 20,
    snapshot: str | float = "last",
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    options: dict[str, Any] | None = None,
    nfe: int | None = None,
    clip: str | None = None,
    extractor: str = "classifier",
    extractor_path: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    progress: bool | None = None,
    log: LogFn | None = print,
) -> dict[str, Any]:
    """"Is IS less sensitive to the number of samples than FID?" on one snapshot of a run.

    Samples max(ns) images (seeds seed..), then measures each metric on nested random subsets of
    size n in ns with percentile-bootstrap intervals (metrics.sample_size.sample_size_table; IS with
    10 splits, so every n >= 10), and FID-infinity (Chong & Forsyth 2020). Writes a PNG (|relative
    change| against the largest n, and relative interval width, per metric), the rows as JSON and a
    Markdown table next to it (default RUN/sample-size/sample-size-<kimg>-<sampler>-<steps>.png).

    Returns:
        {"rows", "summary" (mean |relative change| per metric: smaller = less sensitive), "verdict",
        "kimg", "png", "json", "md", "sampler", "grid", "steps", "nfe", "extractor", "extractor_hash"}.
    """
    from .metrics.sample_size import plot_sample_size, sample_size_table, sensitivity_summary
    from .model import make_dynamics

    log = log or _quiet
    run_dir = Path(run_dir)
    names = _check_metrics(metrics)
    bad = [m for m in names if m not in SAMPLE_SIZE_METRICS]
    if bad:
        raise UserError(f"the sample-size analysis covers {', '.join(SAMPLE_SIZE_METRICS)}; not {', '.join(bad)}")
    try:
        ns = sorted({int(v) for v in ns})
    except (TypeError, ValueError):
        raise UserError(f"sample counts must be integers, got {ns!r}") from None
    if not ns or ns[0] < 10:
        raise UserError(f"sample counts must be integers >= 10 (IS uses 10 splits), got {ns}")
    if int(n_boot) < 0:
        raise UserError(f"the number of bootstrap resamples must be >= 0, got {n_boot}")
    cfg = read_run_config(run_dir)
    shape, _ = _dataset_info(run_dir)
    if len(shape) != 3:
        raise UserError(f"image metrics need an image dataset; this run's samples have shape {shape}")
    kimg, snap = select_snapshots(run_dir, snapshot)[-1]
    plan = run_plan(cfg, make_dynamics(cfg), sampler=sampler, steps=steps, grid=grid, options=options, nfe=nfe)
    sampler, grid, steps, opts = plan.sampler, plan.grid, plan.steps, plan.options
    clip = resolve_clip(clip or cfg.sample.clip, shape)
    dev = torch.device(validate.device(device))
    validate.seeds(seed, ns[-1], "seed")
    per = 4 * math.prod(shape) * 3
    validate.memory(per * ns[-1], f"{ns[-1]} samples of shape {tuple(shape)}", "cpu", per, "samples")
    if out is not None:
        validate.figure_path(out, "output plot")
    else:
        validate.writable_dir(run_dir, "run directory")
    ext = _load_extractor(extractor, cfg, extractor_path, dev, log)
    n_max = ns[-1]
    run = load_run(run_dir, kimg, device=dev)
    x, nfe = _sample(run.denoiser, run.shape, list(range(int(seed), int(seed) + n_max)), sampler=sampler, grid=grid,
                     steps=int(steps), cond=(torch.arange(n_max) % run.num_classes) if run.num_classes else None,
                     options=opts, clip=clip, device=dev, progress=progress, log=log, what=f"sampling kimg {kimg:g}")
    del run
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    feats, logits = ext.features_and_logits(x)
    reference = _Reference(cfg, ext, log)
    ref = reference.stats()
    real = reference.features(n_max) if "kid" in names else None
    rows = sample_size_table(feats, logits, ref.frechet(), ns, real_features=real, n_boot=int(n_boot), seed=int(seed),
                             is_splits=10)
    keep = set(names) | ({"fid_infinity"} if "fid" in names else set())
    rows = [_json_clean(r) for r in rows if r["metric"] in keep]
    summary = sensitivity_summary(rows)
    if "fid" in summary and "is" in summary:
        less = summary["is"] < summary["fid"]
        verdict = (f"IS is {'less' if less else 'not less'} sensitive to the number of samples than FID: mean "
                   f"|relative change| against n={n_max}: IS {summary['is']:.4f}, FID {summary['fid']:.4f}")
    else:
        verdict = f"mean |relative change| against n={n_max}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
    png = Path(out) if out is not None else run_dir / "sample-size" / f"sample-size-{kimg:g}-{sampler}-{steps}.png"
    title = f"{run_dir.name} at kimg {kimg:g}: {sampler} x{steps}, {ext.name} features"
    plot_sample_size(rows, png, title=title)
    result = {"run": str(run_dir), "kimg": kimg, "snapshot": snap.name, "sampler": sampler, "grid": grid,
              "steps": int(steps), "options": _json_clean(opts), "clip": clip, "nfe": int(nfe),
              "nfe_budget": plan.nfe_budget, "seed": int(seed), "ns": ns,
              "n_boot": int(n_boot), "extractor": ext.name, "extractor_hash": ext.weights_hash,
              "dataset": reference.data_id, "reference_split": reference.split, "n_real": ref.n,
              "rows": rows, "summary": summary, "verdict": verdict}
    json_path, md_path = png.with_suffix(".json"), png.with_suffix(".md")
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, sample_size_markdown(result))
    result.update({"png": str(png), "json": str(json_path), "md": str(md_path)})
    return result


def sample_size_markdown(result: dict[str, Any]) -> str:
    """A Markdown table of sample_size_run's rows: metric, n, value, interval, relative change/width."""
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    setting = (f"{result['sampler']} x{result['steps']} ({result['grid']} grid, NFE {result['nfe']}, x0 clip "
               f"{result.get('clip', 'not recorded')}), {result['extractor']} features "
               f"({result['extractor_hash']}), reference {result['dataset']}/{result['reference_split']} "
               f"({result['n_real']} images), {result['n_boot']} bootstrap resamples.")
    lines = [f"# Sample size: {result['run']} at kimg {result['kimg']:g}", "", setting, "",
             "| metric | n | value | 95% interval | rel. change vs largest n | rel. interval width |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for r in result["rows"]:
        iv = "-" if r.get("low") is None else f"[{f(r['low'])}, {f(r['high'])}]"
        lines.append(f"| {r['metric']} | {f(r.get('n'))} | {f(r.get('value'))} | {iv} | {f(r.get('rel_change'))} | "
                     f"{f(r.get('rel_width'))} |")
    lines += ["", result["verdict"], ""]
    return "\n".join(lines)
