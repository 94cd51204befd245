"""The training loop: AdamW with warm-up and clipping, EMA by half-life in kimg, bf16 autocast,
channels_last and torch.compile on CUDA, torchrun/DDP aware, atomic snapshots and exact resume.

Progress is counted in images seen (kimg). Ticks and snapshots fall on step boundaries fixed by
the config, so a run killed at any moment and resumed from its latest snapshot replays exactly
the same steps (same data order, same noise) as an uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import __version__, validate
from .checkpoint import (DATASET_FILE, STATS_FILE, list_snapshots, load_meta, load_state,
                         load_weights, read_stats, remove_interrupted_writes, remove_old_snapshots, save_snapshot,
                         snapshot_mismatch)
from .config import Config, dump_yaml, from_dict, resolve, to_dict
from .data import dataset_from_config
from .doctor import check_run
from .errors import UserError
from .io import (append_jsonl, atomic_write_json, atomic_write_text, exclusive, parse_yaml, read_json, read_text,
                 rewrite_jsonl)
from .losses import denoising_loss
from .model import make_denoiser, make_dynamics, make_network
from .networks import PRESETS, count_flops, count_parameters
from .registry import UnknownNameError
from .tensorboard_log import RunLog


# ---- process group --------------------------------------------------------------------------

def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


# ---- data order ---------------------------------------------------------------------------

class EpochSampler:
    """Global batches of indices from seeded epoch permutations; its state resumes exactly."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self, batch: int) -> Tensor:
        parts, need = [], batch
        while need > 0:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"], int(s["pos"])


# ---- EMA ----------------------------------------------------------------------------------

@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, beta: float) -> None:
    e = [p for p in ema.parameters()]
    s = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(e, s, 1.0 - beta)
    for be, bs in zip(ema.buffers(), net.buffers()):
        be.copy_(bs)


def ema_beta(batch: int, images_seen: float, halflife_kimg: float, rampup: float | None) -> float:
    """Per-step decay for an EMA whose half-life is measured in images (Karras et al. 2022, App. F)."""
    halflife = halflife_kimg * 1000
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch / max(halflife, 1e-8))


# ---- the loop -----------------------------------------------------------------------------

class Schedule:
    """Step counts of a run: total, per tick, per snapshot (a whole number of ticks)."""

    def __init__(self, cfg: Config) -> None:
        b = cfg.train.batch
        self.batch = b
        self.total = max(1, math.ceil(cfg.train.kimg * 1000 / b))
        self.tick = max(1, round(cfg.train.tick_kimg * 1000 / b))
        self.snapshot = max(1, round(cfg.train.snapshot_kimg * 1000 / b / self.tick)) * self.tick

    def kimg(self, step: int) -> float:
        return step * self.batch / 1000

    def is_snapshot(self, step: int) -> bool:
        """Every `snapshot` steps and at the end; a periodic snapshot closer than half an interval to
        the end is left to the final one (it would only repeat it)."""
        if step == self.total:
            return True
        return step % self.snapshot == 0 and self.total - step >= self.snapshot / 2


def _check_run_dir(run_dir: Path, cfg: Config) -> None:
    """The run directory can be written, and holds no run of another config."""
    validate.writable_dir(run_dir, "run directory")
    path = run_dir / "config.yaml"
    if path.exists() or path.is_symlink():
        fix = "move it away or use another run directory (nothing was changed)"
        old = parse_yaml(read_text(path, "run config", fix), f"run config {str(path)!r}", fix)
        if old != to_dict(cfg) and not _same_with_new_defaults(old, cfg):
            raise UserError(f"run directory {str(run_dir)!r} already holds a different config; use another directory "
                            "(nothing was changed)")
    if (run_dir / "snapshots").exists() and not (run_dir / "snapshots").is_dir():
        raise UserError(f"{str(run_dir / 'snapshots')!r} is a file; the run directory keeps its snapshots there "
                        "(move it away)")


def _training_bytes(build: Any, shape: tuple[int, ...], batch: int, cond: bool) -> tuple[float, float]:
    """(total, per sample) bytes one training step needs at least: float32 parameters with their gradients,
    AdamW moments and EMA copy, plus the activations autograd saves for the backward pass, counted by a
    forward pass of the network built by `build()` on the meta device (shapes only: nothing is allocated
    or computed)."""
    saved, state = [], 0
    for b in (1, 2):
        with torch.device("meta"):
            net = build()
            x = torch.zeros(b, *shape)
            c = torch.zeros(b)
            labels = torch.zeros(b, dtype=torch.long) if cond else None
        state = sum(p.numel() for p in net.parameters()) * 4 * 5
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                net(x, c, labels)
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count the data only
            total = 0
        saved.append(total)
    per_sample = max(saved[1] - saved[0], 0) + 4 * 4 * math.prod(shape)  # + x0, eps, output and its gradient
    return state + saved[0] + per_sample * (batch - 1), per_sample


def _same_with_new_defaults(old: Any, cfg: Config) -> bool:
    """A config saved before a key existed (e.g. train.tensorboard) is the same run when the key's default
    fills the gap."""
    try:
        return to_dict(resolve(from_dict(old))) == to_dict(cfg)
    except (UserError, UnknownNameError, TypeError, ValueError):
        return False


def environment(device: torch.device, cfg: Config, world: int) -> dict[str, Any]:
    env = {"diffatlas": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "world_size": world, "precision": cfg.train.precision,
           "compile": cfg.train.compile, "compile_mode": cfg.train.compile_mode,
           "channels_last": cfg.train.channels_last,
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
           "cpu_threads": torch.get_num_threads(), "machine": platform.machine(), "processor": platform.processor()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["cuda_graphs"] = records_cuda_graphs(cfg, device, world)
    return env


def records_cuda_graphs(cfg: Config, device: torch.device, world: int) -> bool:
    """Whether the compiled training step is recorded as CUDA graphs (compile modes reduce-overhead
    and max-autotune on a CUDA device; elsewhere those modes only compile). One process only:
    under torchrun the combination is refused."""
    graphs = (cfg.train.compile and cfg.train.compile_mode in ("reduce-overhead", "max-autotune")
              and device.type == "cuda")
    if graphs and world > 1:
        raise UserError(f"train.compile_mode={cfg.train.compile_mode} records CUDA graphs, which this training "
                        f"loop does in one process only (torchrun started {world}); use compile_mode=default "
                        "or max-autotune-no-cudagraphs")
    return graphs


def describe_network(cfg: Config, net: nn.Module, shape) -> dict[str, Any]:
    """The network as built for this run's data: preset, resolved architecture, size and cost."""
    return {"preset": cfg.network.preset, "family": PRESETS.get(cfg.network.preset).family,
            "architecture": getattr(net, "config", None), "overrides": cfg.network.options,
            "shape": list(shape), "params": count_parameters(net),
            "forward_flops_per_sample": count_flops(net, shape, cond=cfg.network.conditional)}


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _indent(text: str) -> str:
    """Markdown code block (4-space indent), as TensorBoard's text plugin renders it."""
    return "".join("    " + line + "\n" for line in text.splitlines())


def _truncate_stats(run_dir: Path, step: int) -> None:
    """Drop ticks logged after the snapshot being resumed (they will be replayed), and a torn last line."""
    path = run_dir / STATS_FILE
    if not path.exists():
        return
    records = read_stats(run_dir)
    keep = [d for d in records if isinstance(d.get("step"), int) and d["step"] <= step]
    if len(keep) != len(records) or path.read_bytes()[-1:] not in (b"", b"\n"):
        rewrite_jsonl(path, keep)


DONE_FIELDS = {"kimg": "number", "step": "integer"}


def train(cfg: Config, run_dir: str | Path, *, progress: bool | None = None, log=print) -> dict[str, Any]:
    """Train (or resume) one run in run_dir. Returns the DONE record.

    Writes config.yaml (resolved), environment.json, stats.jsonl (one line per tick),
    snapshots/snapshot-<kimg>/ and, at the end, doctor.json and DONE. One process trains a run
    directory at a time (a second is refused); temporary folders of snapshot writes killed earlier
    are removed at the start.
    """
    cfg = resolve(cfg)
    run_dir = Path(run_dir)
    rank, _, _ = dist_info()
    _check_run_dir(run_dir, cfg)
    done_path = run_dir / "DONE"
    if done_path.exists() and (run_dir / DATASET_FILE).exists():
        return read_json(done_path, "run record", fields=DONE_FIELDS,
                         fix=f"delete it: `diffatlas train --run-dir {run_dir}` then finds the run finished and "
                             "writes it again")
    if rank != 0:
        return _train(cfg, run_dir, progress=progress, log=log)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive(run_dir, "run directory"):
            removed = remove_interrupted_writes(run_dir)
            if removed:
                log(f"removed {len(removed)} unfinished snapshot write(s) of an interrupted run: "
                    + ", ".join(p.name for p in removed))
            return _train(cfg, run_dir, progress=progress, log=log)
    except UserError:
        if created and not any(run_dir.iterdir()):  # refused before any work: leave no empty run directory
            run_dir.rmdir()
        raise


def _train(cfg: Config, run_dir: Path, *, progress: bool | None, log) -> dict[str, Any]:
    rank, world, local_rank = dist_info()
    done_path = run_dir / "DONE"
    if cfg.train.batch % world:
        raise UserError(f"train.batch={cfg.train.batch} must be divisible by the number of processes ({world})")

    device = torch.device(validate.device(cfg.train.device, "train.device", local_rank))
    graphs = records_cuda_graphs(cfg, device, world)
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ  # started by torchrun
    if launched and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once per shape

    dataset = dataset_from_config(cfg.data)
    per_rank = cfg.train.batch // world
    if not (done_path.exists() and rank == 0):  # refused before anything is written when a step cannot fit
        need, per_sample = _training_bytes(lambda: make_network(cfg, dataset.shape, dataset.num_classes),
                                           tuple(dataset.shape), per_rank, cfg.network.conditional)
        validate.memory(need, f"training with train.batch={cfg.train.batch} ({per_rank} per process) on "
                        f"{cfg.network.preset} at {tuple(dataset.shape)}", device, per_sample, "samples per process")
    if dataset.in_memory:
        dataset = dataset.to(device)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        atomic_write_json(run_dir / "environment.json", environment(device, cfg, world))
        atomic_write_json(run_dir / DATASET_FILE, {"name": dataset.name, "split": cfg.data.split, "shape": list(dataset.shape),
                                                   "num_classes": dataset.num_classes, "size": len(dataset)})
    if done_path.exists():  # a finished run whose dataset record was missing: it is written again above
        return read_json(done_path, "run record", fields=DONE_FIELDS, fix="delete it and train again")

    # Same initial weights on every rank and in every process count: seeded before building.
    torch.manual_seed(cfg.train.seed)
    dynamics = make_dynamics(cfg)
    net = make_network(cfg, dataset.shape, dataset.num_classes).to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if rank == 0:
        atomic_write_json(run_dir / "network.json", describe_network(cfg, net, dataset.shape), default=str)
    # The fused update: one kernel (CUDA) or one vectorised loop (CPU) for all parameters.
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, betas=cfg.train.betas,
                            weight_decay=cfg.train.weight_decay, fused=device.type in ("cuda", "cpu"))
    sampler = EpochSampler(len(dataset), cfg.train.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)
    sched = Schedule(cfg)
    step = 0

    snaps = list_snapshots(run_dir)
    if snaps:
        snap = snaps[-1]
        meta = load_meta(snap)
        model_sd, ema_sd, st = load_weights(snap, "model"), load_weights(snap, "ema"), load_state(snap)
        try:
            net.load_state_dict(model_sd)
            ema.load_state_dict(ema_sd)
        except RuntimeError:
            raise snapshot_mismatch(snap, "network") from None
        try:
            opt.load_state_dict(st["optimizer"])
            sampler.load_state_dict(st["data"])
            noise_gen.set_state(st["noise"])
            torch.set_rng_state(st["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError):
            raise snapshot_mismatch(snap, "optimizer, data order or random state") from None
        step = int(meta["step"])
        if not 0 < step <= sched.total:
            raise snapshot_mismatch(snap, f"training length ({sched.total} steps; the snapshot is at step {step})")
        if rank == 0:
            log(f"resuming {run_dir} from {snap.name} (kimg {sched.kimg(step):.3f})")
    if rank == 0:
        _truncate_stats(run_dir, step)  # a run killed before its first snapshot restarts at step 0
    if dist.is_initialized():
        dist.barrier()
    tb = RunLog(run_dir, rank == 0 and cfg.train.tensorboard, purge_kimg=sched.kimg(step),
                header="Step axis: training images seen. Resolved config:\n\n" + _indent(dump_yaml(cfg)))

    channels_last = cfg.train.channels_last and len(dataset.shape) == 3
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    train_net: nn.Module = net
    if cfg.train.compile:
        train_net = torch.compile(train_net, mode=cfg.train.compile_mode)
    if dist.is_initialized():
        train_net = nn.parallel.DistributedDataParallel(train_net, device_ids=[device.index] if device.type == "cuda" else None)
    denoiser = make_denoiser(cfg, train_net, dynamics)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.train.precision == "bf16" else nullcontext())

    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    bar = None
    if rank == 0 and (progress if progress is not None else sys.stderr.isatty()):
        from tqdm import tqdm
        bar = tqdm(total=sched.total, initial=step, unit="step", desc=f"train {cfg.dynamics.name}", dynamic_ncols=True)

    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    tick_start_time, tick_start_step, t0 = time.perf_counter(), step, time.perf_counter()
    net.train()
    while step < sched.total:
        # lr warm-up (linear in images seen)
        seen = sched.kimg(step) * 1000
        warm = cfg.train.warmup_kimg * 1000
        lr = cfg.train.lr * min(1.0, (seen + sched.batch) / warm) if warm > 0 else cfg.train.lr
        for g in opt.param_groups:
            g["lr"] = lr

        # one global batch drawn identically on every rank; each rank takes its slice
        idx = sampler.next(sched.batch)
        x0, labels = dataset.get_batch(idx)
        x0 = x0.to(device, non_blocking=True)
        t = dynamics.sample_training_t(sched.batch, generator=noise_gen, device=device)
        eps = torch.randn(x0.shape, generator=noise_gen, device=device, dtype=x0.dtype)
        cond = None
        if cfg.network.conditional:
            labels = labels.to(device)
            drop = torch.rand(sched.batch, generator=noise_gen, device=device) < cfg.train.label_dropout
            cond = torch.where(drop, torch.full_like(labels, dataset.num_classes), labels)[mine]
        x0, t, eps = x0[mine], t[mine], eps[mine]
        if channels_last:
            x0, eps = x0.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)

        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # last step's graph outputs are no longer read
        with autocast:
            loss = denoising_loss(denoiser, x0, weighting=cfg.model.weighting, cond=cond, t=t, eps=eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        opt.step()
        step += 1
        ema_update(ema, net, ema_beta(sched.batch, step * sched.batch, cfg.train.ema_halflife_kimg, cfg.train.ema_rampup))
        loss_sum += loss.detach()
        if bar is not None:
            bar.update(1)

        if step % sched.tick == 0 or step == sched.total:
            if dist.is_initialized():
                dist.all_reduce(loss_sum)
                loss_sum /= world
            now = time.perf_counter()
            n_steps = step - tick_start_step
            rec = {"kimg": round(sched.kimg(step), 6), "step": step, "loss": float(loss_sum) / n_steps,
                   "lr": lr, "images_per_s": n_steps * sched.batch / max(now - tick_start_time, 1e-9),
                   "peak_mem_mb": round(_peak_mem_mb(device), 1), "wall_s": round(now - t0, 3)}
            if rank == 0:
                append_jsonl(run_dir / STATS_FILE, rec)
                tb.tick(rec)
                if bar is not None:
                    bar.set_postfix(kimg=f"{rec['kimg']:.1f}", loss=f"{rec['loss']:.4f}")
                else:
                    left = (sched.total - step) * (now - tick_start_time) / n_steps
                    log(f"kimg {rec['kimg']:.3f}/{sched.kimg(sched.total):.3f}  loss {rec['loss']:.4f}  "
                        f"{rec['images_per_s']:.0f} img/s  eta {left:.0f}s")
            loss_sum.zero_()
            tick_start_time, tick_start_step = now, step

        if sched.is_snapshot(step):
            if rank == 0:
                path = save_snapshot(
                    run_dir, sched.kimg(step), {"model": net.state_dict(), "ema": ema.state_dict()},
                    {"optimizer": opt.state_dict(), "data": sampler.state_dict(), "noise": noise_gen.get_state(),
                     "torch_rng": torch.get_rng_state()},
                    {"kimg": sched.kimg(step), "step": step, "images": step * sched.batch})
                if not cfg.train.keep_snapshots:
                    remove_old_snapshots(run_dir, path)
            if dist.is_initialized():
                dist.barrier()
    if bar is not None:
        bar.close()
    tb.close()

    record: dict[str, Any] = {"kimg": sched.kimg(step), "step": step, "wall_s": round(time.perf_counter() - t0, 3)}
    if rank == 0:
        if cfg.train.doctor:
            record["doctor_ok"] = run_doctor(cfg, ema, dynamics, dataset, run_dir, log)
        atomic_write_json(done_path, record, indent=None)
    if dist.is_initialized():
        dist.barrier()
    return record


def run_doctor(cfg: Config, ema: nn.Module, dynamics, dataset, run_dir: Path, log=print) -> bool:
    """Check that the trained (EMA) network uses its noise level and class label; record doctor.json."""
    report = check_run(make_denoiser(cfg, ema, dynamics), dataset, run_dir,
                       num_classes=dataset.num_classes if cfg.network.conditional else None)
    if not report.ok:
        log("doctor: error: " + "; ".join(report.problems))
    return bool(report.ok)
