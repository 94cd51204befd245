"""Where a study's runs execute: on this machine (local worker processes, the default), as Slurm
jobs through submitit, or as Ray actors on a Ray cluster.

The study file's `executor:` section gives the defaults; `diffatlas study run --executor`
overrides the name:

    executor:
      name: slurm              # local (default) | slurm | ray
      workers: 1               # local: worker processes on this machine
      cpus_per_run: 8          # slurm and ray: what each run asks for
      gpus_per_run: 1          #   (more than one GPU: training runs under torchrun inside the job)
      mem_gb: 32
      max_jobs: null           # at most this many runs queued or running at once (null: no limit)
      poll_s: null             # seconds between the driver's looks at its jobs (null: 30 slurm, 2 ray)
      slurm: {partition: gpu, time_min: 240, account: null, qos: null, array: false, max_requeues: 3,
              signal_delay_s: 120, setup: [], sbatch: [], python: null}
      ray: {address: null}     # null: ray.init() finds or starts a cluster; auto; HOST:PORT

`executor: slurm` is short for `executor: {name: slurm}`. With slurm and ray the `study run`
process is a driver: it alone writes the ledger, submits each run as a job, records the job id
and follows it until the job's result file appears in the run directory (executors.remote).
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from ... import config as C
from ...errors import UserError

EXECUTORS = ("local", "slurm", "ray")
# Seconds between a driver's looks at its jobs when the study does not say (squeue is a shared
# service on a cluster: submitit's own watcher never asks more often than every 30 s).
DEFAULT_POLL_S = {"slurm": 30.0, "ray": 2.0}


@dataclass(frozen=True)
class SlurmOptions:
    """sbatch settings of every run's job (besides the shared cpus/gpus/mem of ExecutorSpec)."""

    partition: str | None = None
    time_min: int = 240                 # time limit; a job that reaches it is requeued and resumes
    account: str | None = None
    qos: str | None = None
    array: bool = False                 # submit the runs claimed together as one job array
    max_requeues: int = 3               # time-limit requeues per job before it counts as failed
    signal_delay_s: int = 120           # USR2 this long before the time limit: checkpoint and requeue
    setup: tuple[str, ...] = ()         # shell lines run before the run (module load, venv activation)
    sbatch: tuple[str, ...] = ()        # extra sbatch options, e.g. "--constraint=a100" or "--exclusive"
    python: str | None = None           # interpreter on the nodes (default: the driver's own)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None          # None: ray.init() finds a running cluster or starts one; auto; HOST:PORT


@dataclass(frozen=True)
class ExecutorSpec:
    name: str = "local"
    workers: int = 1
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    mem_gb: float | None = None
    max_jobs: int | None = None
    poll_s: float | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    ray: RayOptions = field(default_factory=RayOptions)

    @property
    def remote(self) -> bool:
        return self.name != "local"

    def resolved(self) -> "ExecutorSpec":
        """Every default filled in (the poll interval of the chosen executor)."""
        poll = self.poll_s if self.poll_s is not None else DEFAULT_POLL_S.get(self.name, 1.0)
        return replace(self, poll_s=float(poll))

    def to_dict(self) -> dict:
        return C.to_dict(asdict(self))


_SECTION_KEYS = [f.name for f in fields(ExecutorSpec)]
_POSITIVE = {"workers", "cpus_per_run", "max_jobs", "time_min", "max_requeues"}
_NON_NEGATIVE = {"gpus_per_run", "signal_delay_s"}


def _check_number(key: str, value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, str, tuple)):
        return
    if key in _POSITIVE and value < 1:
        raise UserError(f"{where}.{key} must be at least 1, got {value!r}")
    if key in _NON_NEGATIVE and value < 0:
        raise UserError(f"{where}.{key} must be 0 or more, got {value!r}")
    if key in ("mem_gb", "poll_s") and value <= 0:
        raise UserError(f"{where}.{key} must be a positive number, got {value!r}")


def _typed(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping: config's own checks per value (types, unknown keys), nested
    sections recursively, then the ranges; one-line errors."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping with keys {', '.join(f.name for f in fields(cls))}, got {data!r}")
    hints = typing.get_type_hints(cls)
    nested = {k: v for k, v in data.items() if is_dataclass(hints.get(k))}
    obj = C._section_from_dict(cls, {k: v for k, v in data.items() if k not in nested}, where)
    for key in data:
        if key not in nested:
            _check_number(key, getattr(obj, key), where)
    return replace(obj, **{k: _typed(hints[k], v or {}, f"{where}.{k}") for k, v in nested.items()})


def parse_executor(data: Any) -> ExecutorSpec:
    """The study file's `executor:` section (a name, or a mapping) -> ExecutorSpec; UserError on bad input."""
    if data is None:
        return ExecutorSpec()
    if isinstance(data, str):
        data = {"name": data}
    spec = _typed(ExecutorSpec, data, "executor")
    check_name(spec.name, "executor.name")
    for line in spec.slurm.sbatch:
        sbatch_option(line)  # raises on a malformed line
    return spec


def check_name(name: Any, where: str = "--executor") -> str:
    if name not in EXECUTORS:
        raise UserError(f"{where}: unknown executor {name!r}{C._suggest(str(name), list(EXECUTORS))}; "
                        f"choose one of: {', '.join(EXECUTORS)}")
    return str(name)


def sbatch_option(line: str) -> tuple[str, str | bool]:
    """'--constraint=a100' -> ('constraint', 'a100'); '--exclusive' -> ('exclusive', True)."""
    text = line.strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    if not text.startswith("--") or len(text) < 3 or " " in text.split("=", 1)[0]:
        raise UserError(f"executor.slurm.sbatch: {line!r} is not a long sbatch option such as --constraint=a100 "
                        "or --exclusive")
    key, eq, value = text[2:].partition("=")
    return key, (value if eq else True)


def with_cli(spec: ExecutorSpec, *, name: str | None = None, workers: int | None = None,
             address: str | None = None) -> ExecutorSpec:
    """The study's executor section overridden by `study run` options."""
    if name is not None:
        spec = replace(spec, name=check_name(name))
    if workers is not None:
        if workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        spec = replace(spec, workers=workers)
    if address is not None:
        if spec.name != "ray":
            raise UserError(f"--address is the Ray cluster to use; it needs --executor ray (the executor is {spec.name})")
        spec = replace(spec, ray=replace(spec.ray, address=address))
    return spec


__all__ = ["DEFAULT_POLL_S", "EXECUTORS", "ExecutorSpec", "RayOptions", "SlurmOptions", "check_name", "parse_executor",
           "sbatch_option", "with_cli"]
