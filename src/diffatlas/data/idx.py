"""MNIST and Fashion-MNIST from IDX files (gzipped or not).

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic number
0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes, then the data in C order.
Type 0x08 is unsigned byte: images have magic 0x00000803 (N, 28, 28), labels 0x00000801 (N,).

Files and MD5 checksums are the published ones (also listed by torchvision.datasets.MNIST
and FashionMNIST; Fashion-MNIST: Xiao et al. 2017, github.com/zalandoresearch/fashion-mnist).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ImageDataset, pad_or_resize
from ..io import cache_root
from .download import download_file

IDX_UBYTE = 0x08

FILES = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped when the name ends in .gz) -> uint8 array.

    Validates the magic number, the element type and that the payload has exactly the size
    the header states; any violation (or a broken gzip stream) is a UserError naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"corrupt IDX file {path}: cannot read it ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"corrupt IDX file {path}: bad magic number (expected 0x0000 then type and ndim)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != IDX_UBYTE:
        raise UserError(
            f"unsupported IDX file {path}: element type 0x{dtype_code:02x}, expected 0x08 (unsigned byte)"
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"corrupt IDX file {path}: header of {ndim} dimensions is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise UserError(
            f"corrupt IDX file {path}: header says {'x'.join(map(str, dims))} = {expected} bytes, "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _required_files(splits: list[str]) -> list[str]:
    return [f + ".gz" for s in splits for f in FILES[s]]


def read_idx_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels uint8 (N,) of one split ("train" or "test") in `root`."""
    root = Path(root)
    img_path, lbl_path = (_find(root, stem) for stem in FILES[split])
    if img_path is None or lbl_path is None:
        raise UserError(
            f"missing IDX files in {root}: need {', '.join(_required_files([split]))} (or uncompressed)"
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3:
        raise UserError(f"corrupt IDX file {img_path}: expected 3 dimensions (N, H, W), got {images.ndim}")
    if labels.ndim != 1:
        raise UserError(f"corrupt IDX file {lbl_path}: expected 1 dimension (N,), got {labels.ndim}")
    if len(images) != len(labels):
        raise UserError(
            f"IDX files disagree: {img_path.name} has {len(images)} images, "
            f"{lbl_path.name} has {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise UserError(f"corrupt IDX file {lbl_path}: label {int(labels.max())} outside 0..9")
    return images, labels


def _splits(split: str, name: str) -> list[str]:
    if split == "all":
        return ["train", "test"]
    if split not in FILES:
        raise UserError(f"unknown split {split!r} for {name}; choose one of: train, test, all")
    return [split]


def load_idx_dataset(
    name: str,
    root: Path,
    split: str,
    resolution: int | None,
    download: bool,
    mirrors: tuple[str, ...],
    md5: dict[str, str],
    hint: str = "",
    class_names: tuple[str, ...] | None = None,
    resize_mode: str = "auto",
) -> ImageDataset:
    """Shared loader of MNIST-like IDX data sets -> uint8 ImageDataset (N, 1, H, W), 10 classes."""
    splits = _splits(split, name)
    if download:
        for fname in _required_files(splits):
            if _find(root, fname[:-3]) is None:
                download_file([m + fname for m in mirrors], root / fname, md5[fname])
    missing = [f for f in _required_files(splits) if _find(root, f[:-3]) is None]
    if missing:
        raise UserError(
            f"{name}: missing {', '.join(missing)} in {root}; put these files (gzipped or not) "
            f"in that directory, pass root=DIR, or pass download=True{hint}"
        )
    parts = [read_idx_split(root, s) for s in splits]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).unsqueeze(1)  # (N, 1, H, W)
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
    images = pad_or_resize(images, resolution, resize_mode)
    return ImageDataset(images, labels, name=name, split=split, num_classes=10, class_names=class_names)


def load_fashion_mnist(
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    resize_mode: str = "auto",
) -> ImageDataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale, 60,000 train / 10,000 test, 10 classes.

    Default root: /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist) when it
    holds the files, else $DIFFATLAS_CACHE/fashion-mnist. `resolution=32` pads to 32x32 with -1.
    """
    if root is not None:
        path = Path(root).expanduser()
    elif _find(FASHION_MNIST_DEBIAN_ROOT, FILES["train"][0]) is not None:
        path = FASHION_MNIST_DEBIAN_ROOT
    else:
        path = cache_root() / "fashion-mnist"
    hint = (
        " (or apt-get install dataset-fashion-mnist for /usr/share/datasets/fashion-mnist)"
        if root is None
        else ""
    )
    return load_idx_dataset(
        "fashion-mnist",
        path,
        split,
        resolution,
        download,
        FASHION_MNIST_MIRRORS,
        FASHION_MNIST_MD5,
        hint,
        FASHION_MNIST_CLASSES,
        resize_mode,
    )


def load_mnist(
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    resize_mode: str = "auto",
) -> ImageDataset:
    """MNIST (LeCun et al. 1998): 28x28 grayscale digits, 60,000 train / 10,000 test, 10 classes.

    Default root: $DIFFATLAS_CACHE/mnist (~/.cache/diffatlas/mnist).
    """
    path = Path(root).expanduser() if root is not None else cache_root() / "mnist"
    return load_idx_dataset(
        "mnist",
        path,
        split,
        resolution,
        download,
        MNIST_MIRRORS,
        MNIST_MD5,
        class_names=tuple(str(i) for i in range(10)),
        resize_mode=resize_mode,
    )
