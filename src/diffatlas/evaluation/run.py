"""evaluate_run: one evaluation setting over a run's chosen snapshots, appended to RUN/metrics.jsonl.

For each snapshot: sample (inputs.sample_images) -> features -> every metric of the registry that
was asked for -> append the snapshot's entries together (log.KEY_FIELDS identifies one; entries
already logged are not computed again)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import validate
from ..errors import UserError
from ..guidance import make_guidance, parse_guidance_spec
from ..io import append_jsonl, atomic_write_json, json_clean
from ..metrics import METRICS, EXTRACTORS, MetricContext
from ..metrics.eval_classifier import evaluation_classifier
from ..metrics.likelihood import LikelihoodSettings
from ..metrics.spec import yielded_by
from ..model import make_dynamics
from ..rundir import METRICS_FILE, RunDir, RunInfo
from ..samplers.clip import resolve_clip
from ..samplers.plan import request_label
from ..sampling import load_run, read_run_config, run_plan, save_image_grid
from ..tensorboard_log import log_evaluation
from .inputs import SAMPLE_BATCH, Reference, likelihood_data, load_extractor, sample_images
from .log import entry_key, read_metrics, select_snapshots
from .noisy import guidance_classifier

LogFn = Callable[[str], Any]


def _quiet(_: str) -> None:
    return None


def check_metrics(metrics: str | Iterable[str]) -> list[str]:
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if str(m).strip()]
    if not names:
        raise UserError(f"no metric given; choose from: {', '.join(METRICS.names())}")
    for m in names:
        METRICS.get(m)  # UnknownNameError (one line) for a name that is not a metric
    return list(dict.fromkeys(names))


def dataset_info(run_dir: Path) -> tuple[tuple[int, ...], int | None]:
    d = RunDir(run_dir).dataset()
    return d.shape, d.num_classes


def check_request(run_dir: Path, shape: tuple[int, ...], n: int, seed: int) -> None:
    """Before any work: the seeds seed..seed+n-1 are valid, n samples fit in memory, the log can be written."""
    validate.seeds(seed, n, "seed")
    per = 4 * math.prod(shape) * 3  # the samples, their clamped copy and a chunk of features
    validate.memory(per * n, f"{n} samples of shape {tuple(shape)}", "cpu", per, "samples")
    validate.writable_dir(run_dir, "run directory")
    log = run_dir / METRICS_FILE
    if log.exists() and not validate.can_write(log):
        raise UserError(f"metrics log {str(log)!r} is not writable by this user; fix its permissions")


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
    sample_grid: int = 16,
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
        sample_grid: the first min(sample_grid, n) samples of every snapshot it samples are written as a PNG
            grid, RUN/samples/eval-kimg<k>-seed<seed>-<setting>.png (RunDir.eval_grid_path), with a .json of
            what drew them; reports show these instead of sampling networks (0: none).
        likelihood: bpd settings (solver, rtol, atol, grid, steps, divergence, probes, probe, dequantization,
            max_nfe); defaults: rk45 at 1e-5, exact divergence up to 16 dimensions, else 1 Rademacher probe.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".
        progress: True: tqdm bar while sampling; None: progress lines through `log`; False: one line per snapshot.
        log: where progress lines go (None: silent).
    Returns:
        The entries of this setting for the chosen snapshots and metrics (logged earlier or now), by kimg.
    """
    log = log or _quiet
    run_dir = Path(run_dir)
    requested = check_metrics(metrics)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 2:
        raise UserError(f"n must be an integer number of samples >= 2, got {n!r}")
    n, seed = int(n), int(seed)
    if int(n_boot) < 0:
        raise UserError(f"the number of bootstrap resamples must be >= 0, got {n_boot}")
    n_boot = int(n_boot)
    if isinstance(sample_grid, bool) or not isinstance(sample_grid, (int, np.integer)) or int(sample_grid) < 0:
        raise UserError(f"sample_grid must be a number of samples >= 0 (0: no grid), got {sample_grid!r}")
    # model metrics (bpd) read the snapshot's denoiser; the others the features of its samples
    model_metrics = [m for m in requested if METRICS.get(m).needs_model]
    feature_metrics = [m for m in requested if m not in model_metrics]
    if extractor not in ("classifier", "inception"):
        EXTRACTORS.get(extractor)
    cfg = read_run_config(run_dir)
    shape, k = dataset_info(run_dir)
    if feature_metrics and len(shape) != 3:
        raise UserError(f"image metrics ({', '.join(feature_metrics)}) need an image dataset; this run's samples have "
                        f"shape {shape} (bpd works on any data)")
    chosen = select_snapshots(run_dir, snapshots)
    dyn = make_dynamics(cfg)
    lik_base: dict[str, Any] = {}
    if model_metrics:
        lik = LikelihoodSettings.from_options(likelihood).resolved(shape, dyn)
        heun = lik.solver == "heun"
        lik_base = {"sampler": lik.solver, "grid": lik.grid if heun else None, "steps": lik.steps if heun else None,
                    "options": json_clean(lik.describe()), "guidance": None, "guidance_classifier": None, "n": n,
                    "seed": seed}
        if guidance:
            log("bpd ignores guidance: it is the likelihood of the model itself")
    setting = request_label(sampler, steps, nfe, grid, options, clip)
    plan = run_plan(cfg, dyn, sampler=sampler, steps=steps, grid=grid, options=options, nfe=nfe)
    sampler, grid, steps, opts = plan.sampler, plan.grid, plan.steps, plan.options
    clip = resolve_clip(clip or cfg.sample.clip, shape)
    parsed = parse_guidance_spec(guidance)
    guidance_label = f"{parsed[0]}:{parsed[1]:g}" if parsed else None
    grid_label = f"{setting} {guidance_label}" if guidance_label else setting
    dev = torch.device(validate.device(device))
    check_request(run_dir, shape, n, seed)
    conditional = bool(cfg.network.conditional)
    if parsed is not None and parsed[0] == "cfg":  # fail before any work: cfg needs a conditional run
        make_guidance(RunInfo(cfg, shape, k if conditional else None), *parsed)

    ext = load_extractor(extractor, cfg, extractor_path, dev, log) if feature_metrics else None
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
        gclf, gclf_id = guidance_classifier(run_dir, cfg, shape, k, chosen[-1][1], classifier_dir, dev, log)

    base = {"setting": setting, "sampler": sampler, "grid": grid, "steps": int(steps), "options": json_clean(opts),
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
    reference = Reference(cfg, ext, log)
    lik_data = None  # (x, labels, split) of the likelihood, loaded on first use
    results: list[dict[str, Any]] = []

    def _feature_records(run: Any, pending: list[str], what: str) -> tuple[list[dict[str, Any]], int, float, Tensor]:
        """Sample the snapshot with this setting; the records of the feature metrics in `pending`, and the samples."""
        recs: list[dict[str, Any]] = []
        start = time.perf_counter()
        den = run.denoiser
        if parsed is not None:
            den = make_guidance(run, parsed[0], parsed[1], classifier=gclf, device=dev)(den)
        x, nfe = sample_images(den, run.shape, seeds, sampler=sampler, grid=grid, steps=int(steps),
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
                lik_data = likelihood_data(cfg, n)
            xs, ys, split = lik_data
            for rec in METRICS.get(m)(run.denoiser, xs, ys if run.num_classes else None, settings=lik, seed=seed,
                                      n_boot=n_boot, batch=SAMPLE_BATCH, device=dev,
                                      log=log if progress is not False else None):
                rec.pop("likelihood")  # the settings are the entry's options
                rec.update(_setting=lik_base, extractor=None, weights_hash=None, n_real=rec.pop("n"), seeds=None,
                           reference_split=split, real=f"{xs.shape[0]} data points of {reference.data_id}/{split}")
                recs.append(rec)
        del run
        if x is not None and sample_grid > 0:  # before the entries: a logged snapshot has its grid
            write_eval_grid(RunDir(run_dir), x[:sample_grid], kimg=kimg, snapshot=snap.name, label=grid_label,
                            seed=seed, fields={**base, "nfe": nfe, "conditioned": use_labels})
        wall = time.perf_counter() - start
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        path = run_dir / METRICS_FILE
        lines = []
        for rec in recs:
            e_name = rec.pop("extractor")
            e_hash = rec.pop("weights_hash")
            fields = rec.pop("_setting", base)  # a model metric's own setting replaces the sampling setting
            entry = {"kimg": kimg, "snapshot": snap.name, "metric": rec.pop("metric"), "value": rec.pop("value"),
                     "interval": rec.pop("interval"), **fields, "n_real": rec.pop("n_real"), "extractor": e_name,
                     "extractor_hash": e_hash, "nfe": nfe, "seeds": [seed, seed + n - 1], "ema": True,
                     "dataset": reference.data_id, "reference_split": reference.split,
                     "wall_s": round(wall, 3), "sample_s": round(sample_s, 3), "time": stamp, **rec}
            if e_name == "classifier":
                e_obj = acc_ext if yielded_by(entry["metric"]).needs_labels else ext
                entry["extractor_accuracy"] = getattr(e_obj, "info", {}).get("test_accuracy")
            entry = json_clean(entry)
            lines.append(entry)
        for entry in lines:  # all metrics of the snapshot are known: now log them
            append_jsonl(path, entry)
            logged[entry_key(entry)] = entry
        log_evaluation(run_dir, cfg.train.tensorboard, kimg, lines, x)
        results.extend(logged[key_for(kimg, p)] for m in requested for p in METRICS.get(m).produces)
        log(f"evaluated {what}: " + "  ".join(f"{e['metric']} {e['value']:.4g}" for e in lines if e["value"] is not None)
            + f"  ({'' if nfe is None else f'NFE {nfe}, '}{wall:.1f} s)")
    return results


def write_eval_grid(run: RunDir, x: Tensor, *, kimg: float, snapshot: str, label: str, seed: int,
                    fields: dict[str, Any]) -> Path:
    """The sample grid of one evaluated snapshot and setting (x: its first samples, seeds seed, seed+1, ...)
    and, beside it, a .json of what drew it; the .json is written last, so a grid with one is complete."""
    path = run.eval_grid_path(kimg, seed, label)
    save_image_grid(x, path)
    k = int(x.shape[0])
    meta = {"what": f"the first {k} samples of the evaluation of snapshot kimg {kimg:g} with setting {label!r}",
            "kimg": kimg, "snapshot": snapshot, "label": label, **fields, "n_evaluated": fields.get("n"), "n": k,
            "seeds": [seed, seed + k - 1], "labels": "cycling 0..K-1" if fields.get("conditioned") else None}
    atomic_write_json(path.with_suffix(".json"), json_clean(meta))
    return path
