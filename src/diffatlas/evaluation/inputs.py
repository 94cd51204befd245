"""What an evaluation consumes: the feature extractor, the real side (reference statistics and real
features), held-out data for the likelihood, and the generated samples of a setting."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import dataset_from_config
from ..errors import UserError
from ..metrics import EXTRACTORS, reference_stats
from ..metrics.eval_classifier import data_id, evaluation_classifier
from ..sampling import generate

SAMPLE_BATCH = 256  # samples per sampler call (memory and progress; the samples do not depend on it)
REAL_SUBSET_SEED = 0  # the permutation that picks the real images of KID and precision/recall

LogFn = Callable[[str], Any]


def load_extractor(name: str, cfg: Any, path: str | Path | None, device: torch.device, log: LogFn) -> Any:
    if name == "classifier":
        d = cfg.data
        return evaluation_classifier(d.name, root=d.root, resolution=d.resolution, options=d.options, path=path,
                                     device=device, log=log)
    ext = EXTRACTORS.get(name)(path, device=device)
    if getattr(ext, "standard", True) is False:
        log(f"{name} weights {getattr(ext, 'weights_path', path)} (sha256 {ext.weights_hash}) are not the standard "
            "FID weights file: its numbers are not comparable to published ones")
    return ext


class Reference:
    """The real side, computed on first use: cached FID statistics of the whole split, and the
    features of a fixed subset of real images for KID and precision/recall."""

    def __init__(self, cfg: Any, extractor: Any, log: LogFn) -> None:
        self.cfg, self.extractor, self.log = cfg, extractor, log
        self._dataset = None
        self._stats = None
        self._frechet = None
        self._real: dict[int, np.ndarray] = {}

    @property
    def dataset(self):
        if self._dataset is None:
            d = self.cfg.data
            self._dataset = dataset_from_config(d)
        return self._dataset

    @property
    def split(self) -> str:
        return str(self.cfg.data.split)

    @property
    def data_id(self) -> str:
        d = self.cfg.data
        return data_id(d.name, d.resolution, d.options, d.root, with_root=True)

    def stats(self):
        """RefStats over the whole split (from the cache when present)."""
        if self._stats is None:
            t = time.perf_counter()
            self._stats = reference_stats(self.dataset, self.extractor, self.data_id, self.split)
            self.log(f"reference statistics {self.data_id}/{self.split} ({self._stats.n} images, "
                     f"{self.extractor.name}): {time.perf_counter() - t:.1f} s, {self._stats.path}")
        return self._stats

    def frechet(self):
        """The Frechet reference of :meth:`stats` (its covariance's square root is computed once)."""
        if self._frechet is None:
            self._frechet = self.stats().frechet()
        return self._frechet

    def features(self, m: int) -> np.ndarray:
        """(m', D) float64 features of m' = min(m, split size) real images chosen by a fixed permutation."""
        ds = self.dataset
        m = min(int(m), len(ds))
        if m not in self._real:
            perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:m]
            idx = perm.sort().values
            chunks = []
            for i in range(0, m, 1024):
                x, _ = ds.get_batch(idx[i:i + 1024])
                chunks.append(self.extractor.features(x.float()).double().numpy())
            self._real[m] = np.concatenate(chunks)
        return self._real[m]


def likelihood_data(cfg: Any, m: int) -> tuple[Tensor, Tensor | None, str]:
    """min(m, split size) data points (with labels, or None) for the likelihood, chosen by the fixed
    permutation REAL_SUBSET_SEED: from the test split when the dataset has one (held-out data, as NLLs are
    reported), else from the split the run trained on. Returns (x, labels, split name)."""
    d = cfg.data
    try:
        ds, split = dataset_from_config(d, "test"), "test"
    except (UserError, OSError):
        ds, split = dataset_from_config(d), d.split
    m = min(int(m), len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:m].sort().values
    x, labels = ds.get_batch(idx)
    return x.float().cpu(), (labels.cpu() if labels is not None else None), str(split)


def sample_images(denoiser: Any, shape: tuple[int, ...], seeds: list[int], *, sampler: str, grid: str, steps: int,
            cond: Tensor | None, options: dict[str, Any], clip: str, device: torch.device, progress: bool | None,
            log: LogFn, what: str) -> tuple[Tensor, int]:
    """generate() in chunks of SAMPLE_BATCH seeds (identical to one call: a sample depends on its seed alone) with
    progress reports: a tqdm bar (progress=True), log lines (None, when there are several chunks), or nothing."""
    chunks = [(i, seeds[i:i + SAMPLE_BATCH]) for i in range(0, len(seeds), SAMPLE_BATCH)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seeds), desc=what, unit="img", leave=False)
    outs, nfe = [], 0
    t = time.perf_counter()
    for i, chunk in chunks:
        c = cond[i:i + len(chunk)] if cond is not None else None
        x, nfe = generate(denoiser, shape, chunk, sampler=sampler, grid=grid, steps=steps, cond=c, options=options,
                          clip=clip, batch=SAMPLE_BATCH, device=device)
        outs.append(x)
        if bar is not None:
            bar.update(len(chunk))
        elif progress is None and len(chunks) > 1:
            log(f"{what}: {i + len(chunk)}/{len(seeds)} samples ({time.perf_counter() - t:.1f} s)")
    if bar is not None:
        bar.close()
    return torch.cat(outs), nfe
