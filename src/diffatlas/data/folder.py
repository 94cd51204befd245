"""A folder of images (e.g. FFHQ): centre-cropped to a square, resized, RGB.

Files with extensions png/jpg/jpeg/webp/bmp are found recursively and sorted by relative path,
so sample i is the same file on every machine. With labels=True, the class of a file is the
name of the immediate subfolder of `root` that contains it (classes sorted by name).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ImageDataset, LazyImageDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_IN_MEMORY_BYTES = 2 << 30  # auto mode keeps a folder in memory (uint8) up to 2 GiB


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted by relative path."""
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def decode_square(path: Path, resolution: int) -> np.ndarray:
    """Decode one image -> uint8 array (resolution, resolution, 3): RGB, centre crop to square, resize.

    Resizing uses PIL's bicubic filter, which is antialiased when shrinking.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side))
            if side != resolution:
                im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


class _Decoder:
    """Picklable path -> array function for a fixed resolution (usable by DataLoader workers)."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution

    def __call__(self, path: Path) -> np.ndarray:
        return decode_square(path, self.resolution)


def load_image_folder(
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    labels: bool = False,
    in_memory: bool | None = None,
) -> ImageDataset:
    """Every image under `root` as (3, resolution, resolution) in [-1, 1].

    Args:
        root: the folder (required).
        split: a label recorded with the dataset; the folder is the split.
        resolution: output side length (required), e.g. 64.
        labels: class labels from the immediate subfolder names of `root`.
        in_memory: True decodes everything once into a uint8 tensor; False decodes per batch
            (`LazyImageDataset`); None (default) keeps it in memory when it needs at most 2 GiB.
    """
    if root is None:
        raise UserError("image-folder needs root=DIR, a folder of png/jpg/jpeg/webp/bmp images")
    if resolution is None:
        raise UserError("image-folder needs a resolution, e.g. resolution=64")
    if download:
        raise UserError("image-folder cannot download: put the images in a folder and pass root=DIR")
    if split not in ("train", "test", "all"):
        raise UserError(f"unknown split {split!r}; choose one of: train, test, all")
    res = int(resolution)
    if res < 1:
        raise UserError(f"resolution must be a positive integer, got {resolution}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"image folder {base} does not exist or is not a directory")
    paths = list_images(base)
    if not paths:
        raise UserError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {base}")

    label_tensor, class_names = None, None
    if labels:
        parts = [p.relative_to(base).parts for p in paths]
        loose = [p for p, parts_ in zip(paths, parts) if len(parts_) < 2]
        if loose:
            raise UserError(
                f"labels=True needs every image inside a class subfolder of {base}; "
                f"{loose[0].name} is not ({len(loose)} such files)"
            )
        class_names = sorted({parts_[0] for parts_ in parts})
        index = {c: i for i, c in enumerate(class_names)}
        label_tensor = torch.tensor([index[parts_[0]] for parts_ in parts], dtype=torch.long)

    num_classes = len(class_names) if class_names is not None else None
    decode = _Decoder(res)
    if in_memory is None:
        in_memory = len(paths) * 3 * res * res <= MAX_IN_MEMORY_BYTES
    if not in_memory:
        return LazyImageDataset(
            paths,
            decode,
            (3, res, res),
            label_tensor,
            name="image-folder",
            split=split,
            num_classes=num_classes,
            class_names=class_names,
        )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(decode, paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, res, res)
    return ImageDataset(
        images,
        label_tensor,
        name="image-folder",
        split=split,
        num_classes=num_classes,
        class_names=class_names,
    )
