"""GPU predictions of a study's time from rates measured on a GPU.

GPU predictions (:func:`gpu_times`, :func:`gpu_estimate`) use measured rates recorded in :data:`GPU_RATES` (from
benchmarks/RESULTS.md), scaled by each network's forward FLOPs (networks.count_flops)."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from ... import config as C
from ...errors import UserError
from ...guidance import train_noisy_classifier_for, untrained_classifier
from ...metrics.extractors import SmallCNN
from ...metrics.inception import FIDInceptionV3
from ...model import make_network
from ...networks import count_flops
from ..spec import Evaluation, RunSpec
from ..status import format_duration
from .measure import _load_split
from .workers import makespan
from .workload import Work, network_label


@dataclass(frozen=True)
class GpuRates:
    """Rates measured on one GPU model. The reference network is ddpm-cifar10 at 3x32x32
    (`reference_gflop` forward per image); `step_img_s`: its training step alone (network, loss,
    optimizer) at batch 128 by mode; `end_to_end_img_s`: `diffatlas train` end to end in
    `end_to_end_mode`; `small_step_s`: the end-to-end time per step of a small network without CUDA
    graphs (host-bound: the least a step takes there)."""

    name: str
    measured: str
    reference_gflop: float
    end_to_end_img_s: tuple[float, float]
    end_to_end_mode: str
    step_img_s: dict
    small_step_s: float
    small_what: str


# From benchmarks/RESULTS.md ("Networks: diffatlas U-Net vs diffusers UNet2DModel"), one NVIDIA H200,
# torch 2.11.0+cu130, 2026-11-26: ddpm-cifar10 (12.44 GFLOP forward per 3x32x32 image) at batch 128.
# Training step alone: fp32 eager 2,063.1 img/s; bf16 channels_last eager 2,247.2; bf16 channels_last
# torch.compile 3,599.0; the same with mode reduce-overhead (CUDA graphs) 5,058.7. End to end
# (`diffatlas train`, bf16 + channels_last + compile reduce-overhead): 3,870-3,935 img/s per tick.
# unet-s on digits padded to 32x32 at batch 256, bf16 + channels_last + compile (default mode), end
# to end: 4,400-5,200 img/s, i.e. 49-58 ms per step whatever its FLOPs: the host sets the pace.
GPU_RATES: dict[str, GpuRates] = {
    "h200": GpuRates(
        name="NVIDIA H200", measured="benchmarks/RESULTS.md, 2026-11-26, torch 2.11.0+cu130",
        reference_gflop=12.44, end_to_end_img_s=(3870.0, 3935.0), end_to_end_mode="bf16 compiled, CUDA graphs",
        step_img_s={"fp32 eager": 2063.1, "bf16 eager": 2247.2, "bf16 compiled": 3599.0,
                    "bf16 compiled, CUDA graphs": 5058.7},
        small_step_s=256 / 5200, small_what="unet-s on 1x32x32 at batch 256, compiled without CUDA graphs"),
}


def gpu_mode(train_cfg: Any) -> tuple[str, str]:
    """(measured mode, note) of a run's training settings on the GPU table."""
    bf16 = train_cfg.precision == "bf16"
    if not train_cfg.compile:
        return ("bf16 eager" if bf16 else "fp32 eager"), ""
    if not bf16:
        return "fp32 eager", "fp32 with torch.compile was not measured: the fp32 eager rate is used"
    if train_cfg.compile_mode == "reduce-overhead":
        return "bf16 compiled, CUDA graphs", ""
    return "bf16 compiled", ""


NATIVE_DATA = {  # shape, classes, train-split size of the datasets whose files may be absent
    "digits": ((1, 8, 8), 10, 1500), "mnist": ((1, 28, 28), 10, 60000), "fashion-mnist": ((1, 28, 28), 10, 60000),
    "cifar10": ((3, 32, 32), 10, 50000), "image-folder": ((3, 0, 0), None, None),
}


def data_shape(cfg: Any) -> tuple[tuple[int, ...], int | None, int | None, str]:
    """(shape, classes, train-split size, source) of a run's data: from the dataset when it loads here,
    else from NATIVE_DATA and data.resolution."""
    d = cfg.data
    try:
        ds = _load_split(cfg, d.split)
        return tuple(int(s) for s in ds.shape), ds.num_classes, len(ds), "shape read from the dataset"
    except (UserError, OSError) as e:
        if d.name not in NATIVE_DATA:
            raise UserError(f"the shape of {d.name} is unknown here ({e})") from None
        shape, k, size = NATIVE_DATA[d.name]
        if d.resolution:
            shape = (shape[0], int(d.resolution), int(d.resolution))
        if 0 in shape:
            raise UserError(f"the shape of {d.name} is unknown here without data.resolution ({e})") from None
        return shape, k, size, f"the shape of {d.name}{' at resolution ' + str(d.resolution) if d.resolution else ''}; its files are not here"


def _flops(module: Any, *args: Any) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    return int(counter.get_total_flops())


def model_flops(cfg: Any, shape: tuple[int, ...], classes: int | None, extractor: str) -> dict:
    """Forward FLOPs per sample: the run's network, the extractor, the dataset's evaluation classifier, the
    noise-aware classifier (0 where they do not apply). Built on the meta device: no memory, no weights."""
    import torch

    out = {"network": 0, "extractor": 0, "classifier": 0, "noisy": 0}
    with torch.device("meta"):
        net = make_network(cfg, shape, classes)
    out["network"] = count_flops(net, shape, cond=bool(cfg.network.conditional))
    if len(shape) == 3:
        with torch.device("meta"):
            if 8 <= shape[-1] <= 64:
                cnn = SmallCNN(shape[0], classes or 10, shape[-1])
                out["classifier"] = _flops(cnn.forward_features, torch.zeros(1, *shape))
            if extractor == "classifier":
                out["extractor"] = out["classifier"]
            else:
                ext = FIDInceptionV3()
                out["extractor"] = _flops(lambda x: ext.logits(ext(x)), torch.zeros(1, 3, shape[1], shape[2]))
    if classes:
        with torch.device("meta"):
            clf = untrained_classifier(shape, classes)
            out["noisy"] = _flops(clf, torch.zeros(1, *shape), torch.zeros(1))
    return out


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def gpu_train_img_s(rates: GpuRates, mode: str, gflop: float) -> float:
    """Training images/s of a network of `gflop` forward GFLOP per sample in `mode`: the end-to-end rate
    measured on the reference network (the middle of its range), times the training-step rate of `mode`
    over that of the end-to-end measurement's mode, times reference FLOPs / the network's FLOPs."""
    ref = sum(rates.end_to_end_img_s) / 2
    return ref * rates.step_img_s[mode] / rates.step_img_s[rates.end_to_end_mode] * rates.reference_gflop / gflop


def gpu_forward_flop_s(rates: GpuRates) -> float:
    """FLOP/s of forward passes in fp32 eager (how the evaluation samples): the FLOP rate of the fp32 eager
    training step of the reference network (3 forwards' worth of FLOPs per image)."""
    return 3 * rates.reference_gflop * 1e9 * rates.step_img_s["fp32 eager"]


def gpu_times(runs: list[RunSpec], works: list[Work], ev: Evaluation, gpu: str,
              flops_of: Callable[[Any], dict] | None = None) -> dict:
    """Per-run GPU seconds {train, eval, oneoff} on one GPU of the kind `gpu` (a GPU_RATES key) from the
    recorded rates scaled by FLOPs (see gpu_train_img_s, gpu_forward_flop_s), with what went into them.

    Training: steps x batch / rate, each step at least `small_step_s` outside CUDA graphs (host-bound).
    Evaluation: every sample x NFE through the network (x2 for cfg; + 3 classifier forwards' worth for
    classifier guidance, its forward and input gradient) and once through the extractor, plus the real
    images of KID / precision-recall. One-offs: a run's noise-aware classifier (its default steps x
    batch x 3 forwards), and per dataset the evaluation classifier (20 epochs up to 20,000 images, else
    10; 3 forwards per image and epoch) and the reference statistics (one forward per image)."""
    rates = GPU_RATES[gpu]
    fwd = gpu_forward_flop_s(rates)
    flops_of = flops_of or _flops_of_run(ev)
    out: dict[str, Any] = {"runs": [], "models": {}, "floor_steps": 0, "calls": 0, "modes": set(), "notes": set(),
                           "unknown_sizes": set()}
    datasets: set[str] = set()
    for run, work in zip(runs, works):
        cfg = run.config
        f = flops_of(cfg)
        out["models"][f["key"]] = f
        mode, note = gpu_mode(cfg.train)
        out["modes"].add(mode)
        if note:
            out["notes"].add(note)
        step_s = cfg.train.batch / gpu_train_img_s(rates, mode, f["network"] / 1e9) if f["network"] else 0.0
        if mode != "bf16 compiled, CUDA graphs" and step_s < rates.small_step_s:
            step_s = rates.small_step_s
            out["floor_steps"] += work.train_steps
        t_train = work.train_steps * step_s
        flop = 0.0
        for j in work.jobs:
            per = f["network"] * (2 if j.guidance == "cfg" else 1) + (3 * f["noisy"] if j.guidance == "classifier" else 0)
            flop += j.count * j.n * (j.nfe * per + f["extractor"])
            out["calls"] += j.count * math.ceil(j.n / 256) * j.nfe
        flop += work.real_images * f["extractor"]
        t_one = 0.0
        if work.noisy_classifier:
            p = inspect.signature(train_noisy_classifier_for).parameters
            t_one += int(p["steps"].default) * int(p["batch"].default) * 3 * f["noisy"] / fwd
        dkey = json.dumps(_section(cfg, "data"), sort_keys=True)
        if dkey not in datasets and f["extractor"] and work.jobs:
            datasets.add(dkey)
            if f["size"]:
                epochs = 20 if f["size"] <= 20_000 else 10
                classifier = ev.extractor == "classifier" or "class_accuracy" in ev.metrics
                t_one += ((3 * epochs * f["size"] * f["classifier"] if classifier else 0.0)
                          + f["size"] * f["extractor"]) / fwd
            else:
                out["unknown_sizes"].add(cfg.data.name)
        out["runs"].append({"train": t_train, "eval": flop / fwd, "oneoff": t_one})
    return out


def _flops_of_run(ev: Evaluation) -> Callable[[Any], dict]:
    """FLOPs per (data, network) of a run's config, computed once each."""
    seen: dict[str, dict] = {}

    def of(cfg: Any) -> dict:
        key = json.dumps([_section(cfg, "data"), _section(cfg, "network")], sort_keys=True)
        if key not in seen:
            shape, classes, size, source = data_shape(cfg)
            seen[key] = {**model_flops(cfg, shape, classes, ev.extractor), "shape": shape, "size": size,
                         "source": source, "key": key, "label": network_label(cfg)}
        return seen[key]

    return of


def gpu_estimate(runs: list[RunSpec], works: list[Work], ev: Evaluation, gpu: str, workers: int = 1) -> list[str]:
    """The plan's lines predicting the study's time on one GPU of the kind `gpu` and on `workers` of them."""
    rates = GPU_RATES[gpu]
    t = gpu_times(runs, works, ev, gpu)
    lines = [f"GPU estimate, one {rates.name}: predicted from rates measured there ({rates.measured}), "
             "not measured on this machine:"]
    for f in t["models"].values():
        lines.append(f"  {f['label']} on {'x'.join(map(str, f['shape']))} ({f['source']}): {f['network'] / 1e9:.4g} "
                     f"GFLOP forward per sample; extractor {ev.extractor} {f['extractor'] / 1e9:.4g} GFLOP per image")
    graphs = rates.step_img_s[rates.end_to_end_mode]
    tot = {k: sum(r[k] for r in t["runs"]) for k in ("train", "eval", "oneoff")}
    lines.append(f"  training: {format_duration(tot['train'])}: `diffatlas train` end to end on ddpm-cifar10 "
                 f"({rates.reference_gflop:g} GFLOP forward) at {'-'.join(_fmt_rate(v) for v in rates.end_to_end_img_s)} "
                 f"img/s ({rates.end_to_end_mode}), x "
                 + ", ".join(f"{_fmt_rate(rates.step_img_s[m])}/{_fmt_rate(graphs)} for {m}" for m in sorted(t["modes"]))
                 + " (the training-step rates of the two modes), scaled by forward FLOPs"
                 + (f"; {t['floor_steps']:,} steps held at the {rates.small_step_s * 1e3:.0f} ms per step of "
                    f"{rates.small_what} (host-bound; FLOPs alone would give less)" if t["floor_steps"] else ""))
    for note in sorted(t["notes"]):
        lines.append(f"  note: {note}")
    lines.append(f"  evaluation: {format_duration(tot['eval'])}: samples x NFE through the network in fp32, and the "
                 f"extractor's features, at the FLOP rate of the fp32 eager training step "
                 f"({gpu_forward_flop_s(rates) / 1e12:.0f} TFLOP/s); a lower bound: {t['calls']:,} batched network "
                 "calls, whose per-call overhead was not measured")
    unknown = (f" (reference statistics of {', '.join(sorted(t['unknown_sizes']))} not included: the dataset's size "
               "is unknown here)" if t["unknown_sizes"] else "")
    lines.append(f"  one-off classifiers and reference statistics: {format_duration(tot['oneoff'])} by FLOPs at the "
                 f"same rate, a lower bound{unknown}")
    per_run = [sum(r.values()) for r in t["runs"]]
    lines.append(f"  total, one {rates.name}: {format_duration(sum(per_run))}"
                 + (f"; {workers} workers on {workers} GPUs: {format_duration(makespan(per_run, workers))}"
                    if workers > 1 else "")
                 + "; small networks do not fill the GPU, so these are lower bounds")
    return lines


def _section(cfg: Any, section: str) -> dict:
    return C.to_dict(cfg)[section]
