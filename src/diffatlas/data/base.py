"""The data interface: `ImageDataset`, a batch source with values in [-1, 1].

Every dataset, images (N, C, H, W) and toy points (N, D) alike, offers

    len(ds)                         number of samples
    ds.shape                        per-sample shape, e.g. (1, 8, 8), (3, 32, 32) or (2,)
    ds.get_batch(idx)               -> (x, labels): x float32 (B, *shape), labels int64 (B,) or None
    ds.to(device)                   keep the tensors on the training device (no per-step host-to-device copy)

Images from 8-bit files are stored as uint8 and mapped to [-1, 1] in `get_batch`
(x / 127.5 - 1, the convention of Ho et al. 2020, Sec. 4), which keeps Fashion-MNIST
(47 MB) and CIFAR-10 (150 MB) small in memory. Float data (scikit-learn digits, toy
points) is stored as float32 already in its final units.

`LazyImageDataset` decodes image files per batch for folders too large for memory;
`in_memory` tells which kind a dataset is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from .mixture import GaussianMixture

RESIZE_MODES = ("auto", "pad", "resize")


def _as_index(idx: Tensor | Sequence[int], n: int, device: torch.device) -> Tensor:
    idx = torch.as_tensor(idx, dtype=torch.long)
    if idx.ndim != 1:
        raise UserError(f"batch indices must be a 1-D tensor, got shape {tuple(idx.shape)}")
    if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise UserError(f"batch index out of range for a dataset of {n} samples")
    return idx.to(device)


class ImageDataset:
    """An in-memory dataset of images (N, C, H, W) or points (N, D).

    Args:
        data: uint8 tensor (N, *shape) with 8-bit pixel values (mapped to [-1, 1] on read), or a
            float tensor (N, *shape) already in its final units (stored as float32).
        labels: int64 tensor (N,) of class indices, or None.
        name: registry name of the dataset (a report label).
        split: "train", "test" or "all".
        num_classes: number of classes when labelled, else None.
        class_names: optional human-readable class names, index = label.
        mixture: for synthetic Gaussian(-mixture) data, the distribution the samples come from
            (its exact denoiser is the oracle for sampler tests); else None.
    """

    in_memory: bool = True

    def __init__(
        self,
        data: Tensor,
        labels: Tensor | None = None,
        *,
        name: str,
        split: str = "train",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        mixture: GaussianMixture | None = None,
    ) -> None:
        data = torch.as_tensor(data)
        if data.ndim < 2:
            raise ValueError(f"dataset tensor must be (N, *shape), got shape {tuple(data.shape)}")
        if data.dtype != torch.uint8:
            data = data.to(torch.float32)
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (data.shape[0],):
                raise ValueError(
                    f"labels of shape {tuple(labels.shape)} do not match {data.shape[0]} samples"
                )
        self._data = data.contiguous()
        self._labels = labels
        self.name = name
        self.split = split
        self.shape: tuple[int, ...] = tuple(int(s) for s in data.shape[1:])
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.mixture = mixture

    # ---- the interface ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._data.shape[0])

    @property
    def device(self) -> torch.device:
        return self._data.device

    @property
    def labels(self) -> Tensor | None:
        """int64 tensor (N,) of class indices on `self.device`, or None for unlabelled data."""
        return self._labels

    @property
    def storage_dtype(self) -> torch.dtype:
        """torch.uint8 for 8-bit images (converted per batch), torch.float32 otherwise."""
        return self._data.dtype

    def get_batch(self, idx: Tensor | Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """Samples `idx` (LongTensor (B,)) -> (x float32 (B, *shape) in [-1, 1], labels int64 (B,) or None).

        Deterministic: the same indices give the same tensors. Results live on `self.device`.
        """
        i = _as_index(idx, len(self), self.device)
        x = self._data[i]
        if x.dtype == torch.uint8:
            # 8-bit pixel p in {0..255} -> 2 p / 255 - 1 in [-1, 1] (Ho et al. 2020, Sec. 4)
            x = x.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)
        y = self._labels[i] if self._labels is not None else None
        return x, y

    def to(self, device: torch.device | str) -> ImageDataset:
        """Move the stored tensors to `device` (in place); returns self."""
        self._data = self._data.to(device)
        if self._labels is not None:
            self._labels = self._labels.to(device)
        return self

    # ---- conveniences -------------------------------------------------------------------------
    def all_images(self, limit: int | None = None) -> Tensor:
        """The first `limit` samples (all when None) as float32 (n, *shape) in [-1, 1]."""
        n = len(self) if limit is None else min(int(limit), len(self))
        return self.get_batch(torch.arange(n))[0]

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """A batch of `batch_size` indices drawn uniformly with replacement using `generator` (CPU)."""
        idx = torch.randint(0, len(self), (int(batch_size),), generator=generator)
        return self.get_batch(idx)

    @property
    def num_channels(self) -> int | None:
        return self.shape[0] if len(self.shape) == 3 else None

    @property
    def resolution(self) -> int | None:
        return self.shape[-1] if len(self.shape) == 3 else None

    def describe(self) -> dict[str, Any]:
        """Resolved facts about this dataset, for configs and reports."""
        return {
            "name": self.name,
            "split": self.split,
            "size": len(self),
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "in_memory": self.in_memory,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={self.shape}, num_classes={self.num_classes}, device={self.device})"
        )


class LazyImageDataset(ImageDataset):
    """Image files decoded per batch: for folders too large for memory (e.g. FFHQ at 256x256).

    Args:
        paths: image files, one per sample.
        decode: function path -> uint8 numpy array (H, W, C) at the final resolution.
        shape: per-sample shape (C, H, W) that `decode` produces.
        labels, name, split, num_classes, class_names: as for `ImageDataset`.
    """

    in_memory = False

    def __init__(
        self,
        paths: Sequence[str | Path],
        decode: Callable[[Path], np.ndarray],
        shape: tuple[int, ...],
        labels: Tensor | None = None,
        *,
        name: str,
        split: str = "train",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self._paths = [Path(p) for p in paths]
        self._decode = decode
        self._device = torch.device("cpu")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (len(self._paths),):
                raise ValueError(
                    f"labels of shape {tuple(labels.shape)} do not match {len(self._paths)} files"
                )
        self._labels = labels
        self.name = name
        self.split = split
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.mixture = None

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def storage_dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    def get_batch(self, idx: Tensor | Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """Decode the files `idx` (LongTensor (B,)) -> (x float32 (B, C, H, W) in [-1, 1], labels or None)."""
        i = _as_index(idx, len(self), torch.device("cpu"))
        arrays = [self._decode(self._paths[int(k)]) for k in i]
        u8 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        x = u8.to(self._device).to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)
        y = self._labels[i.to(self._labels.device)] if self._labels is not None else None
        return x, y

    def to(self, device: torch.device | str) -> LazyImageDataset:
        """Batches are decoded on the CPU and moved to `device`; labels are kept there. Returns self."""
        self._device = torch.device(device)
        if self._labels is not None:
            self._labels = self._labels.to(device)
        return self


# ---- resolution changes ---------------------------------------------------------------------------
def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    """Resize one 2-D plane (uint8 or float32) to size x size with PIL's bilinear filter.

    When shrinking, PIL widens the bilinear kernel by the scale factor, i.e. it antialiases.
    """
    from PIL import Image

    if plane.dtype == np.uint8:
        img = Image.fromarray(plane, mode="L")
    else:
        img = Image.fromarray(plane.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def pad_or_resize(images: Tensor, resolution: int | None, mode: str = "auto") -> Tensor:
    """Bring images (N, C, H, W) to (N, C, resolution, resolution).

    mode "pad": centre the image on a background of value -1 (0 for uint8 storage, which maps
    to -1), e.g. 28 -> 32 with 2 pixels each side; needs H, W <= resolution.
    mode "resize": centre-crop to a square, then resize with PIL bilinear (antialiased when shrinking).
    mode "auto": pad when the image is not larger than `resolution`, resize otherwise.
    `resolution=None` returns the images unchanged. dtype (uint8 or float) is preserved.
    """
    if resolution is None:
        return images
    if mode not in RESIZE_MODES:
        raise UserError(f"unknown resize mode {mode!r}; choose one of: {', '.join(RESIZE_MODES)}")
    res = int(resolution)
    if res < 1:
        raise UserError(f"resolution must be a positive integer, got {resolution}")
    if images.ndim != 4:
        raise UserError(
            f"resolution applies to image data (N, C, H, W), not to data of shape {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    if (h, w) == (res, res):
        return images
    if mode == "auto":
        mode = "pad" if h <= res and w <= res else "resize"
    if mode == "pad":
        if h > res or w > res:
            raise UserError(
                f"cannot pad {h}x{w} images to {res}x{res}: use a resolution >= {max(h, w)} "
                "or resize_mode='resize'"
            )
        fill = 0 if images.dtype == torch.uint8 else -1.0
        out = torch.full((n, c, res, res), fill, dtype=images.dtype, device=images.device)
        top, left = (res - h) // 2, (res - w) // 2
        out[:, :, top : top + h, left : left + w] = images
        return out
    # resize: centre-crop to square, then PIL bilinear per plane
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    arr = images[:, :, top : top + side, left : left + side].cpu().numpy()
    out_np = np.empty((n, c, res, res), dtype=np.uint8 if images.dtype == torch.uint8 else np.float32)
    for i in range(n):
        for j in range(c):
            out_np[i, j] = _resize_plane(arr[i, j], res)
    return torch.from_numpy(out_np).to(images.device)
