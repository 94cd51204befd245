"""The data axis: a registry of datasets, each an `ImageDataset` with values in [-1, 1].

    ds = load_dataset("fashion-mnist", resolution=32)      # 28x28 padded with -1 to 32x32
    x, y = ds.to("cuda").get_batch(torch.arange(64))

Names (CLI words and report labels): digits, fashion-mnist, mnist, cifar10, image-folder,
toy2d (kind=gaussian-mixture|moons|swiss-roll|checkerboard), gaussian (dim=...).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..registry import Registry
from .base import ImageDataset, LazyImageDataset, pad_or_resize
from .cifar import load_cifar10
from .digits import load_digits_dataset
from .folder import load_image_folder
from .idx import load_fashion_mnist, load_mnist, read_idx
from .mixture import ExactDenoiser, GaussianMixture, gaussian, standard_mixture
from .toy import TOY2D_KINDS, load_gaussian, load_toy2d, sample_toy2d

@dataclass(frozen=True)
class Dataset:
    """A registered dataset: its loader and how complex its data is.

    load(root=, split=, resolution=, download=, **options) -> ImageDataset; its extra keyword
        arguments are the dataset's options (dataset_options).
    complexity: a rank for the claim "model size matters more on complex data", which compares the
        least and the most complex dataset of a study (higher: more complex; None: unranked, placed
        after every ranked one). 0 synthetic points, 1 small grayscale (8x8 digits), 2 28x28 grayscale
        (MNIST, then Fashion-MNIST at 2.5: textures and shapes of clothing), 3 natural colour images
        (CIFAR-10), 4 a folder of images (e.g. FFHQ faces at 64+ pixels).
    """

    name: str
    load: Callable[..., ImageDataset]
    complexity: float | None = None

    def __call__(self, **kwargs: Any) -> ImageDataset:
        return self.load(**kwargs)


DATASETS: Registry[Dataset] = Registry("dataset")


def register_dataset(name: str, description: str, load: Callable[..., ImageDataset],
                     complexity: float | None = None) -> Dataset:
    """Register `load` as dataset `name` (see :class:`Dataset`)."""
    spec = Dataset(name, load, complexity)
    DATASETS.register(name, description)(spec)
    return spec


register_dataset("digits", "scikit-learn digits: 8x8 grayscale, 1,797 images, 10 classes", load_digits_dataset,
                 complexity=1)
register_dataset("mnist", "MNIST: 28x28 grayscale digits, 60k/10k, 10 classes (IDX files)", load_mnist, complexity=2)
register_dataset("fashion-mnist", "Fashion-MNIST: 28x28 grayscale, 60k/10k, 10 classes (IDX files)",
                 load_fashion_mnist, complexity=2.5)
register_dataset("cifar10", "CIFAR-10: 32x32 RGB, 50k/10k, 10 classes (python batches)", load_cifar10, complexity=3)
register_dataset("image-folder", "a folder of images (e.g. FFHQ), centre-cropped and resized, RGB", load_image_folder,
                 complexity=4)
register_dataset("toy2d", "2-D points: gaussian-mixture, moons, swiss-roll, checkerboard", load_toy2d, complexity=0)
register_dataset("gaussian", "points from an isotropic or diagonal Gaussian in dim dimensions", load_gaussian,
                 complexity=0)

_COMMON = ("root", "split", "resolution", "download")


def dataset_options(name: str) -> dict[str, Any]:
    """The extra options (beyond root, split, resolution, download) dataset `name` accepts, with defaults."""
    params = inspect.signature(DATASETS.get(name).load).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    **options: Any,
) -> ImageDataset:
    """Load dataset `name` -> ImageDataset (CPU; call `.to(device)`).

    Args:
        name: a DATASETS name.
        root: directory of the files (dataset-specific default; synthetic sets take none).
        split: "train", "test" or (for file datasets) "all".
        resolution: output side length for images: pads with -1 when larger than the stored size
            (28 -> 32), resizes (PIL, antialiased) when smaller; `resize_mode` option overrides.
        download: fetch missing files from the standard URLs, checking MD5s (mnist, fashion-mnist, cifar10).
        options: dataset-specific, see `dataset_options(name)` (e.g. toy2d: kind, n, seed).
    Raises UnknownNameError for an unknown name, UserError for bad options or missing/corrupt files.
    """
    factory = DATASETS.get(name)
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        choices = ", ".join(accepted) or "none"
        raise UserError(f"dataset {name!r} has no option {', '.join(unknown)}; its options: {choices}")
    return factory(root=root, split=split, resolution=resolution, download=download, **options)


def dataset_from_config(data: Any, split: str | None = None) -> ImageDataset:
    """The dataset of a config's data section (name, root, resolution, options), on its own split or on
    `split` (e.g. "test" for held-out data)."""
    return load_dataset(data.name, root=data.root, split=data.split if split is None else split,
                        resolution=data.resolution, **data.options)


__all__ = [
    "DATASETS",
    "Dataset",
    "TOY2D_KINDS",
    "ExactDenoiser",
    "GaussianMixture",
    "ImageDataset",
    "LazyImageDataset",
    "dataset_from_config",
    "dataset_options",
    "gaussian",
    "load_dataset",
    "pad_or_resize",
    "read_idx",
    "sample_toy2d",
    "standard_mixture",
]
