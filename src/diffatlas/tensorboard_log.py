"""TensorBoard event files of a run: training ticks, evaluation metrics and sample grids.

Events go to RUN/tensorboard/, one TensorBoard run per diffatlas run. Every event's step is the
number of training images seen (kimg x 1000), so training and evaluation curves share one axis:

    train/loss            mean denoising loss over the tick (the run's model.weighting)
    train/lr              learning rate at the end of the tick
    train/images_per_s    training throughput over the tick
    train/kimg            thousands of images seen
    train/peak_mem_mb     peak memory (CUDA allocator, or the process's max RSS on the CPU)
    eval/<metric>/<setting>   every metric of every evaluated snapshot; the setting names the sampler,
                              steps, grid, guidance, options, extractor, n and seed
    samples/<setting>     a grid of the snapshot's first samples (at most 64) for that setting

A study links each run's folder into OUT/tensorboard/<axis values> (a symlink tree, the layout
TensorBoard's README recommends for naming runs), so `tensorboard --logdir OUT/tensorboard`
overlays the runs of a study by configuration.

On when the `tensorboard` package is installed (the optional extra `diffatlas[tensorboard]`) and the
run's `train.tensorboard` is true; otherwise every call here does nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

TB_DIR = "tensorboard"
MAX_GRID = 64


def available() -> bool:
    """Whether the tensorboard package (which torch.utils.tensorboard writes with) is importable."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+\-/]", "_", text)


def setting_tag(entry: dict[str, Any]) -> str:
    """The evaluation setting of a metrics.jsonl entry as a tag component, e.g.
    'ddim-x50_discrete_classifier_n1000_seed0'."""
    parts = [f"{entry.get('sampler')}-x{entry.get('steps')}", str(entry.get("grid"))]
    if entry.get("guidance"):
        parts.append(str(entry["guidance"]))
    parts += [f"{k}={v}" for k, v in sorted((entry.get("options") or {}).items())]
    if entry.get("clip") not in (None, "none"):
        parts.append(f"clip={entry['clip']}")
    parts += [str(entry.get("extractor")), f"n{entry.get('n')}", f"seed{entry.get('seed')}"]
    return _tag("_".join(parts))


def _images(kimg: float) -> int:
    return int(round(float(kimg) * 1000))


class RunLog:
    """The event writer of one run (training); every method is a no-op when it is disabled."""

    def __init__(self, run_dir: str | Path, enabled: bool, *, purge_kimg: float | None = None,
                 header: str | None = None) -> None:
        self.writer = None
        if not (enabled and available()):
            return
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run replays the steps after its snapshot: purge what an interrupted attempt logged there.
        purge = _images(purge_kimg) + 1 if purge_kimg else None
        self.writer = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=purge, filename_suffix=".train")
        if header:
            self.writer.add_text("run", header, global_step=purge or 0)

    def tick(self, rec: dict[str, Any]) -> None:
        """One stats.jsonl record of the training loop."""
        if self.writer is None:
            return
        step = _images(rec["kimg"])
        for key in ("loss", "lr", "images_per_s", "kimg", "peak_mem_mb"):
            if rec.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", float(rec[key]), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def log_evaluation(run_dir: str | Path, enabled: bool, kimg: float, entries: Iterable[dict[str, Any]],
                   samples: Any = None) -> None:
    """Every metric of one evaluated snapshot (metrics.jsonl entries) and a grid of its samples
    ((N, C, H, W) in [-1, 1]; vector data get no image), written and closed in one call."""
    entries = [e for e in entries if e.get("value") is not None]
    if not (enabled and available()) or not entries:
        return
    from torch.utils.tensorboard import SummaryWriter

    from .sampling import grid_image  # on use: this module imports no torch; sampling does

    step = _images(kimg)
    writer = SummaryWriter(str(Path(run_dir) / TB_DIR), filename_suffix=".eval")
    try:
        for e in entries:
            writer.add_scalar(f"eval/{_tag(str(e['metric']))}/{setting_tag(e)}", float(e["value"]), step)
        if samples is not None and getattr(samples, "ndim", 0) == 4:
            writer.add_image(f"samples/{setting_tag(entries[0])}", grid_image(samples[:MAX_GRID]), step,
                             dataformats="HWC")
    finally:
        writer.close()


def link_runs(out: str | Path, runs: Iterable[tuple[str, Path]]) -> None:
    """OUT/tensorboard/<name> -> RUN/tensorboard for each (name, run directory): relative links, made before
    the runs write anything (TensorBoard shows each run once its folder exists). Names are sanitised to
    letters, digits and _.=+,-; nothing is done without tensorboard or where links are not possible."""
    if not available():
        return
    root = Path(out) / TB_DIR
    for name, run_dir in runs:
        link = root / re.sub(r"[^A-Za-z0-9_.=+,\-]", "_", name.replace(", ", ","))
        if link.is_symlink() or link.exists():
            continue
        try:
            root.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(Path(run_dir).resolve() / TB_DIR, root.resolve()), link, target_is_directory=True)
        except OSError:
            return
