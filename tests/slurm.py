"""A one-node Slurm cluster on this machine, for the tests: munged, slurmctld and slurmd (Debian's slurm-wlm), this
host as controller and node, every core and most of the memory.

Started once and left running, in /tmp/lenet-slurm (its slurm.conf, state, logs): every pytest worker and later
sessions reuse it. It needs root (slurmd runs jobs as their users) and Debian's packages: where either is missing,
`start` says why, and the tests that need it are skipped with that reason.

Beside it, for DDP across nodes, a two-node cluster (`start_two_nodes`): nodes n1 and n2, each a slurmd of its own
on this machine (its own name and port, `slurmd -N`), with their own controller, ports and folders in
/tmp/lenet-slurm2. The helpers below take `conf=TWO_NODES_CONF` to reach it.
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
TWO_NODES_HOME = Path("/tmp/lenet-slurm2")
TWO_NODES_CONF = TWO_NODES_HOME / "slurm.conf"
NODES = ("n1", "n2")
# Ports of the two-node cluster: beside the one-node cluster's (Slurm's defaults, 6817 and 6818), one per slurmd.
TWO_NODES_PORTS = {"slurmctld": 6827, "slurmd": 6828, "n1": 6831, "n2": 6832}
NODE_CPUS = 2  # each of n1 and n2, whatever this machine has: one node can hold a 2-rank job too


class Unavailable(Exception):
    """Why no cluster can run here."""


def environment(conf: Path = CONF) -> dict[str, str]:
    """The environment of a process that uses the cluster: Slurm's clients read SLURM_CONF."""
    return {**os.environ, "SLURM_CONF": str(conf)}


def start() -> dict[str, str]:
    """The cluster running, started if it is not: the environment that reaches it."""
    _check_this_machine()
    HOME.mkdir(exist_ok=True)
    with FileLock(HOME / "start.lock"):
        if not _answers(CONF, 1):
            _start()
    return environment()


def start_two_nodes() -> dict[str, str]:
    """The two-node cluster running, started if it is not: the environment that reaches it."""
    _check_this_machine()
    TWO_NODES_HOME.mkdir(exist_ok=True)
    with FileLock(TWO_NODES_HOME / "start.lock"):
        _resolve_node_names()
        if not _answers(TWO_NODES_CONF, len(NODES)):
            _start_two_nodes()
    return environment(TWO_NODES_CONF)


def _check_this_machine() -> None:
    missing = [name for name in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(name)]
    if missing:
        raise Unavailable(f"no {', '.join(missing)}: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise Unavailable("starting a Slurm cluster on this machine needs root")


def _answers(conf: Path, nodes: int) -> bool:
    """Whether the cluster of `conf` answers with all its `nodes` up."""
    if not conf.is_file():
        return False
    state = _run("sinfo", "-h", "-N", "-o", "%t", check=False, conf=conf)
    states = state.stdout.split()
    return state.returncode == 0 and len(states) == nodes and all(s in ("idle", "mix", "alloc") for s in states)


def _start() -> None:
    host = socket.gethostname().split(".")[0]
    for folder in ("state", "spool", "log"):
        (HOME / folder).mkdir(exist_ok=True)
    CONF.write_text(_conf(host))
    _start_munge()
    _run("slurmctld", "-f", str(CONF))
    _run("slurmd", "-f", str(CONF))
    _wait_until_up(CONF, [host])


def _start_two_nodes() -> None:
    """One controller and one slurmd per node name, all here (../shared/notes/pitfalls.md, "Several nodes on one
    machine": Debian's slurmd is built with multiple-slurmd)."""
    host = socket.gethostname().split(".")[0]
    for folder in ("state", "log", *(f"spool/{node}" for node in NODES)):
        (TWO_NODES_HOME / folder).mkdir(parents=True, exist_ok=True)
    TWO_NODES_CONF.write_text(_two_nodes_conf(host))
    _start_munge()
    _run("slurmctld", "-f", str(TWO_NODES_CONF), conf=TWO_NODES_CONF)
    for node in NODES:
        _run("slurmd", "-f", str(TWO_NODES_CONF), "-N", node, conf=TWO_NODES_CONF)
    _wait_until_up(TWO_NODES_CONF, NODES)


def _start_munge() -> None:
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        _run("munged", "--force")  # --force: Debian's log folder is not owned as munged wants it


def _wait_until_up(conf: Path, nodes) -> None:
    deadline = time.monotonic() + 60
    while not _answers(conf, len(nodes)):
        if time.monotonic() > deadline:
            log = conf.parent / "log" / "slurmctld.log"
            raise Unavailable(f"the cluster did not come up within 60 s; see {log}")
        for node in nodes:  # a node left down earlier
            _run("scontrol", "update", f"nodename={node}", "state=resume", check=False, conf=conf)
        time.sleep(1)


def _resolve_node_names() -> None:
    """n1 and n2 must resolve: Lightning takes the address of rank 0 from the first node's name."""
    unknown = []
    for node in NODES:
        try:
            socket.gethostbyname(node)
        except OSError:
            unknown.append(node)
    if unknown:
        with open("/etc/hosts", "a") as hosts:
            hosts.write(f"127.0.0.1 {' '.join(unknown)}\n")


def _settings(host: str, home: Path, cluster: str) -> str:
    """What both clusters' slurm.conf say (../shared/notes/pitfalls.md, "Slurm on one machine")."""
    return f"""ClusterName={cluster}
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
StateSaveLocation={home}/state
"""


def _memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)


def _conf(host: str) -> str:
    """The smallest slurm.conf that runs jobs here (../shared/notes/pitfalls.md, "Slurm on one machine")."""
    return f"""{_settings(host, HOME, "lenet")}SlurmdSpoolDir={HOME}/spool
SlurmctldPidFile={HOME}/slurmctld.pid
SlurmdPidFile={HOME}/slurmd.pid
SlurmctldLogFile={HOME}/log/slurmctld.log
SlurmdLogFile={HOME}/log/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _two_nodes_conf(host: str) -> str:
    """Nodes n1 and n2 on this host, each its own slurmd (`%n`: the node's name) on its own port; with
    config_overrides a node may declare more CPUs and memory than the machine has."""
    home, ports = TWO_NODES_HOME, TWO_NODES_PORTS
    nodes = "".join(
        f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[node]} CPUs={NODE_CPUS} "
        f"RealMemory={_memory_mb() // len(NODES)} State=UNKNOWN\n"
        for node in NODES
    )
    return f"""{_settings(host, home, "lenet2")}SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
SlurmdParameters=config_overrides
SlurmdSpoolDir={home}/spool/%n
SlurmctldPidFile={home}/slurmctld.pid
SlurmdPidFile={home}/slurmd-%n.pid
SlurmctldLogFile={home}/log/slurmctld.log
SlurmdLogFile={home}/log/slurmd-%n.log
{nodes}PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def _run(*command: str, check: bool = True, conf: Path = CONF) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=environment(conf), timeout=60)
    if check and done.returncode:
        raise Unavailable(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def squeue(*job_ids: str, conf: Path = CONF) -> dict[str, str]:
    """The state of each job still known to the controller (PENDING, RUNNING, ...)."""
    ids = ["-j", ",".join(job_ids)] if job_ids else []
    listed = _run("squeue", "-h", "-o", "%i %T", *ids, check=False, conf=conf)
    return dict(line.split() for line in listed.stdout.splitlines() if line.strip())


def requeue(job_id: str, conf: Path = CONF) -> None:
    """As a preemption does: the job stops and starts again from its batch script, at once (Slurm would hold it
    for a while first)."""
    _run("scontrol", "requeue", job_id, conf=conf)
    deadline = time.monotonic() + 30
    while squeue(job_id, conf=conf).get(job_id) not in ("PENDING", None) and time.monotonic() < deadline:
        time.sleep(0.5)
    release(job_id, conf=conf)


def signal(job_id: str, name: str, conf: Path = CONF) -> None:
    """A signal to the job's batch script and its steps, as Slurm sends --signal=USR2@<seconds> before the time
    limit."""
    _run("scancel", f"--signal={name}", "--full", job_id, conf=conf)


def release(job_id: str, conf: Path = CONF) -> None:
    """A job Slurm holds after a requeue (BeginTime) starts at once."""
    _run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False, conf=conf)
