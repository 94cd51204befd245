"""The dataset's own classifier as a feature extractor: :class:`SmallCNN`, trained on the data set's
labels (:func:`train_classifier`), wrapped as :class:`ClassifierExtractor` (penultimate-layer features,
softmax logits), and saved or loaded without pickle (:func:`save_classifier`, :func:`load_classifier`).

The only extractor for small images (8x8 digits, 28x28 Fashion-MNIST) that stays meaningful and runs on
a CPU; ``extractors.py`` registers it as ``classifier`` and re-exports every name of this module.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..io import read_saved_module, write_saved_module
from .extractor_base import FeatureExtractor, state_dict_hash

CLASSIFIER_WEIGHTS = "model.safetensors"
CLASSIFIER_META = "classifier.json"
CLASSIFIER_FORMAT = "diffatlas-classifier-v1"


# ------------------------------------------------------------------------------------------------
# A small CNN classifier trained on the data set's labels
# ------------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Four 3x3 conv layers and two linear layers; inputs (N, C, H, W) with 8 <= H, W <= 64.

    conv-conv at full resolution, adaptive average pooling to 8x8 (identity for 8x8 digits),
    conv, 2x2 max-pool to 4x4, conv, flatten, linear -> ReLU features (feature_dim), linear -> logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 8,
        width: int = 32,
        feature_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if not 8 <= image_size <= 64:
            raise UserError(f"the classifier takes images from 8x8 to 64x64, got {image_size}x{image_size}")
        self.kwargs = {
            "in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
            "width": width, "feature_dim": feature_dim, "dropout": dropout,
        }
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(8),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * w * 16, feature_dim), nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.body(x)
        return f, self.head(self.drop(f))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]


class ClassifierExtractor(FeatureExtractor):
    """Penultimate features (feature_dim, post-ReLU) and logits of a trained :class:`SmallCNN`.

    Args:
        net: the trained network (its weights are frozen here).
        dataset: the data set it was trained on (recorded, not checked).
        info: training record (test accuracy, ...), kept as ``self.info``.
    """

    name = "classifier"

    def __init__(self, net: SmallCNN, dataset: str = "unknown", info: dict[str, Any] | None = None,
                 batch_size: int = 512) -> None:
        super().__init__()
        self.net = net
        self.dataset = dataset
        self.info = dict(info or {})
        self.batch_size = batch_size
        self.arch = dict(net.kwargs)
        self.feature_dim = int(self.arch["feature_dim"])
        self.num_classes = int(self.arch["num_classes"])
        self.requires_grad_(False)
        self.train(False)
        self.weights_hash = state_dict_hash(net.state_dict())

    def _check(self, x: Tensor) -> None:
        super()._check(x)
        c, s = self.arch["in_channels"], self.arch["image_size"]
        if tuple(x.shape[1:]) != (c, s, s):
            raise UserError(
                f"this classifier was trained on {c}x{s}x{s} images ({self.dataset}); got {tuple(x.shape[1:])}"
            )

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.forward_features(x)


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, replicating the border.

    x: (N, C, H, W) -> (N, C, H, W)."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None]).to(x.device)  # (N, H)
    cols = (torch.arange(w)[None, :] + dx[:, None]).to(x.device)  # (N, W)
    ni = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]


@torch.no_grad()
def _accuracy(net: SmallCNN, x: Tensor, y: Tensor, device: torch.device, batch: int = 1024) -> float:
    net.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        pred = net(x[i : i + batch].to(device)).argmax(1).cpu()
        correct += int((pred == y[i : i + batch]).sum())
    return correct / max(1, x.shape[0])


def _check_xy(x: Tensor, y: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise UserError(f"{what} images must be a tensor shaped (N, C, S, S), got {getattr(x, 'shape', x)}")
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],):
        raise UserError(f"{what} labels must be a tensor shaped ({x.shape[0]},)")


def train_classifier(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_shift: int | None = None,
    dataset: str = "unknown",
    width: int = 32,
    feature_dim: int = 128,
    num_classes: int | None = None,
) -> tuple[ClassifierExtractor, dict[str, Any]]:
    """Train a :class:`SmallCNN` on labelled images and wrap it as a :class:`ClassifierExtractor`.

    AdamW with a cosine learning-rate decay and cross-entropy; light augmentation by random integer
    shifts of up to `max_shift` pixels (default: 1 for 8-15 px images, 2 for 16-31 px, 3 above).
    Deterministic for a given seed on a given device: initialisation, shuffling and shifts all draw
    from generators seeded with `seed`.

    Args:
        x_train, x_test: images (N, C, S, S) in [-1, 1].
        y_train, y_test: integer labels (N,) in [0, num_classes).
    Returns:
        (extractor, info) where info holds test_accuracy, train_accuracy, the settings and the time taken.
    """
    _check_xy(x_train, y_train, "training")
    _check_xy(x_test, y_test, "test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"training images are {tuple(x_train.shape[1:])} but test images {tuple(x_test.shape[1:])}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UserError("epochs and batch_size must be >= 1 and lr > 0")
    device = torch.device(device)
    y_train, y_test = y_train.long(), y_test.long()
    k = int(num_classes if num_classes is not None else max(int(y_train.max()), int(y_test.max())) + 1)
    s = int(x_train.shape[-1])
    if max_shift is None:
        max_shift = 1 if s < 16 else (2 if s < 32 else 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(int(x_train.shape[1]), k, s, width=width, feature_dim=feature_dim)
    net.to(device)
    g = torch.Generator()
    g.manual_seed(seed)
    start = time.perf_counter()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = x_train.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    # dropout draws from the global generator of the device: seed it, and restore it afterwards
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + 1)
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                xb = random_shift(x_train[idx].float(), max_shift, g).to(device)
                yb = y_train[idx].to(device)
                loss = F.cross_entropy(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    net.eval().cpu()
    info: dict[str, Any] = {
        "dataset": dataset,
        "test_accuracy": _accuracy(net, x_test.float(), y_test, torch.device("cpu")),
        "train_accuracy": _accuracy(net, x_train.float(), y_train, torch.device("cpu")),
        "n_train": int(n),
        "n_test": int(x_test.shape[0]),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "max_shift": max_shift,
        "train_seconds": round(time.perf_counter() - start, 3),
    }
    extractor = ClassifierExtractor(net, dataset=dataset, info=info)
    info["weights_hash"] = extractor.weights_hash
    extractor.info = dict(info)
    return extractor.to(device), info


def save_classifier(path_dir: str | Path, model: ClassifierExtractor, info: dict[str, Any] | None = None) -> Path:
    """Save weights as ``model.safetensors`` and metadata as ``classifier.json`` in path_dir (created).

    The JSON records the format, the architecture kwargs, the data set, the training info (test
    accuracy, ...) and the weights hash; both files are written atomically (:func:`io.write_saved_module`)."""
    path = Path(path_dir)
    record = {"architecture": "SmallCNN", "kwargs": model.arch, "dataset": model.dataset,
              "info": {**model.info, **(info or {})}}
    write_saved_module(model.net.state_dict(), path / CLASSIFIER_META, path / CLASSIFIER_WEIGHTS,
                       format=CLASSIFIER_FORMAT, record=record, weights_hash=state_dict_hash)
    return path


def load_classifier(path_dir: str | Path, device: str | torch.device = "cpu") -> ClassifierExtractor:
    """Load a classifier saved by :func:`save_classifier`; no pickle is involved (safetensors + JSON).

    Raises UserError if the folder or a file is missing, the JSON is not a diffatlas classifier,
    or the weights' hash differs from the one recorded."""
    path = Path(path_dir)
    meta_path, weights_path = path / CLASSIFIER_META, path / CLASSIFIER_WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(
            f"no classifier at {path}: expected {CLASSIFIER_META} and {CLASSIFIER_WEIGHTS}"
            " (train one with `diffatlas train-classifier`)"
        )
    fix = f"delete {str(path)!r} and train the classifier again (`diffatlas train-classifier`)"
    net, meta = read_saved_module(SmallCNN, meta_path, weights_path, format=CLASSIFIER_FORMAT, what="classifier",
                                  allowed={"in_channels", "num_classes", "image_size", "width", "feature_dim", "dropout"},
                                  fix=fix, weights_hash=state_dict_hash)
    ext = ClassifierExtractor(net, dataset=str(meta.get("dataset", "unknown")), info=meta.get("info", {}))
    return ext.to(device)
