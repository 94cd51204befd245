"""Cached reference statistics: (mean, covariance, n) of real-image features.

A reference is identified by (dataset, split, extractor name, extractor weights hash, n); its
statistics are computed once and stored as an .npz file under a cache folder (default
``~/.cache/diffatlas/refstats``, or $DIFFATLAS_CACHE/refstats), written atomically (temp file +
os.replace) so that concurrent evaluations never read a half-written file.  Files are read with
``allow_pickle=False``.  (The same scheme as NVlabs/edm ``fid.py ref``: statistics of the real data are a
fixed artefact, not something recomputed per evaluation.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..io import atomic_write, cache_root
from .extractors import FeatureExtractor
from .stats import FrechetReference, StreamingMoments


class BatchSource(Protocol):
    """Anything with ``__len__`` and ``get_batch(idx) -> (x (B, C, H, W) in [-1, 1], labels)``."""

    def __len__(self) -> int: ...

    def get_batch(self, idx: Any) -> tuple[Tensor, Any]: ...


@dataclass(frozen=True)
class RefKey:
    """What a set of reference statistics was computed from."""

    dataset: str
    split: str
    extractor: str
    weights_hash: str
    n: int

    def filename(self) -> str:
        def clean(s: str) -> str:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))

        return (
            f"{clean(self.dataset)}-{clean(self.split)}-{clean(self.extractor)}-"
            f"{clean(self.weights_hash)}-n{int(self.n)}.npz"
        )


@dataclass
class RefStats:
    """Reference statistics: mu (D,), cov (D, D) in float64 over n real samples, and their key."""

    key: RefKey
    mu: np.ndarray
    cov: np.ndarray
    n: int
    path: Path | None = None

    def frechet(self) -> FrechetReference:
        """The Frechet-distance reference built from these statistics."""
        return FrechetReference(self.mu, self.cov)


def default_cache_dir() -> Path:
    """<cache root>/refstats: $DIFFATLAS_CACHE/refstats if set, else ~/.cache/diffatlas/refstats."""
    return cache_root() / "refstats"


def _key_fields(key: RefKey) -> dict[str, np.ndarray]:
    return {
        "dataset": np.array(key.dataset),
        "split": np.array(key.split),
        "extractor": np.array(key.extractor),
        "weights_hash": np.array(key.weights_hash),
    }


def save_reference_stats(stats: RefStats, cache_dir: str | Path | None = None) -> Path:
    """Write stats to <cache_dir>/<key>.npz atomically; returns the path."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / stats.key.filename()
    atomic_write(path, lambda f: np.savez(f, mu=stats.mu, cov=stats.cov, n=np.int64(stats.n), **_key_fields(stats.key)))
    stats.path = path
    return path


def load_reference_stats(key: RefKey, cache_dir: str | Path | None = None) -> RefStats | None:
    """The cached statistics for `key`, or None if absent, unreadable or recorded under another key."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / key.filename()
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = RefKey(
                str(z["dataset"]), str(z["split"]), str(z["extractor"]), str(z["weights_hash"]), int(z["n"])
            )
            mu, cov = np.asarray(z["mu"], np.float64), np.asarray(z["cov"], np.float64)
    except (OSError, KeyError, ValueError):
        return None
    d = mu.shape[0] if mu.ndim == 1 else -1
    if stored != key or cov.shape != (d, d):
        return None
    return RefStats(key, mu, cov, key.n, path)


def _batches(real: Tensor | BatchSource, n: int, batch_size: int):
    if isinstance(real, Tensor):
        for i in range(0, n, batch_size):
            yield real[i : min(i + batch_size, n)]
    else:
        for i in range(0, n, batch_size):
            x, _ = real.get_batch(torch.arange(i, min(i + batch_size, n)))
            yield x


def reference_stats(
    real: Tensor | BatchSource,
    extractor: FeatureExtractor,
    dataset: str,
    split: str,
    n: int | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 500,
    use_cache: bool = True,
) -> RefStats:
    """Mean and covariance of the extractor's features over the first n real samples, cached.

    Args:
        real: images (N, C, H, W) in [-1, 1], or a data set with ``len`` and ``get_batch(idx)``.
        extractor: the feature extractor (its name and weights hash enter the key).
        dataset, split: names recorded in the key (e.g. "digits", "train").
        n: number of samples (default: all of them); the first n in order are used, so the
            statistics are a deterministic function of the key.
        cache_dir: cache folder (default :func:`default_cache_dir`).
        use_cache: False to recompute (and overwrite) even when a cached file matches.
    Returns:
        RefStats with mu (D,), cov (D, D) in float64; ``path`` is the cache file.
    """
    total = len(real)
    n = total if n is None else int(n)
    if not 2 <= n <= total:
        raise UserError(f"reference statistics need 2 <= n <= {total} samples of {dataset}/{split}, got {n}")
    key = RefKey(dataset, split, extractor.name, extractor.weights_hash, n)
    if use_cache:
        hit = load_reference_stats(key, cache_dir)
        if hit is not None:
            return hit
    moments = StreamingMoments()
    for x in _batches(real, n, batch_size):
        moments.update(extractor.features(x))
    stats = RefStats(key, moments.mean, moments.cov, moments.n)
    save_reference_stats(stats, cache_dir)
    return stats
