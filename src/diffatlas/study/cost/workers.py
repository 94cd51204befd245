"""Workers of a study on this machine's cores: the cores and CPU time at hand, each worker's torch
threads, the wall time of runs taken in the ledger's order by the first free worker, and the start of
a worker process (a fresh interpreter's imports)."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from pathlib import Path


def cpu_count() -> int:
    """The cores this process may run on (what the local runner splits among its workers)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on this machine has used, CPU seconds this process and its waited-for
    children have used), from /proc/stat and getrusage; None where /proc/stat is not there (not Linux).
    Their growth over an interval, less ours, is what other processes took meanwhile."""
    import os
    import resource

    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / ticks
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
    return busy, own


def worker_threads(workers: int, cores: int, main_threads: int) -> int:
    """Torch threads of each worker of `study run --workers W` (study.runner): one worker runs in the
    runner's own process (its default threads); several get cores // W each, at least 1."""
    return main_threads if workers == 1 else max(1, cores // workers)


def makespan(times: list[float], workers: int) -> float:
    """Wall time of runs taken in order by the first free of `workers` workers (the ledger's order)."""
    free = [0.0] * max(1, workers)
    for t in times:
        heapq.heapreplace(free, free[0] + t)
    return max(free)


@dataclass(frozen=True)
class RunTime:
    """One run's seconds for the wall-time simulation: `before` (training) until its evaluation asks
    for the dataset's cached classifier and statistics, which cost `shared` (0 when cached) under
    `key`; then `after` (its evaluation and its own one-offs)."""

    before: float
    after: float
    key: str = ""
    shared: float = 0.0


def wall_time(runs: list[RunTime], workers: int) -> float:
    """Wall time of runs taken in order by the first free of `workers` workers. A dataset's one-offs
    (its evaluation classifier and reference statistics, io.build_once) are paid by the first run that
    reaches evaluation; a run that needs them while they are being built waits until they are ready."""
    free = [0.0] * max(1, workers)
    ready: dict[str, float] = {}
    for r in runs:
        need = free[0] + r.before
        end = need + r.after
        if r.shared:
            if r.key not in ready:
                ready[r.key] = need + r.shared
                end += r.shared
            elif need < ready[r.key]:
                end = ready[r.key] + r.after
        heapq.heapreplace(free, end)
    return max(free)


# What a fresh `study run` process or local worker imports before its first run: the CLI's parser and
# the modules of the per-run work (study.work.train_and_evaluate); TensorBoard's writer where installed.
STARTUP_CODE = ("import diffatlas.cli as c; c.build_parser()\n"
                "import diffatlas.study.work, diffatlas.study.runner, diffatlas.train, diffatlas.evaluation, "
                "diffatlas.metrics, diffatlas.guidance\n"
                "try:\n    import torch.utils.tensorboard\nexcept ImportError:\n    pass\n")


def measure_startup() -> float | None:
    """Seconds a fresh interpreter takes to import what a study process needs before its first run
    (STARTUP_CODE); paid by the `study run` process and again by each worker process it starts. None
    when that interpreter fails."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-c", STARTUP_CODE], env=env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, check=False).returncode
    return time.perf_counter() - t0 if rc == 0 else None
