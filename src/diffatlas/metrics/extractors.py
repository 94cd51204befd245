"""Feature extractors: images in [-1, 1] -> features (for Frechet distance, KID, precision/recall)
and class logits (for the Inception score).

One interface, :class:`FeatureExtractor`, with two implementations:

* ``classifier`` -- :class:`ClassifierExtractor`, a small CNN trained on the dataset's own labels
  (:func:`train_classifier`); penultimate-layer features, softmax logits.  The only option for
  small images (8x8 digits, 28x28 Fashion-MNIST) that stays meaningful and runs on a CPU.
* ``inception`` -- :class:`InceptionExtractor`, the standard FID Inception-v3 (pool3, 2048-d, and the
  1008 logits without bias) in plain torch (:mod:`.inception`), loading the standard weights file
  (pt_inception-2015-12-05) when it is already on disk; this module never downloads anything.

An extractor pins itself to eval mode (``.train()`` is a no-op) and runs under ``torch.no_grad``,
so no caller can evaluate a network left in train mode.  ``weights_hash`` identifies the exact
weights (sha256, first 16 hex digits) and is part of every metric record and reference-statistics key.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..io import read_saved_module, write_saved_module
from ..registry import Registry
from .inception import FEATURE_DIM, NUM_CLASSES, STANDARD_SHA256_PREFIX, load_fid_inception

EXTRACTORS: Registry = Registry("extractor")

CLASSIFIER_WEIGHTS = "model.safetensors"
CLASSIFIER_META = "classifier.json"
CLASSIFIER_FORMAT = "diffatlas-classifier-v1"


def state_dict_hash(state: dict[str, Tensor]) -> str:
    """sha256 of a state dict's tensors (name, dtype, shape and raw bytes, in sorted name order); 16 hex digits.

    Independent of the file format, so a network in memory and the same network loaded from disk agree."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, first 16 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# The interface
# ------------------------------------------------------------------------------------------------
class FeatureExtractor(nn.Module):
    """Images -> (features, logits), always in eval mode and without gradients.

    Attributes:
        name: registry name ("classifier", "inception").
        weights_hash: sha256 of the weights, 16 hex digits.
        feature_dim: D, the feature width.
        num_classes: K, the number of logits.
        batch_size: images per forward pass (inputs of any length are split).

    Subclasses implement ``_check(x)`` (raise UserError on shapes they cannot take) and
    ``_forward(x) -> (features (B, D), logits (B, K))`` on a batch already on the extractor's device.
    """

    name: str = ""
    weights_hash: str = ""
    feature_dim: int = 0
    num_classes: int = 0
    batch_size: int = 256

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Ignored: an extractor is pinned to eval mode (dropout off, normalisation frozen)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise UserError(f"images must be a tensor shaped (N, C, H, W) with values in [-1, 1], got {shape}")

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features (N, D) and logits (N, K) of images x (N, C, H, W) in [-1, 1]; float32 on the CPU."""
        self._check(x)
        super().train(False)  # even if someone flipped .training directly
        feats, logits = [], []
        dev = self.device
        for i in range(0, x.shape[0], self.batch_size):
            f, l = self._forward(x[i : i + self.batch_size].to(dev, torch.float32))
            feats.append(f.float().cpu())
            logits.append(l.float().cpu())
        if not feats:
            return torch.empty(0, self.feature_dim), torch.empty(0, self.num_classes)
        return torch.cat(feats), torch.cat(logits)

    def features(self, x: Tensor) -> Tensor:
        """Features (N, D) of images x (N, C, H, W) in [-1, 1]."""
        return self.features_and_logits(x)[0]

    def logits(self, x: Tensor) -> Tensor:
        """Class logits (N, K) of images x (N, C, H, W) in [-1, 1]."""
        return self.features_and_logits(x)[1]

    def describe(self) -> dict[str, Any]:
        """What identifies this extractor in a metric record."""
        return {"extractor": self.name, "weights_hash": self.weights_hash, "feature_dim": self.feature_dim}


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


# ------------------------------------------------------------------------------------------------
# The standard FID Inception-v3 (plain torch), local weights only
# ------------------------------------------------------------------------------------------------
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for the file
INCEPTION_WEIGHTS_FILES = (INCEPTION_WEIGHTS_FILE, "pt_inception-2015-12-05-6726825d.pth")  # ... and pytorch-fid's
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)
INCEPTION_ENV = "DIFFATLAS_INCEPTION_WEIGHTS"


def inception_weights_path() -> Path:
    """Where the Inception weights are looked for: $DIFFATLAS_INCEPTION_WEIGHTS if set, else torch hub's
    checkpoints folder (<torch hub dir>/checkpoints/), under torch-fidelity's or pytorch-fid's file name
    (the first that exists; torch-fidelity's when neither does)."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return Path(env).expanduser()
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in INCEPTION_WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    return folder / INCEPTION_WEIGHTS_FILE


def inception_fetch_command() -> str:
    """The one command that downloads the standard weights (once, on a machine with internet) to the
    default location, checking the file's sha256 prefix."""
    return (f"python -c \"import torch; torch.hub.load_state_dict_from_url('{INCEPTION_WEIGHTS_URL}', "
            "check_hash=True)\"")


class InceptionExtractor(FeatureExtractor):
    """Inception-v3 of the original FID code (Heusel et al. 2017), :class:`~.inception.FIDInceptionV3`:
    2048-d pool3 features, and the 1008 logits without bias that the Inception score uses.

    Images in [-1, 1] are quantised to uint8 (as a saved PNG would be), grey images are repeated to
    3 channels, and the network resizes them to 299x299 as the TF graph does. The weights file is read
    from :func:`inception_weights_path` (or `weights_path`); nothing is ever downloaded. Weights whose
    sha256 does not start with the standard file's 6726825d are used but flagged (``standard`` False,
    in :meth:`describe`): their numbers are not comparable to published FIDs.
    """

    name = "inception"

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> None:
        super().__init__()

        path = Path(weights_path).expanduser() if weights_path is not None else inception_weights_path()
        if not path.is_file():
            raise UserError(
                f"Inception features unavailable: no weights file at {path}; fetch it once with "
                f"{inception_fetch_command()} (or set {INCEPTION_ENV}=/path/to/{INCEPTION_WEIGHTS_FILE}); "
                "nothing is downloaded here"
            )
        self.net = load_fid_inception(path)
        if torch.device(device).type == "cpu":
            self.net.to(memory_format=torch.channels_last)  # about 1.5x faster convolutions on CPUs
        self.requires_grad_(False)
        self.train(False)
        self.weights_path = path
        self.weights_hash = file_hash(path)
        self.standard = self.weights_hash.startswith(STANDARD_SHA256_PREFIX)
        self.feature_dim = FEATURE_DIM
        self.num_classes = NUM_CLASSES
        self.batch_size = batch_size
        self.to(device)

    def _check(self, x: Tensor) -> None:
        super()._check(x)
        if x.shape[1] not in (1, 3):
            raise UserError(f"Inception features need 1- or 3-channel images, got {x.shape[1]} channels")

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # [-1, 1] -> the 8-bit pixel values {0, ..., 255} the FID graph reads
        pixels = ((x.clamp(-1, 1) + 1) * 127.5).round()
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        pool3 = self.net(pixels)
        return pool3, self.net.logits(pool3)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "standard": self.standard, "weights_path": str(self.weights_path)}


@EXTRACTORS.register("classifier", "small CNN trained on the data set's labels (saved folder)")
def classifier_extractor(path: str | Path, device: str | torch.device = "cpu") -> ClassifierExtractor:
    return load_classifier(path, device)


@EXTRACTORS.register("inception", "the FID Inception-v3 (pool3 features, 1008 logits; local weights file only)")
def inception_extractor(path: str | Path | None = None, device: str | torch.device = "cpu") -> InceptionExtractor:
    return InceptionExtractor(path, device)
