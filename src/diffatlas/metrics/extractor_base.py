"""The feature-extractor interface and the weights hashes that identify an extractor.

:class:`FeatureExtractor` maps images in [-1, 1] to features (for Frechet distance, KID,
precision/recall) and class logits (for the Inception score); its implementations live in
``dataset_classifier.py`` (the dataset's own classifier) and ``extractors.py`` (the FID Inception-v3),
and ``extractors.py`` re-exports every name of this module.

An extractor pins itself to eval mode (``.train()`` is a no-op) and runs under ``torch.no_grad``,
so no caller can evaluate a network left in train mode.  ``weights_hash`` identifies the exact
weights (sha256, first 16 hex digits) and is part of every metric record and reference-statistics key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError


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
