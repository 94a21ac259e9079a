"""The CPUs this process may use, and the number of torch threads a run takes from them.

torch's default is one intra-op thread per CPU of the machine. When another process keeps one of those CPUs busy,
the threads wait for each other and a run slows down 5x and more, while one thread fewer holds its speed; inside a
Slurm job the machine's CPUs are not the job's. So when `threads` is null, lenet counts:

- usable: the CPUs of this process's affinity mask, and inside a Slurm job at most its allocation
  (SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE);
- busy: the cores other processes kept busy on the CPUs of the mask, on average over the seconds since lenet started
  (lenet.frame.cpu_use's first look at /proc/stat, as Hydra composes the config and torch loads), less this
  process's own CPU time; at least MIN_WINDOW_S: a run chosen sooner after the look waits the rest. Work that ended
  before this process started is not counted (the 1-minute load average still counted it for a minute: a run started
  right after another took fewer threads on an idle machine); work that began a second before the choice counts
  only its share of the window. Without /proc/stat (not Linux): the 1-minute load average, less what this process
  put there itself, the part of it that fits on the CPUs this process may not use taken to run there;
- threads: usable less the busy CPUs (one more than half busy counts), at least 1. Too many threads cost 5x and
  more, one too few at most what that thread adds (1.6x on 2 cores).

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

import torch

from lenet.frame import cpu_use

# The shortest window busy CPUs are measured over: /proc/stat counts in ticks of 10 ms, a few of them say little.
MIN_WINDOW_S = 0.25
# A look older than this says little about now (a multirun's later jobs, after the one before ran): a fresh one is
# taken, and the run waits MIN_WINDOW_S.
STALE_S = 60
# Inside a Slurm job: the CPUs of each task (--cpus-per-task), else of the whole job on this node.
SLURM = ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")
DISTRIBUTED = ("ddp", "fsdp", "deepspeed")  # Lightning's strategies that read OMP_NUM_THREADS as they start
LOAD_WINDOW_S = 60  # the kernel's 1-minute load average decays as exp(-t / 60 s), read where /proc/stat is not
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
    busy, measured_on, load = busy_cpus(machine)
    cpus = f"{usable} of {machine} CPUs" if usable < machine else f"{usable} CPU{'s' * (usable > 1)}"
    shared = f", {processes} processes" if processes > 1 else ""
    count = max(1, threads_for(usable, measured_on, busy) // processes)
    return Threads(count, f"auto: {cpus}{limit}, {load}{shared}")


def threads_for(usable: int, measured_on: int, busy: float) -> int:
    """One thread per usable CPU that the busy ones leave free. `busy` was measured on `measured_on` CPUs (the
    affinity mask's, or the whole machine's); what fits on those beyond the usable ones runs there: a Slurm job's CPUs
    are its own, and the kernel moves threads to idle CPUs."""
    on_ours = max(0.0, busy - (measured_on - usable))
    return max(1, usable - int(on_ours + 0.5))


# The last look at the CPUs: lenet's first, then the one each automatic choice of this process took.
LAST_LOOK = [cpu_use.FIRST]


def busy_cpus(machine: int) -> tuple[float, int, str]:
    """The cores other processes keep busy, the number of CPUs that was measured on, and how it was measured."""
    first = LAST_LOOK[0]
    if first.busy is None:  # not Linux: the load average
        load = max(0.0, os.getloadavg()[0] - own_load())
        return load, machine, f"load {load:.1f}"
    if time.monotonic() - first.at > STALE_S:
        first = cpu_use.look()
    time.sleep(max(0.0, first.at + MIN_WINDOW_S - time.monotonic()))
    second = LAST_LOOK[0] = cpu_use.look()
    mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(second.busy)
    busy = others_busy(first, second, mask)
    return busy, len(mask), f"{busy:.1f} busy over the last {second.at - first.at:.1f} s"


def others_busy(first: cpu_use.Look, second: cpu_use.Look, cpus: set[int]) -> float:
    """The cores other processes kept busy between two looks, on average, on `cpus`: the busy seconds of those CPUs
    less this process's own CPU seconds (its threads run there too), per second."""
    spent = sum(second.busy[cpu] - first.busy.get(cpu, second.busy[cpu]) for cpu in cpus if cpu in second.busy)
    return max(0.0, (spent - (second.own - first.own)) / (second.at - first.at))


def usable_cpus() -> tuple[int, str]:
    """The CPUs this process may run on, and what limits them beyond the affinity mask ("" when nothing does)."""
    mask = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = next((name for name in SLURM if os.environ.get(name, "").strip().isdigit()), None)
    allocated = int(os.environ[slurm]) if slurm else 0
    return (allocated, f" ({slurm}={allocated})") if 0 < allocated < mask else (mask, "")


def own_load() -> float:
    """Where the load average is read: what this process still adds to it, its start-up and in a multirun the jobs
    before this one. Its CPU time since it started, as a steady rate, decayed as the kernel decays the average."""
    wall = time.monotonic() - STARTED[0]
    rate = (time.process_time() - STARTED[1]) / wall if wall > 0 else 0.0
    return rate * (1 - math.exp(-wall / LOAD_WINDOW_S))
