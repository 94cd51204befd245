"""Class-conditional evaluation of guidance: class accuracy and quality against the guidance scale.

For each scale, n_per_class samples of every class are drawn with the same per-sample seeds (so every
scale starts from identical noise: differences are the guidance's alone), then scored by the
EVALUATION classifier (a metrics.ClassifierExtractor trained on clean data, independent of the guidance
classifier, so the accuracy is not the guidance classifier grading its own adversarial examples):

    class accuracy   fraction of samples the evaluation classifier assigns to their target class,
                     overall and per class
    FID, IS          overall (all classes vs the real split) and per class (class-c samples vs real
                     class-c images), via metrics.compute_metrics

Writes guidance_sweep.jsonl (one record per scale), guidance_sweep.md (table) and guidance_sweep.png
(FID / IS and class accuracy against scale), plus a sample grid per scale.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import dataset_from_config
from ..errors import UserError
from ..io import atomic_write, atomic_write_text
from ..metrics import compute_metrics, load_classifier
from ..samplers.clip import resolve_clip
from ..sampling import generate, load_run, run_plan, save_image_grid
from .spec import GUIDANCE, dataset_num_classes, make_guidance, parse_guidance_spec, resolve_classifier


def _real_images(cfg: Any) -> tuple[Tensor, Tensor, str]:
    """Real images and labels of the run's dataset: the test split when it has one, else its own split."""
    d = cfg.data
    for split in ("test", d.split):
        try:
            ds = dataset_from_config(d, split)
        except (UserError, OSError):
            continue
        if ds.labels is None:
            raise UserError(f"a class-conditional evaluation needs a labelled dataset; {d.name} has no labels")
        x, y = ds.get_batch(torch.arange(len(ds)))
        return x.float().cpu(), y.long().cpu(), split
    raise UserError(f"cannot load the real images of dataset {d.name!r} for the guidance sweep")


def _quality(fake: Tensor, real: Tensor, extractor: Any, splits: int) -> dict[str, float]:
    """FID against `real` and IS over `splits` splits (Salimans et al. 2016 use 10 splits of 5,000)."""
    if fake.shape[0] < 2 or real.shape[0] < 2:
        return {"fid": float("nan"), "is": float("nan")}
    rec = compute_metrics(fake, real, extractor, metrics=("fid", "is"), is_splits=max(1, min(splits, fake.shape[0])))
    return {"fid": rec["fid"]["value"], "is": rec["is"]["value"]}


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:

    head = "| kind | scale | class accuracy | FID | IS | mean per-class FID | NFE | seconds |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = [f"| {r['kind']} | {r['scale']:g} | {r['class_accuracy']:.3f} | {r['fid']:.3f} | {r['is']:.3f} | "
             f"{r['fid_per_class_mean']:.3f} | {r['nfe']} | {r['seconds']:.1f} |" for r in rows]
    r0 = rows[0] if rows else {}
    note = (f"\n\n{r0.get('n_per_class')} samples per class; sampler {r0.get('sampler')}, {r0.get('steps')} steps on the "
            f"{r0.get('grid')} grid; evaluation classifier {r0.get('extractor')} ({r0.get('weights_hash')}); real "
            f"images: {r0.get('real_split')} split.\n") if rows else "\n"
    atomic_write_text(path, "# Guidance sweep\n\n" + head + "\n".join(lines) + note)


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Two panels against the guidance scale: FID and IS (left), class accuracy (right). Writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    scales = [r["scale"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(scales, [r["fid"] for r in rows], "o-", color="C0", label="FID (lower is better)")
    a1.set_xlabel("guidance scale")
    a1.set_ylabel("FID", color="C0")
    a1b = a1.twinx()
    a1b.plot(scales, [r["is"] for r in rows], "s--", color="C1", label="IS (higher is better)")
    a1b.set_ylabel("IS", color="C1")
    a1.set_title("sample quality")
    a2.plot(scales, [r["class_accuracy"] for r in rows], "o-", color="C2")
    if rows:
        a2.axhline(1.0 / len(rows[0]["class_accuracy_per_class"]), color="gray", ls=":", label="chance")
        a2.legend(loc="lower right")
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("guidance scale")
    a2.set_ylabel("class accuracy (evaluation classifier)")
    a2.set_title(f"{rows[0]['kind'] if rows else ''} guidance")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def guidance_sweep(run_dir: str | Path, kind: str, scales: Sequence[float], *, n_per_class: int, extractor: Any,
                   classifier_dir: str | Path | None = None, sampler: str | None = None, steps: int | None = None,
                   seed: int = 0, out_dir: str | Path, grid: str | None = None, snapshot: Any = None,
                   device: str | torch.device = "cpu", batch: int = 256, log: Any = print) -> list[dict[str, Any]]:
    """Sample a run at each guidance scale and measure class accuracy and FID/IS.

    Args:
        run_dir: a trained run (sampling.load_run; EMA weights of `snapshot`, default the last).
        kind: "classifier" or "cfg" (GUIDANCE).
        scales: guidance scales (classifier: s; cfg: w), each >= 0.
        n_per_class: samples per class; sample i has seed `seed + i` at every scale and target class
            i // n_per_class.
        extractor: the evaluation classifier: a metrics.ClassifierExtractor (`logits(x)`, `features(x)`) or the
            directory of one (metrics.load_classifier).
        classifier_dir: the noise-aware guidance classifier (kind "classifier"), or "untrained[:SEED]".
        sampler, steps, grid: default to the run's sample config (sampling.run_plan); x0 clipping is the
            run's sample.clip.
    Returns:
        One record per scale: kind, scale, class_accuracy, class_accuracy_per_class (K,), fid, is,
        fid_per_class, is_per_class, fid_per_class_mean, nfe, seconds, sampler, grid, steps, n_per_class,
        kimg, extractor, weights_hash, real_split. Also written to out_dir (see module docstring).
    """
    GUIDANCE.get(kind)
    if int(n_per_class) < 1:
        raise UserError(f"n_per_class must be >= 1, got {n_per_class}")
    scales = [parse_guidance_spec(f"{kind}:{s}")[1] for s in scales]  # type: ignore[index]
    if not scales:
        raise UserError("a guidance sweep needs at least one scale")
    if isinstance(extractor, (str, Path)):
        extractor = load_classifier(extractor, device="cpu")
    run = load_run(run_dir, snapshot, device=device)
    k = dataset_num_classes(run)
    if not k:
        raise UserError("a guidance sweep needs a labelled dataset; this run's dataset has no classes")
    if int(extractor.num_classes) != k:
        raise UserError(f"the evaluation classifier has {extractor.num_classes} classes, the run's dataset {k}")
    plan = run_plan(run.cfg, run.denoiser.dynamics, sampler=sampler, steps=steps, grid=grid)
    sampler, grid, steps = plan.sampler, plan.grid, plan.steps
    clip = resolve_clip(run.cfg.sample.clip, run.shape)
    real_x, real_y, real_split = _real_images(run.cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    n = int(n_per_class) * k
    labels = torch.arange(k).repeat_interleave(int(n_per_class))  # (n,): class i // n_per_class
    seeds = list(range(int(seed), int(seed) + n))
    classifier = None
    if kind == "classifier":
        classifier = resolve_classifier(run, classifier_dir, device)
    rows: list[dict[str, Any]] = []
    for scale in scales:
        start = time.perf_counter()
        wrap = make_guidance(run, kind, scale, classifier=classifier, device=device)
        x, nfe = generate(wrap(run.denoiser), run.shape, seeds, sampler=sampler, grid=grid, steps=steps, cond=labels,
                          options=plan.options, clip=clip, batch=batch, device=device)
        pred = extractor.logits(x).argmax(1)
        hit = (pred == labels).double()
        per_class_acc = [float(hit[labels == c].mean()) for c in range(k)]
        # IS splits of >= 50 samples (at most 10) overall; one split per class, since a split of a few
        # samples has an IS near 1 whatever they look like
        overall = _quality(x, real_x, extractor, splits=min(10, max(1, n // 50)))
        per_fid, per_is = [], []
        for c in range(k):
            q = _quality(x[labels == c], real_x[real_y == c], extractor, splits=1)
            per_fid.append(q["fid"])
            per_is.append(q["is"])
        rec = {
            "kind": kind, "scale": scale, "class_accuracy": float(hit.mean()), "class_accuracy_per_class": per_class_acc,
            "fid": overall["fid"], "is": overall["is"], "fid_per_class": per_fid, "is_per_class": per_is,
            "fid_per_class_mean": sum(per_fid) / k, "nfe": int(nfe), "seconds": round(time.perf_counter() - start, 3),
            "sampler": sampler, "grid": grid, "steps": int(steps), "options": plan.options, "clip": clip,
            "n_per_class": int(n_per_class), "seed": int(seed),
            "kimg": run.kimg, "snapshot": run.snapshot.name, "extractor": extractor.name,
            "weights_hash": extractor.weights_hash, "real_split": real_split,
            "classifier": str(classifier_dir) if kind == "classifier" else None,
        }
        rows.append(rec)
        show = torch.cat([x[labels == c][: min(8, int(n_per_class))] for c in range(k)])
        save_image_grid(show, out / f"samples-{kind}-{scale:g}.png", nrow=min(8, int(n_per_class)))
        if log is not None:
            log(f"{kind} scale {scale:g}: class accuracy {rec['class_accuracy']:.3f}  FID {rec['fid']:.3f}  "
                f"IS {rec['is']:.3f}  ({rec['seconds']:.1f} s)")
    atomic_write_text(out / "guidance_sweep.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _write_table(rows, out / "guidance_sweep.md")
    plot_sweep(rows, out / "guidance_sweep.png")
    return rows
