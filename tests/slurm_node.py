"""A private single-node Slurm cluster on this machine, for the Slurm executor's tests and benchmark.

Debian's slurm-wlm (slurmctld, slurmd, slurm-client) and munge, started as root with their own
config, ports, state folder, munge key and munge socket under one folder: nothing of a Slurm
the machine may already run is touched. The jobs find it through SLURM_CONF (sbatch exports the
submitting environment to them)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "scontrol", "srun")


class SlurmUnavailable(Exception):
    """Why no Slurm could be started here (one line)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmNode:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def stop(self, timeout: float = 15.0) -> None:
        """Cancel every job and let the node drain, then end slurmd, slurmctld and munged (the
        processes this node started; a daemon that does not end in time is killed)."""
        env = self.env()
        subprocess.run(["scancel", "--user=root"], capture_output=True, env=env, check=False)
        deadline = time.time() + timeout
        while time.time() < deadline and subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                                         env=env, check=False).stdout.strip():
            time.sleep(0.3)  # a slurmd told to stop while steps are still ending can outlive slurmctld
        pids = []
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                pid = int((self.root / f"{name}.pid").read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError, IndexError):
                pass
        deadline = time.time() + timeout
        while pids and time.time() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.2)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a daemon we started was re-parented: an exited one is a zombie until reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def start_slurm_node(root: Path, timeout: float = 30.0) -> SlurmNode:
    """Start munged, slurmctld and slurmd for a one-node cluster in `root`; SlurmUnavailable if this
    machine cannot run them."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise SlurmUnavailable(f"no Slurm here ({', '.join(missing)} not found; Debian: apt-get install slurmctld slurmd "
                               "slurm-client munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting a private slurmctld/slurmd needs root")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # munged refuses a socket folder others may write to
    key, sock = root / "munge.key", root / "munge.sock"
    key.write_bytes(os.urandom(128))
    os.chmod(key, 0o600)
    (root / "state").mkdir(exist_ok=True)
    (root / "spool").mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    # cred_expire=5: a requeued job may start again 6 s later (default 121 s); the schedulers look
    # every 1-2 s; MessageTimeout=60: RPCs (scontrol requeue inside a job) survive a loaded machine.
    (root / "slurm.conf").write_text(f"""ClusterName=diffatlas-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=5
CredType=cred/munge
MessageTimeout=60
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName={host} CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    node = SlurmNode(root)
    for cmd in (["munged", f"--socket={sock}", f"--key-file={key}", f"--pid-file={root / 'munged.pid'}",
                 f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}", "--force"],
                ["slurmctld"], ["slurmd"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=node.env(), check=False)
        if proc.returncode != 0:
            node.stop()
            raise SlurmUnavailable(f"{cmd[0]} does not start here: {' '.join(proc.stderr.split())[-200:]}")
    deadline = time.time() + timeout
    while subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=node.env(),
                         check=False).stdout.strip() != "idle":
        if time.time() > deadline:
            log = (root / "slurmd.log").read_text()[-200:] if (root / "slurmd.log").exists() else ""
            node.stop()
            raise SlurmUnavailable(f"the Slurm node did not come up within {timeout:g} s: {' '.join(log.split())}")
        time.sleep(0.3)
    return node
