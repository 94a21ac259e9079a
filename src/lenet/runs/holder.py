"""One writer per run dir: whatever trains, tests or predicts in a run dir takes it first, and gives it back at the end.

The taker writes `holder.json` in the run dir, created only if no such file exists (O_CREAT | O_EXCL: atomic on local
disks and on NFS since v3, which `flock` is not everywhere: NFS emulates it with a lock server that not every cluster
runs and that may keep a lock of a client that died). The file says who holds the dir: host, pid (with the process's
start time, as a pid is reused), Slurm job, and how far training has come. Whether that holder still runs is asked of
what knows: squeue for a Slurm job (on any node), the process table for a process on this host. A holder that has
ended (pid gone, job no longer queued) is taken over, and said so; a requeued Slurm job is the same job and takes its
own dir back; a holder on another host outside Slurm cannot be asked, so its dir is refused with the file to delete
once it has ended.
"""

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lenet.frame import atomic
from lenet.frame.errors import UserError
from lenet.frame.safe_read import Unreadable, mapping, read_json
from lenet.runs import queue

HOLDER = "holder.json"
# The environment variables that give a process its rank in a distributed run, as Lightning reads them: only rank 0
# takes the run dir, the other ranks write into it under rank 0's hold.
RANKS = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


class RunDirTaken(UserError):
    """The run dir is another's: a live process holds it, or it keeps a finished run's record. Nothing of this
    attempt may be written there, not even its error."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: int  # the process's start time, in clock ticks since boot (/proc/<pid>/stat): a reused pid is not it
    slurm_job: str | None = None
    since: float = 0.0  # time.time() when it took the dir
    epoch: int = 0  # epochs trained so far, and of how many: lenet.report shows a running job's progress
    max_epochs: int | None = None

    def __str__(self) -> str:
        job = f", Slurm job {self.slurm_job}" if self.slurm_job else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}{job}, since {since}"

    def alive(self) -> bool | None:
        """Whether it may still run: True, False, or None when nothing here can tell (another host, no squeue)."""
        if self.slurm_job:
            queued = queue.alive([self.slurm_job])
            if queued is not None:
                return self.slurm_job in queued
        if self.host == socket.gethostname():
            return _start_time(self.pid) == self.started
        return None


def this_process() -> Holder:
    return Holder(socket.gethostname(), os.getpid(), _start_time(os.getpid()), queue.this_job(), time.time())


def is_rank_zero() -> bool:
    """Whether this process is a distributed run's first rank (or runs alone)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANKS)


def read(run_dir: Path) -> Holder | None:
    """Who holds `run_dir`, or None: no one, or a holder.json that is not one (written half by a full disk)."""
    return _read_file(run_dir / HOLDER)


def _read_file(path: Path) -> Holder | None:
    try:
        fields = mapping(read_json(path, HOLDER), HOLDER)
        holder = Holder(**{name: fields[name] for name in Holder.__dataclass_fields__ if name in fields})
    except (Unreadable, TypeError, KeyError, OSError):
        return None
    plain = isinstance(holder.host, str) and all(type(n) is int for n in (holder.pid, holder.started, holder.epoch))
    plain = plain and isinstance(holder.slurm_job, str | None) and isinstance(holder.max_epochs, int | None)
    return holder if plain else None


def take(run_dir: Path) -> str:
    """Hold `run_dir` for this process, or raise RunDirTaken naming its live holder. Returns what was taken over
    ("" when no one held it)."""
    me, taken_over = this_process(), ""
    for _attempt in range(5):  # another taker may come between reading a holder and taking over from it
        if _create(run_dir, me):
            return taken_over
        before = read(run_dir)
        if before is None and (run_dir / HOLDER).is_file():
            time.sleep(0.05)  # being written by its taker: read again
            before = read(run_dir)
        if before is not None and me.slurm_job and before.slurm_job == me.slurm_job:
            _write(run_dir, me)  # the job's earlier run, ended by the requeue: no one else is this job
            return f"taken back by Slurm job {me.slurm_job}, requeued"
        if before is not None and (alive := before.alive()) is not False:
            raise RunDirTaken(_held(run_dir, before, alive))
        if _move_aside(run_dir, before):
            taken_over = (
                f"taken over from {before}, which has ended" if before else "taken over from a damaged holder.json"
            )
    raise RunDirTaken(f"{run_dir} is being taken by another process at this moment: try again")


def progress(run_dir: Path, epoch: int, max_epochs: int | None) -> None:
    """How far this holder's training has come, for lenet.report. Best effort: a full disk must not stop training."""
    current = read(run_dir)
    if _mine(current):
        with contextlib.suppress(OSError):
            _write(run_dir, replace(current, epoch=epoch, max_epochs=max_epochs))


def release(run_dir: Path) -> None:
    """Give `run_dir` back, if this process still holds it."""
    if _mine(read(run_dir)):
        with contextlib.suppress(OSError):
            (run_dir / HOLDER).unlink()


def _mine(holder: Holder | None) -> bool:
    return holder is not None and (holder.host, holder.pid) == (socket.gethostname(), os.getpid())


def _held(run_dir: Path, holder: Holder, alive: bool | None) -> str:
    if alive is None:
        return (f"{run_dir} is held by {holder}, which cannot be asked from here whether it still runs: if it has "
                f"ended, delete {run_dir / HOLDER}; else train in another run dir")  # fmt: skip
    return f"{run_dir} is in use by {holder}: wait for it to end, or train in another run dir"


def _create(run_dir: Path, me: Holder) -> bool:
    try:
        handle = os.open(run_dir / HOLDER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as file:
        file.write(json.dumps(asdict(me)))
        file.flush()
        os.fsync(file.fileno())
    return True


def _write(run_dir: Path, me: Holder) -> None:
    atomic.write_text(run_dir / HOLDER, json.dumps(asdict(me)))


def _move_aside(run_dir: Path, ended: Holder | None) -> bool:
    """Move the ended holder's file aside, and check it was that holder's: a rename is atomic, so of two processes
    taking over at once only one moves it. A file that turns out to be another's (it took over first) is put back."""
    aside = run_dir / f".{HOLDER}.{socket.gethostname()}.{os.getpid()}"
    try:
        os.rename(run_dir / HOLDER, aside)
    except FileNotFoundError:
        return False  # another taker moved it first
    if _read_file(aside) != ended:
        with contextlib.suppress(FileExistsError):
            os.link(aside, run_dir / HOLDER)
    aside.unlink(missing_ok=True)
    return True


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot; 0 when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name in parentheses
