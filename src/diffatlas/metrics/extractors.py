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

This module holds the registry, the Inception extractor and the registered constructors; the interface
and the hashes live in ``extractor_base.py``, the classifier and its training in ``dataset_classifier.py``,
and every name of both is re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry
from .dataset_classifier import (
    CLASSIFIER_FORMAT,
    CLASSIFIER_META,
    CLASSIFIER_WEIGHTS,
    ClassifierExtractor,
    SmallCNN,
    load_classifier,
    random_shift,
    save_classifier,
    train_classifier,
)
from .extractor_base import FeatureExtractor, file_hash, state_dict_hash
from .inception import FEATURE_DIM, NUM_CLASSES, STANDARD_SHA256_PREFIX, load_fid_inception

__all__ = [
    "CLASSIFIER_FORMAT", "CLASSIFIER_META", "CLASSIFIER_WEIGHTS", "EXTRACTORS", "INCEPTION_ENV",
    "INCEPTION_WEIGHTS_FILE", "INCEPTION_WEIGHTS_FILES", "INCEPTION_WEIGHTS_URL", "ClassifierExtractor",
    "FeatureExtractor", "InceptionExtractor", "SmallCNN", "classifier_extractor", "file_hash",
    "inception_extractor", "inception_fetch_command", "inception_weights_path", "load_classifier",
    "random_shift", "save_classifier", "state_dict_hash", "train_classifier",
]

EXTRACTORS: Registry = Registry("extractor")


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
