"""A one-node Slurm cluster on this machine, for the tests: munged, slurmctld and slurmd (Debian's slurm-wlm), this
host as controller and node, every core and most of the memory.

Started once and left running, in /tmp/lenet-slurm (its slurm.conf, state, logs): every pytest worker and later
sessions reuse it. It needs root (slurmd runs jobs as their users) and Debian's packages: where either is missing,
`start` says why, and the tests that need it are skipped with that reason.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from filelock import FileLock

HOME = Path("/tmp/lenet-slurm")
CONF = HOME / "slurm.conf"


class Unavailable(Exception):
    """Why no cluster can run here."""


def environment() -> dict[str, str]:
    """The environment of a process that uses the cluster: Slurm's clients read SLURM_CONF."""
    return {**os.environ, "SLURM_CONF": str(CONF)}


def start() -> dict[str, str]:
    """The cluster running, started if it is not: the environment that reaches it."""
    missing = [name for name in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(name)]
    if missing:
        raise Unavailable(f"no {', '.join(missing)}: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise Unavailable("starting a one-node Slurm cluster needs root")
    HOME.mkdir(exist_ok=True)
    with FileLock(HOME / "start.lock"):
        if not _answers():
            _start()
    return environment()


def _answers() -> bool:
    if not CONF.is_file():
        return False
    state = _run("sinfo", "-h", "-o", "%t", check=False)
    return state.returncode == 0 and state.stdout.split()[:1] in (["idle"], ["mix"], ["alloc"])


def _start() -> None:
    host = socket.gethostname().split(".")[0]
    for folder in ("state", "spool", "log"):
        (HOME / folder).mkdir(exist_ok=True)
    CONF.write_text(_conf(host))
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        _run("munged", "--force")  # --force: Debian's log folder is not owned as munged wants it
    _run("slurmctld", "-f", str(CONF))
    _run("slurmd", "-f", str(CONF))
    deadline = time.monotonic() + 60
    while not _answers():
        if time.monotonic() > deadline:
            log = HOME / "log" / "slurmctld.log"
            raise Unavailable(f"the cluster did not come up within 60 s; see {log}")
        _run("scontrol", "update", f"nodename={host}", "state=resume", check=False)  # a node left down earlier
        time.sleep(1)


def _conf(host: str) -> str:
    """The smallest slurm.conf that runs jobs here (../shared/notes/pitfalls.md, "Slurm on one machine")."""
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    return f"""ClusterName=lenet
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
StateSaveLocation={HOME}/state
SlurmdSpoolDir={HOME}/spool
SlurmctldPidFile={HOME}/slurmctld.pid
SlurmdPidFile={HOME}/slurmd.pid
SlurmctldLogFile={HOME}/log/slurmctld.log
SlurmdLogFile={HOME}/log/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=60)
    if check and done.returncode:
        raise Unavailable(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def squeue(*job_ids: str) -> dict[str, str]:
    """The state of each job still known to the controller (PENDING, RUNNING, ...)."""
    listed = _run("squeue", "-h", "-o", "%i %T", *(["-j", ",".join(job_ids)] if job_ids else []), check=False)
    return dict(line.split() for line in listed.stdout.splitlines() if line.strip())


def requeue(job_id: str) -> None:
    """As a preemption does: the job stops and starts again from its batch script, at once (Slurm would hold it
    for a while first)."""
    _run("scontrol", "requeue", job_id)
    deadline = time.monotonic() + 30
    while squeue(job_id).get(job_id) not in ("PENDING", None) and time.monotonic() < deadline:
        time.sleep(0.5)
    _run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)


def signal(job_id: str, name: str) -> None:
    """A signal to the job's batch script and its steps, as Slurm sends --signal=USR2@<seconds> before the time
    limit."""
    _run("scancel", f"--signal={name}", "--full", job_id)


def release(job_id: str) -> None:
    """A job Slurm holds after a requeue (BeginTime) starts at once."""
    _run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
