"""The CPUs this process may use, and the number of torch threads a run takes from them.

torch's default is one intra-op thread per CPU of the machine. When another process keeps one of those CPUs busy,
the threads wait for each other and a run slows down 5x and more, while one thread fewer holds its speed; inside a
Slurm job the machine's CPUs are not the job's. So when `threads` is null, lenet counts:

- usable: the CPUs of this process's affinity mask, and inside a Slurm job at most its allocation
  (SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE);
- busy: the larger of the 1-minute load average, less what this process put there itself (its start-up, a
  multirun's earlier jobs), and the tasks running now besides this one. Too many threads cost 5x and more, one too
  few at most what that thread adds (1.6x on 2 cores), so work counts when it kept CPUs busy lately (work that
  comes and goes: a snapshot can miss it) or does now (work that began seconds ago: the average has not seen it
  yet). The load is the whole machine's: the part of it that fits on the CPUs this process may not use is taken to
  run there;
- threads: usable less the busy CPUs (one more than half busy counts), at least 1.

The average still counts another process's run for a minute after it ended: a run started right after one takes
fewer threads, the cheap mistake.

A run's metrics are identical only when its thread count is (bitwise, on a CPU), so the count is chosen once, at
start, and recorded; a resume takes the count saved in its checkpoint. `threads=N` or OMP_NUM_THREADS fix it.

Under DDP, Lightning gives torch cpu_count // local processes threads when it starts the ranks, unless
OMP_NUM_THREADS is set: over `threads=N` and over the Slurm allocation. So a DDP run holds OMP_NUM_THREADS at the
count chosen here (its ranks, started by Lightning or Slurm, take it too), until the next run of the process
chooses for itself; and the automatic choice of a DDP run that starts its ranks here shares the CPUs between them.
"""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

LOADAVG = Path("/proc/loadavg")  # Linux: "0.52 0.61 0.70 2/317 12345", the 4th field counting running tasks
SNAPSHOTS, SNAPSHOT_GAP_S = 5, 0.01  # running tasks are counted this many times, the fewest kept: a blip is no load
# Inside a Slurm job: the CPUs of each task (--cpus-per-task), else of the whole job on this node.
SLURM = ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")
DISTRIBUTED = ("ddp", "fsdp", "deepspeed")  # Lightning's strategies that read OMP_NUM_THREADS as they start
LOAD_WINDOW_S = 60  # the kernel's 1-minute load average decays as exp(-t / 60 s)
# When this process started, and its CPU time then: its start-up before this import (Python importing torch and
# Lightning) kept one CPU busy, so it began that much CPU time ago.
STARTED = time.monotonic() - time.process_time(), 0.0


@dataclass(frozen=True)
class Threads:
    """A thread count and how it was chosen, as the start line and env.json say it."""

    count: int
    how: str

    def __str__(self) -> str:
        return f"{self.count} thread{'s' * (self.count > 1)} ({self.how})"


def set_threads(threads: int | None, saved: int | None = None, trainer=None) -> Threads:
    """Choose the run's thread count and give torch that many (torch's count is the whole process's). `trainer`:
    the trainer's config, whose DDP layout Lightning would otherwise choose threads by."""
    give_back_omp_num_threads()
    processes = ddp_processes(trainer)
    chosen = choose(threads, saved, processes or 1)
    torch.set_num_threads(chosen.count)
    if processes:
        hold_omp_num_threads(chosen.count)
    return chosen


# What a DDP run put in OMP_NUM_THREADS, and what was there before (None: nothing).
HELD: dict[str, str | None] = {}


def hold_omp_num_threads(count: int) -> None:
    """OMP_NUM_THREADS set to the chosen count: Lightning's DDP then leaves torch's threads alone."""
    HELD.update(value=str(count), before=os.environ.get("OMP_NUM_THREADS"))
    os.environ["OMP_NUM_THREADS"] = str(count)


def give_back_omp_num_threads() -> None:
    """OMP_NUM_THREADS as it was before an earlier run of this process held it (a sequential multirun's next job
    chooses for itself); left alone if someone changed it since."""
    if HELD and os.environ.get("OMP_NUM_THREADS") == HELD["value"]:
        if HELD["before"] is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = HELD["before"]
    HELD.clear()


def ddp_processes(trainer) -> int | None:
    """None when the trainer's config runs one process (Lightning reads no thread count); else how many of its
    processes share this process's CPUs: its devices, when Lightning starts the ranks here; 1 when Slurm started
    this rank with CPUs of its own (SLURM_CPUS_PER_TASK)."""
    if trainer is None:
        return None
    strategy, devices, nodes = (trainer.get(key) for key in ("strategy", "devices", "num_nodes"))
    local = devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1
    if not (local > 1 or (isinstance(nodes, int) and nodes > 1) or any(n in str(strategy) for n in DISTRIBUTED)):
        return None
    return 1 if os.environ.get("SLURM_CPUS_PER_TASK", "").strip().isdigit() else local


def choose(threads: int | None, saved: int | None = None, processes: int = 1) -> Threads:
    """`threads` when set; else `saved`, the count of the checkpoint a run resumes, for the run continues exactly
    only with it (unless this process may now use fewer CPUs: that many threads would fight over them); else
    OMP_NUM_THREADS, the usual way to fix a process's count (torch, Lightning and the tests honour it); else the
    automatic choice, shared by the run's `processes` on these CPUs."""
    if threads:
        return Threads(threads, f"threads={threads}")
    if saved and saved <= usable_cpus()[0]:
        return Threads(saved, "as before the resume")
    if fixed := omp_num_threads():
        return Threads(fixed, f"OMP_NUM_THREADS={fixed}")
    return automatic(processes)


def omp_num_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def automatic(processes: int = 1) -> Threads:
    usable, limit = usable_cpus()
    machine = max(os.cpu_count() or usable, usable)
    lately, now = max(0.0, os.getloadavg()[0] - own_load()), others_running()
    busy = lately if now is None else max(lately, now)
    cpus = f"{usable} of {machine} CPUs" if usable < machine else f"{usable} CPU{'s' * (usable > 1)}"
    load = f"load {lately:.1f}" if now is None else f"load {lately:.1f} lately, {now} now"
    shared = f", {processes} processes" if processes > 1 else ""
    count = max(1, threads_for(usable, machine, busy) // processes)
    return Threads(count, f"auto: {cpus}{limit}, {load}{shared}")


def threads_for(usable: int, machine: int, busy: float) -> int:
    """One thread per usable CPU that the load leaves free. The load is counted on the whole machine; what fits on
    the CPUs this process may not use runs there: a Slurm job's or a container's CPUs are its own, and elsewhere the
    kernel moves threads to idle CPUs."""
    on_ours = max(0.0, busy - (machine - usable))
    return max(1, usable - int(on_ours + 0.5))


def usable_cpus() -> tuple[int, str]:
    """The CPUs this process may run on, and what limits them beyond the affinity mask ("" when nothing does)."""
    mask = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = next((name for name in SLURM if os.environ.get(name, "").strip().isdigit()), None)
    allocated = int(os.environ[slurm]) if slurm else 0
    return (allocated, f" ({slurm}={allocated})") if 0 < allocated < mask else (mask, "")


def own_load() -> float:
    """What this process still adds to the load average: its start-up, and in a multirun the jobs before this one.
    Its CPU time since it started, as a steady rate, decayed as the kernel decays the average."""
    wall = time.monotonic() - STARTED[0]
    rate = (time.process_time() - STARTED[1]) / wall if wall > 0 else 0.0
    return rate * (1 - math.exp(-wall / LOAD_WINDOW_S))


def others_running() -> int | None:
    """The tasks running or waiting for a CPU now, besides this one: the fewest of a few counts. None where the
    kernel does not say (not Linux)."""
    counts = []
    for snapshot in range(SNAPSHOTS):
        time.sleep(SNAPSHOT_GAP_S if snapshot else 0)
        try:
            counts.append(int(LOADAVG.read_text().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            return None
    return max(0, min(counts))
