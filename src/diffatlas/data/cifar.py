"""CIFAR-10 (Krizhevsky 2009) from the python-version batches, read with a restricted unpickler.

Layout (https://www.cs.toronto.edu/~kriz/cifar.html): cifar-10-batches-py/data_batch_1..5 and
test_batch, each a pickled dict with b"data" (uint8 array 10000 x 3072: 1024 red, 1024 green,
1024 blue values, each a 32x32 image in row-major order) and b"labels" (list of ints 0..9).

The files are pickles, and unpickling can run arbitrary code. `safe_unpickle` only resolves the
few globals that numpy array reconstruction needs (ndarray, dtype, the reconstruct helpers and
`_codecs.encode`, which protocol 2 uses for bytes); any other global is refused.
Archive and batch MD5s are the published ones (also in torchvision.datasets.CIFAR10).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .base import ImageDataset, pad_or_resize
from ..io import cache_root
from .download import download_file, md5_file

BASE_FOLDER = "cifar-10-batches-py"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import codecs

    reconstruct = np.ndarray((0,), np.uint8).__reduce__()[0]  # numpy's array reconstruction helper
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol-5 variant
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of numpy array reconstruction; everything else is refused."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file") from None


def safe_unpickle(data: bytes) -> Any:
    """Unpickle `data` allowing only builtin containers, bytes/str/numbers and numpy arrays.

    Raises pickle.UnpicklingError for any other global (e.g. os.system in a `__reduce__`).
    """
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> images uint8 (N, 3, 32, 32), labels int64 (N,).

    UserError if the file is unsafe or corrupt.
    """
    path = Path(path)
    try:
        obj = safe_unpickle(path.read_bytes())
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing CIFAR batch {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- a garbled pickle stream can raise almost any exception type
        raise UserError(f"corrupt CIFAR batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"corrupt CIFAR batch {path}: expected a pickled dict, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"corrupt CIFAR batch {path}: 'data' must be a uint8 array N x 3072")
    try:
        lab = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"corrupt CIFAR batch {path}: 'labels' must be a list of integers") from None
    if lab.shape != (data.shape[0],):
        raise UserError(f"corrupt CIFAR batch {path}: {data.shape[0]} images but labels of shape {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise UserError(f"corrupt CIFAR batch {path}: labels outside 0..9")
    # row = [R (1024) | G (1024) | B (1024)], each 32x32 row-major -> (N, 3, 32, 32)
    return data.reshape(-1, 3, 32, 32), lab


def _batch_dir(root: Path) -> Path:
    return (
        root if (root / "test_batch").is_file() or (root / "data_batch_1").is_file() else root / BASE_FOLDER
    )


def _download(root: Path) -> None:
    archive = download_file([ARCHIVE_URL], root / ARCHIVE_NAME, ARCHIVE_MD5)
    dest = root / BASE_FOLDER
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f"{BASE_FOLDER}/{name}" for name in BATCH_MD5}
    # Extract only the expected regular files, by name, never trusting member paths.
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if member.name in wanted and member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    (dest / Path(member.name).name).write_bytes(src.read())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot extract {archive}: {e}") from None
    for name, md5 in BATCH_MD5.items():
        if not (dest / name).is_file() or md5_file(dest / name) != md5:
            raise UserError(f"{archive} did not yield {name} with MD5 {md5}; delete it and retry")


def load_cifar10(
    *,
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
    resize_mode: str = "auto",
) -> ImageDataset:
    """CIFAR-10: 32x32 RGB, 50,000 train (data_batch_1..5) / 10,000 test (test_batch), 10 classes.

    `root` is the directory holding cifar-10-batches-py/ (or the batches themselves);
    default $DIFFATLAS_CACHE/cifar10 (~/.cache/diffatlas/cifar10).
    """
    if split == "all":
        names = SPLIT_FILES["train"] + SPLIT_FILES["test"]
    elif split in SPLIT_FILES:
        names = SPLIT_FILES[split]
    else:
        raise UserError(f"unknown split {split!r} for cifar10; choose one of: train, test, all")
    base = Path(root).expanduser() if root is not None else cache_root() / "cifar10"
    folder = _batch_dir(base)
    if download and any(not (folder / n).is_file() for n in names):
        _download(base)
        folder = base / BASE_FOLDER
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"cifar10: missing {', '.join(missing)} in {folder}; extract {ARCHIVE_NAME} "
            f"({ARCHIVE_URL}) so that these files are there, pass root=DIR, or pass download=True"
        )
    parts = [read_cifar_batch(folder / n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    images = pad_or_resize(images, resolution, resize_mode)
    return ImageDataset(images, labels, name="cifar10", split=split, num_classes=10, class_names=CLASSES)
