"""scikit-learn's bundled handwritten digits (UCI optdigits test set; Alpaydin & Kaynak 1998).

1,797 grayscale images of 8x8 pixels with values 0..16, 10 classes, no download needed.
Values map to [-1, 1] as x / 8 - 1. The images come ordered by writer, so a split by position
would test on unseen writers only; the fixed split is a permutation drawn once with seed 0:
"test" is its last 297 images, "train" the other 1,500 (in their original order), "all" all 1,797.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .base import ImageDataset, pad_or_resize

NUM_TEST = 297


def load_digits_dataset(
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    resize_mode: str = "auto",
) -> ImageDataset:
    """The digits as float32 (N, 1, 8, 8) in [-1, 1] (or (N, 1, r, r) with resolution=r), labels 0..9."""
    if root is not None:
        raise UserError("digits is bundled with scikit-learn: it takes no root")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    n = len(images)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    test = torch.zeros(n, dtype=torch.bool)
    test[perm[n - NUM_TEST:]] = True
    if split == "train":
        sl = (~test).nonzero().squeeze(1)
    elif split == "test":
        sl = test.nonzero().squeeze(1)
    elif split == "all":
        sl = torch.arange(n)
    else:
        raise UserError(f"unknown split {split!r} for digits; choose one of: train, test, all")
    x = images[sl].unsqueeze(1) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    x = pad_or_resize(x, resolution, resize_mode)
    return ImageDataset(
        x,
        labels[sl].clone(),
        name="digits",
        split=split,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
    )
