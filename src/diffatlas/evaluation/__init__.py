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

Resuming: a line is identified by :data:`log.KEY_FIELDS`; entries already in the log are not computed
again, and a snapshot's lines are appended (with fsync) only after all of its metrics are known, so
an evaluation killed mid-way resumes where it stopped without duplicates. Readers deduplicate by
the same key, the last line winning (:func:`log.read_metrics`).

Extractors: "classifier" is the evaluation classifier of the run's dataset (a small CNN trained on
the labelled train split, :mod:`diffatlas.metrics.eval_classifier`), trained once and cached under
``$DIFFATLAS_CACHE/classifiers/<dataset>-<resolution>`` (default ``~/.cache/diffatlas``) when absent;
"inception" is the FID Inception-v3 (local weights only).

The ``bpd`` metric is the snapshot's own likelihood of held-out data (test split) through the
probability-flow ODE (:mod:`diffatlas.metrics.likelihood`); it needs no samples and no extractor, and
its entries name the ODE solver and the estimator settings where sampling entries name the sampler.

The package, in the order an evaluation runs: :mod:`.run` (evaluate_run: resolve the setting, then
per snapshot sample -> features -> metrics -> append), :mod:`.inputs` (extractor, real side,
likelihood data, sampling), :mod:`.noisy` (the guidance classifier), :mod:`.log` (the log and
snapshot choice), :mod:`.curves` (metric against kimg), :mod:`.sample_size` (IS vs FID against n, on
the same set-up).
"""

from .curves import metric_curves, plot_curves, setting_label
from .inputs import REAL_SUBSET_SEED, SAMPLE_BATCH
from .log import KEY_FIELDS, SNAPSHOTS_HELP, entry_key, read_metrics, select_snapshots
from .noisy import NOISY_CLASSIFIER_DIR, default_noisy_classifier_dir
from .run import evaluate_run
from .sample_size import SAMPLE_SIZE_METRICS, sample_size_markdown, sample_size_run

__all__ = ["KEY_FIELDS", "NOISY_CLASSIFIER_DIR", "REAL_SUBSET_SEED", "SAMPLE_BATCH", "SAMPLE_SIZE_METRICS",
           "SNAPSHOTS_HELP", "default_noisy_classifier_dir", "entry_key", "evaluate_run", "metric_curves",
           "plot_curves", "read_metrics", "sample_size_markdown", "sample_size_run", "select_snapshots",
           "setting_label"]
