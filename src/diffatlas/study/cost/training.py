"""Unit costs of a study's training, measured on this machine through the training loop.

:func:`calibrate` runs the real training loop (diffatlas.train.train) for a few steps of one run's
config in a temporary folder and reads the measured images/s from its stats.jsonl; on the snapshot
it writes, the evaluation's pieces can be timed (study.cost.measure.measure_evaluation).
:func:`measure_contention` measures how much W - 1 concurrent processes training the same config
slow one worker's training and sampling (`study plan --workers W`)."""

from __future__ import annotations

import math
import statistics as pystats
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ...checkpoint import read_stats
from ...errors import UserError
from ...evaluation import SAMPLE_BATCH
from ...sampling import generate, load_run, run_plan
from ...train import train
from ..spec import RunSpec
from .measure import measure_evaluation

MIN_TIMED_S = 1.0   # training steps are added until at least this much is timed


def _train_rate(cfg, steps: int, per_tick: int, run_dir: Path) -> tuple[list[float], float]:
    """Train 1 + `steps` ticks of `per_tick` steps each into `run_dir`; returns (images/s of every tick
    after the first, seconds of the whole call)."""
    batch = cfg.train.batch
    kimg = (steps + 1) * per_tick * batch / 1000
    cfg = replace(cfg, train=replace(cfg.train, kimg=kimg, tick_kimg=per_tick * batch / 1000, snapshot_kimg=kimg,
                                     warmup_kimg=0.0, keep_snapshots=False))
    t0 = time.perf_counter()
    train(cfg, run_dir, progress=False, log=lambda *a, **k: None)
    lines = read_stats(run_dir)
    rates = [line["images_per_s"] for line in lines[1:]] or [line["images_per_s"] for line in lines]
    return rates, time.perf_counter() - t0


def calibrate(run: RunSpec, steps: int = 3, threads: int | None = None, evaluation=None) -> dict:
    """Time training steps of `run`'s config with `threads` torch threads (None: as they are), in a
    temporary folder: 1 + `steps` steps, the first (warm-up) not counted, and more when those took under
    MIN_TIMED_S. Returns {images_per_s (median over ticks), steps, setup_s (the call's time beyond its
    steps at that rate: setup, warm-up, a snapshot, the doctor), seconds, threads} and, with `evaluation`
    (an Evaluation), "eval": EvalUnits timed on the snapshot it wrote; or {error}."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    try:
        cfg = run.config
        batch = cfg.train.batch
        with tempfile.TemporaryDirectory(prefix="diffatlas-calib-") as tmp:
            run_dir, per_tick, ticks = Path(tmp) / "run", 1, steps
            rates, total = _train_rate(cfg, ticks, per_tick, run_dir)
            if sum(batch / r for r in rates) < MIN_TIMED_S:  # small networks: enough steps for a stable median
                step_s = batch / float(pystats.median(rates))
                ticks, per_tick = 8, max(1, math.ceil(MIN_TIMED_S / step_s / 8))
                run_dir = Path(tmp) / "run-longer"
                rates, total = _train_rate(cfg, ticks, per_tick, run_dir)
            rate = float(pystats.median(rates))
            res = {"images_per_s": rate, "steps": ticks * per_tick,
                   "setup_s": max(0.0, total - (ticks + 1) * per_tick * batch / rate),
                   "threads": torch.get_num_threads()}
            if evaluation is not None:
                res["eval"] = measure_evaluation(run_dir, evaluation, threads=torch.get_num_threads())
    except UserError as e:
        return {"error": str(e)}
    finally:
        torch.set_num_threads(old)
    res["seconds"] = time.perf_counter() - t0
    return res


def _busy(cfg, threads: int, per_tick: int, go, idle, ready, stop) -> None:
    """A worker's load for measure_contention: training steps of `cfg` while `go` is set, idle (and
    saying so) while it is not, until `stop` (short ticks, so that it pauses within a second or two)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    with tempfile.TemporaryDirectory(prefix="diffatlas-calib-busy-") as tmp:
        i = 0
        while not stop.is_set():
            if not go.is_set():
                idle.set()
                go.wait(0.1)
                continue
            idle.clear()
            _train_rate(cfg, 4, per_tick, Path(tmp) / f"run{i}")
            ready.set()
            i += 1


class _SamplingProbe:
    """Seconds per sample and denoiser evaluation of `run`'s network at the evaluation's batch, as
    measure_evaluation times it (sampling.generate on a snapshot of a few training steps)."""

    def __init__(self, run: RunSpec, threads: int) -> None:
        import torch

        self.threads = threads
        self._tmp = tempfile.TemporaryDirectory(prefix="diffatlas-calib-probe-")
        run_dir = Path(self._tmp.name) / "run"
        _train_rate(replace(run.config, train=replace(run.config.train, doctor=False, tensorboard=False)), 0, 1, run_dir)
        self.loaded = load_run(run_dir, None, device="cpu")
        dyn = self.loaded.denoiser.dynamics
        self.plan = run_plan(self.loaded.cfg, dyn, sampler="ddim", steps=8 if dyn.steps is None else min(8, dyn.steps))
        self.batch = SAMPLE_BATCH
        k = self.loaded.num_classes
        self.cond = (torch.arange(SAMPLE_BATCH) % k) if k else None

    def seconds(self) -> float:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            p = self.plan
            t0 = time.perf_counter()
            _, nfe = generate(self.loaded.denoiser, self.loaded.shape, list(range(self.batch)), sampler=p.sampler,
                              grid=p.grid, steps=p.steps, cond=self.cond, options=p.options, batch=self.batch)
            return (time.perf_counter() - t0) / (self.batch * nfe)
        finally:
            torch.set_num_threads(old)

    def close(self) -> None:
        self._tmp.cleanup()


def _wait_all(events, value: bool, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(e.is_set() == value for e in events):
            return True
        time.sleep(0.05)
    return False


def measure_contention(run: RunSpec, threads: int, others: int, steps: int = 3, repeats: int = 2) -> dict:
    """How much `others` concurrent workers slow one: the training rate of `run` with `threads` threads,
    and its sampling at the evaluation's batch, alone and while `others` processes (each with `threads`
    threads) train the same config, measured back to back `repeats` times. Other load on the machine
    only ever inflates the ratios, so the smallest of each is kept. Returns {alone, loaded, factor =
    alone / loaded (>= 1) of training; sampling_factor, of sampling} or {error}."""
    import multiprocessing as mp

    first = calibrate(run, steps, threads)
    if "error" in first:
        return first
    try:
        probe = _SamplingProbe(run, threads)
        probe.seconds()  # warm-up
    except UserError as e:
        return {"error": str(e)}
    per_tick = max(1, math.ceil(0.25 * first["images_per_s"] / run.config.train.batch))  # ~0.25 s ticks
    ctx = mp.get_context("spawn")
    stop, go = ctx.Event(), ctx.Event()
    procs, idles, readies = [], [], []
    pairs, sampling = [], []
    try:
        go.set()
        for _ in range(others):
            idle, ready = ctx.Event(), ctx.Event()
            p = ctx.Process(target=_busy, args=(run.config, threads, per_tick, go, idle, ready, stop), daemon=True)
            p.start()
            procs.append(p)
            idles.append(idle)
            readies.append(ready)
        if not _wait_all(readies, True, 300):
            return {"error": "the concurrent workers did not start within 300 s"}
        for _ in range(max(1, repeats)):
            go.clear()
            if not _wait_all(idles, True, 120):
                return {"error": "the concurrent workers did not pause within 120 s"}
            alone = calibrate(run, steps, threads)
            s_alone = probe.seconds()
            go.set()
            if not _wait_all(idles, False, 120):
                return {"error": "the concurrent workers did not resume within 120 s"}
            loaded = calibrate(run, steps, threads)
            s_loaded = probe.seconds()
            if "error" in alone or "error" in loaded:
                return alone if "error" in alone else loaded
            pairs.append((alone["images_per_s"], loaded["images_per_s"]))
            sampling.append(s_loaded / s_alone)
    finally:
        probe.close()
        stop.set()
        go.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
                p.join()
    a, b = min(pairs, key=lambda ab: ab[0] / ab[1])
    return {"alone": a, "loaded": b, "factor": max(1.0, a / b), "sampling_factor": max(1.0, min(sampling))}
