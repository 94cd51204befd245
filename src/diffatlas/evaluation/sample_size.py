"""The sample-size analysis of one snapshot: is IS less sensitive to the number of samples than FID?
It shares evaluate_run's set-up (run config, plan, extractor, real side, sampling)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text, json_clean
from ..metrics.sample_size import plot_sample_size, sample_size_table, sensitivity_summary
from ..model import make_dynamics
from ..samplers.clip import resolve_clip
from ..sampling import load_run, read_run_config, run_plan
from .inputs import Reference, load_extractor, sample_images
from .log import select_snapshots
from .run import check_metrics, dataset_info

LogFn = Callable[[str], Any]


def _quiet(_: str) -> None:
    return None


SAMPLE_SIZE_METRICS = ("fid", "is", "kid")


def sample_size_run(
    run_dir: str | Path,
    *,
    metrics: str | Sequence[str] = ("fid", "is"),
    ns: Sequence[int] = (100, 200, 500, 1000),
    n_boot: int = 20,
    snapshot: str | float = "last",
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    options: dict[str, Any] | None = None,
    nfe: int | None = None,
    clip: str | None = None,
    extractor: str = "classifier",
    extractor_path: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    progress: bool | None = None,
    log: LogFn | None = print,
) -> dict[str, Any]:
    """"Is IS less sensitive to the number of samples than FID?" on one snapshot of a run.

    Samples max(ns) images (seeds seed..), then measures each metric on nested random subsets of
    size n in ns with percentile-bootstrap intervals (metrics.sample_size.sample_size_table; IS with
    10 splits, so every n >= 10), and FID-infinity (Chong & Forsyth 2020). Writes a PNG (|relative
    change| against the largest n, and relative interval width, per metric), the rows as JSON and a
    Markdown table next to it (default RUN/sample-size/sample-size-<kimg>-<sampler>-<steps>.png).

    Returns:
        {"rows", "summary" (mean |relative change| per metric: smaller = less sensitive), "verdict",
        "kimg", "png", "json", "md", "sampler", "grid", "steps", "nfe", "extractor", "extractor_hash"}.
    """
    log = log or _quiet
    run_dir = Path(run_dir)
    names = check_metrics(metrics)
    bad = [m for m in names if m not in SAMPLE_SIZE_METRICS]
    if bad:
        raise UserError(f"the sample-size analysis covers {', '.join(SAMPLE_SIZE_METRICS)}; not {', '.join(bad)}")
    try:
        ns = sorted({int(v) for v in ns})
    except (TypeError, ValueError):
        raise UserError(f"sample counts must be integers, got {ns!r}") from None
    if not ns or ns[0] < 10:
        raise UserError(f"sample counts must be integers >= 10 (IS uses 10 splits), got {ns}")
    if int(n_boot) < 0:
        raise UserError(f"the number of bootstrap resamples must be >= 0, got {n_boot}")
    cfg = read_run_config(run_dir)
    shape, _ = dataset_info(run_dir)
    if len(shape) != 3:
        raise UserError(f"image metrics need an image dataset; this run's samples have shape {shape}")
    kimg, snap = select_snapshots(run_dir, snapshot)[-1]
    plan = run_plan(cfg, make_dynamics(cfg), sampler=sampler, steps=steps, grid=grid, options=options, nfe=nfe)
    sampler, grid, steps, opts = plan.sampler, plan.grid, plan.steps, plan.options
    clip = resolve_clip(clip or cfg.sample.clip, shape)
    dev = torch.device(validate.device(device))
    validate.seeds(seed, ns[-1], "seed")
    per = 4 * math.prod(shape) * 3
    validate.memory(per * ns[-1], f"{ns[-1]} samples of shape {tuple(shape)}", "cpu", per, "samples")
    if out is not None:
        validate.figure_path(out, "output plot")
    else:
        validate.writable_dir(run_dir, "run directory")
    ext = load_extractor(extractor, cfg, extractor_path, dev, log)
    n_max = ns[-1]
    run = load_run(run_dir, kimg, device=dev)
    x, nfe = sample_images(run.denoiser, run.shape, list(range(int(seed), int(seed) + n_max)), sampler=sampler, grid=grid,
                     steps=int(steps), cond=(torch.arange(n_max) % run.num_classes) if run.num_classes else None,
                     options=opts, clip=clip, device=dev, progress=progress, log=log, what=f"sampling kimg {kimg:g}")
    del run
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    feats, logits = ext.features_and_logits(x)
    reference = Reference(cfg, ext, log)
    ref = reference.stats()
    real = reference.features(n_max) if "kid" in names else None
    rows = sample_size_table(feats, logits, ref.frechet(), ns, real_features=real, n_boot=int(n_boot), seed=int(seed),
                             is_splits=10)
    keep = set(names) | ({"fid_infinity"} if "fid" in names else set())
    rows = [json_clean(r) for r in rows if r["metric"] in keep]
    summary = sensitivity_summary(rows)
    if "fid" in summary and "is" in summary:
        less = summary["is"] < summary["fid"]
        verdict = (f"IS is {'less' if less else 'not less'} sensitive to the number of samples than FID: mean "
                   f"|relative change| against n={n_max}: IS {summary['is']:.4f}, FID {summary['fid']:.4f}")
    else:
        verdict = f"mean |relative change| against n={n_max}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
    png = Path(out) if out is not None else run_dir / "sample-size" / f"sample-size-{kimg:g}-{sampler}-{steps}.png"
    title = f"{run_dir.name} at kimg {kimg:g}: {sampler} x{steps}, {ext.name} features"
    plot_sample_size(rows, png, title=title)
    result = {"run": str(run_dir), "kimg": kimg, "snapshot": snap.name, "sampler": sampler, "grid": grid,
              "steps": int(steps), "options": json_clean(opts), "clip": clip, "nfe": int(nfe),
              "nfe_budget": plan.nfe_budget, "seed": int(seed), "ns": ns,
              "n_boot": int(n_boot), "extractor": ext.name, "extractor_hash": ext.weights_hash,
              "dataset": reference.data_id, "reference_split": reference.split, "n_real": ref.n,
              "rows": rows, "summary": summary, "verdict": verdict}
    json_path, md_path = png.with_suffix(".json"), png.with_suffix(".md")
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, sample_size_markdown(result))
    result.update({"png": str(png), "json": str(json_path), "md": str(md_path)})
    return result


def sample_size_markdown(result: dict[str, Any]) -> str:
    """A Markdown table of sample_size_run's rows: metric, n, value, interval, relative change/width."""
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    setting = (f"{result['sampler']} x{result['steps']} ({result['grid']} grid, NFE {result['nfe']}, x0 clip "
               f"{result.get('clip', 'not recorded')}), {result['extractor']} features "
               f"({result['extractor_hash']}), reference {result['dataset']}/{result['reference_split']} "
               f"({result['n_real']} images), {result['n_boot']} bootstrap resamples.")
    lines = [f"# Sample size: {result['run']} at kimg {result['kimg']:g}", "", setting, "",
             "| metric | n | value | 95% interval | rel. change vs largest n | rel. interval width |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for r in result["rows"]:
        iv = "-" if r.get("low") is None else f"[{f(r['low'])}, {f(r['high'])}]"
        lines.append(f"| {r['metric']} | {f(r.get('n'))} | {f(r.get('value'))} | {iv} | {f(r.get('rel_change'))} | "
                     f"{f(r.get('rel_width'))} |")
    lines += ["", result["verdict"], ""]
    return "\n".join(lines)
