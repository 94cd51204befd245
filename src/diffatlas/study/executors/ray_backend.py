"""The Ray executor (`pip install 'diffatlas[ray]'`): each run is one Ray actor on a Ray cluster.

The actor asks for the run's CPUs, GPUs and memory, runs `executors.job.run_job` once and
exits. It is detached and named "<study folder tag>-<run id>" in the namespace "diffatlas":
Ray ties plain tasks, non-detached actors and method calls to the driver that made them and
ends them with it, whereas a detached named actor, its creation arguments included, lives on
when the driver is killed; the next driver finds it by name (re-attach) instead of starting the
run a second time. The actor's output goes to <out>/jobs/ray/<run id>.log.

`address`: None lets ray.init() find a cluster (RAY_ADDRESS, or one started with `ray start` on
this machine) or start a local one; "auto" requires a running cluster; "HOST:PORT" names one.
The nodes need diffatlas installed and the study folder on a shared filesystem.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ...errors import UserError, one_line
from . import ExecutorSpec
from .job import JobPayload, JobState, out_tag, run_job

NAMESPACE = "diffatlas"

try:
    import ray
except ImportError:  # the optional extra is not installed
    ray = None


if ray is not None:
    @ray.remote(max_restarts=0)
    class RunActor:
        """Does one run, then ends its process (a finished actor holds no resources).

        The run starts in the constructor, on a thread: the creation of a detached actor, payload
        included, is kept by Ray's control store, whereas a method call belongs to the driver that
        made it and is lost with it if the driver dies before the actor is up."""

        def __init__(self, payload: JobPayload) -> None:
            self.me = ray.get_runtime_context().current_actor
            threading.Thread(target=self._run, args=(payload,), daemon=True).start()

        def _run(self, payload: JobPayload) -> None:
            try:
                run_job(payload)
            finally:
                self.me.stop.remote()  # a call the actor owns itself: it outlives any driver

        def stop(self) -> None:
            ray.actor.exit_actor()  # the run is over (its result, if any, is in the run folder)

        def ping(self) -> bool:
            return True


class RayBackend:
    name = "ray"

    def __init__(self, spec: ExecutorSpec, out: Path, *, connect: bool = True) -> None:
        if ray is None:
            raise UserError("the ray executor needs Ray: pip install 'diffatlas[ray]' (or pip install ray)")
        self.spec, self.out, self.tag = spec, Path(out), out_tag(Path(out))
        self.started_here = False
        self.refs: dict[str, Any] = {}
        self.seen_alive: set[str] = set()
        if connect and not ray.is_initialized():
            try:
                ray.init(address=spec.ray.address, namespace=NAMESPACE, log_to_driver=False, include_dashboard=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"cannot reach the Ray cluster at {spec.ray.address or 'its default address'}: "
                                f"{one_line(str(e))[-300:]}") from None
            self.started_here = True
        self.address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None

    def _name(self, run_id: str) -> str:
        return f"{self.tag}-{run_id}"

    def names(self, payloads: list[JobPayload]) -> list[str]:
        return [f"ray:{self._name(p.run_id)}" for p in payloads]

    def submit(self, payloads: list[JobPayload], names: list[str]) -> list[tuple[str, str | None]]:
        out = []
        for p, job in zip(payloads, names):
            opts: dict[str, Any] = {"name": job.split(":", 1)[1], "namespace": NAMESPACE, "lifetime": "detached",
                                    "get_if_exists": True, "num_cpus": self.spec.cpus_per_run,
                                    "num_gpus": self.spec.gpus_per_run}
            if self.spec.mem_gb:
                opts["memory"] = int(self.spec.mem_gb * 2**30)
            try:
                actor = RunActor.options(**opts).remote(p)
            except ValueError as e:  # e.g. a request no node of the cluster can satisfy
                raise UserError(f"Ray refused the run's actor: {one_line(str(e))[-300:]}") from None
            self.refs[job] = actor.ping.remote()  # fails with the reason if the actor cannot start
            self.seen_alive.add(job)  # submitted by this driver: if it vanishes without a result, it ended
            out.append((job, p.log_path))
        return out

    def job_output(self, run_id: str) -> str | None:
        return str((self.out / "jobs" / "ray" / f"{run_id}.log").resolve())

    def log_path(self, job: str, run_id: str) -> str | None:
        return self.job_output(run_id)

    def meta(self) -> dict:
        return {"ray_address": self.address}

    def poll(self, jobs: list[str]) -> dict[str, JobState]:
        out = {}
        for job in jobs:
            try:
                ray.get_actor(job.split(":", 1)[1], namespace=NAMESPACE)
            except ValueError:
                # Gone. An actor this driver submitted or saw alive ended (its result, if any, is in
                # the run folder); one never seen belongs to a driver or a cluster that is gone.
                out[job] = JobState("ended" if job in self.seen_alive else "lost", self._why(job))
                continue
            self.seen_alive.add(job)
            out[job] = JobState("active", "ALIVE")
        return out

    def _why(self, job: str) -> str:
        ref = self.refs.pop(job, None)
        if ref is None:
            return "actor exited"
        try:
            ray.get(ref, timeout=0)
        except Exception as e:  # noqa: BLE001 - Ray's account of the actor's end, for the message
            return one_line(str(e).split("\n")[0])[:300]
        return "actor exited"

    def cancel(self, jobs: list[str]) -> None:
        if not ray.is_initialized():
            return
        for job in jobs:
            try:
                ray.kill(ray.get_actor(job.split(":", 1)[1], namespace=NAMESPACE))
            except ValueError:
                pass  # already gone

    def close(self) -> None:
        self.refs.clear()
        if self.started_here and ray.is_initialized():
            ray.shutdown()
