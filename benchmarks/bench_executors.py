"""What an executor costs per run: one study of N runs whose work only sleeps, run by the local
executor (2 worker processes), a local Ray instance (2 CPUs) and a private single-node Slurm (its
CPUs; started as in the tests, where this machine can: root and Debian's slurmctld/slurmd/munge).

Each executor runs 2 runs at a time, so the work alone takes ceil(N / 2) x sleep seconds; the
overhead per run is (wall time - that) / N: process or job start, diffatlas import, submission,
the driver's polling (poll_s 1 s here; the study default is 30 s for Slurm, 2 s for Ray).

    python benchmarks/bench_executors.py [--runs 8] [--sleep 2] [--executors local,ray,slurm]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # slurm_node: the tests' private single-node Slurm


class SleepWork:
    """The per-run work: sleep (picklable: jobs import this module through PYTHONPATH)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, task) -> None:
        task.run_dir.mkdir(parents=True, exist_ok=True)
        time.sleep(self.seconds)


def study(n: int, executor: dict):
    from diffatlas.study.spec import study_from_dict

    return study_from_dict({"name": "bench", "base": {"data": {"name": "digits"}}, "seeds": list(range(n)),
                            "executor": executor})


def timed(name: str, n: int, sleep: float, executor: dict, out: Path) -> dict:
    from diffatlas.study.runner import Runner

    t0 = time.perf_counter()
    counts = Runner(study(n, executor), out / name, work=SleepWork(sleep), resolve=lambda c: c).run()
    wall = time.perf_counter() - t0
    assert counts["done"] == n, counts
    ideal = math.ceil(n / 2) * sleep
    return {"executor": name, "wall_s": wall, "overhead_per_run_s": (wall - ideal) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=2.0, help="seconds of work per run")
    ap.add_argument("--executors", default="local,ray,slurm")
    args = ap.parse_args()
    src = Path(__import__("diffatlas").__file__).resolve().parent.parent
    os.environ["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    rows = []
    for name in args.executors.split(","):
        if name == "local":
            rows.append(timed(name, args.runs, args.sleep, {"name": "local", "workers": 2}, out))
        elif name == "ray":
            import logging

            import ray

            ray.init(num_cpus=2, namespace="diffatlas", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
            rows.append(timed(name, args.runs, args.sleep, {"name": "ray", "poll_s": 1.0}, out))
            ray.shutdown()
        elif name == "slurm":
            from slurm_node import SlurmUnavailable, start_slurm_node

            try:
                node = start_slurm_node(out / "slurm-node")
            except SlurmUnavailable as e:
                print(f"slurm: skipped ({e})")
                continue
            os.environ["SLURM_CONF"] = str(node.conf)
            try:
                rows.append(timed(name, args.runs, args.sleep, {"name": "slurm", "poll_s": 1.0,
                                                                 "slurm": {"time_min": 10}}, out))
            finally:
                node.stop()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.runs} runs of {args.sleep:g} s work, 2 at a time")
    print(f"{'executor':10} {'wall s':>8} {'overhead per run s':>20}")
    for r in rows:
        print(f"{r['executor']:10} {r['wall_s']:8.1f} {r['overhead_per_run_s']:20.2f}")


if __name__ == "__main__":
    main()
