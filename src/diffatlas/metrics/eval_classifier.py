"""The evaluation classifier of a dataset: the feature extractor of FID/IS and the judge of class
accuracy at this scale. A small CNN (metrics.extractors) trained on the labelled train split and
cached under ``$DIFFATLAS_CACHE/classifiers/<dataset>-<resolution>`` (data_id), built once when
concurrent evaluations ask for it (io.build_once).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..data import load_dataset
from ..errors import UserError
from ..io import build_once, cache_root, json_clean
from .extractors import load_classifier, save_classifier, train_classifier

LogFn = Callable[[str], Any]


# CPU threads of the evaluation classifier's training (see train_eval_classifier): the count the
# committed results' classifiers were trained with.
TRAIN_THREADS = 2

def _quiet(_: str) -> None:
    return None


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
        label += "-" + hashlib.sha256(json.dumps(json_clean(extra), sort_keys=True).encode()).hexdigest()[:8]
    return label


def default_classifier_dir(name: str, resolution: int | None = None, options: dict[str, Any] | None = None) -> Path:
    """``$DIFFATLAS_CACHE/classifiers/<dataset>-<resolution>`` (or under ~/.cache/diffatlas): where the
    evaluation classifier of a dataset variant lives. resolution None/0 means the native size."""
    return cache_root() / "classifiers" / data_id(name, resolution, options)


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
    # The classifier defines FID and IS, so its weights must not depend on who trains it: on the CPU the
    # order of a parallel reduction follows torch's thread count (a study worker runs at cores // workers,
    # `diffatlas train-classifier` at all cores), so training always runs at TRAIN_THREADS threads.
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(TRAIN_THREADS)
    try:
        ext, info = train_classifier(x, y, xt, yt, epochs=int(epochs), batch_size=batch_size, lr=lr, seed=seed,
                                     device=dev, dataset=dataset, num_classes=int(train_set.num_classes))
    finally:
        torch.set_num_threads(threads)
    info.update({"resolution": resolution, "root": root, "options": opts, "test_split": test_split,
                 "data_id": data_id(dataset, resolution, opts), "device": dev.type,
                 "threads": TRAIN_THREADS if dev.type == "cpu" else None})
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
