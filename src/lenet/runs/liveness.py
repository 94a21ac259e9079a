"""Which jobs of a sweep still run, for lenet.report: a sweep left to run on its own (hydra.launcher.wait=false), or
one whose launcher died, is followed by reporting it.

A job without a result is queued (Slurm has it waiting), running (a live process holds its run dir, lenet.runs.
holder, which says its epoch; or Slurm runs it), or lost (Slurm no longer has it, and it left no result: a node
failed, or it was cancelled). Otherwise it is unfinished: stopped, and a continuation resumes it.
"""

from dataclasses import replace
from pathlib import Path

from lenet.runs import holder, queue, rundir
from lenet.runs.jobs import Job

QUEUED, RUNNING, LOST = "queued", "running", "lost"


def with_states(jobs: list[Job], sweep_dir: Path) -> list[Job]:
    """`jobs` with what still runs said (Job.live), and a job for each that Slurm has queued without a dir yet."""
    states = live_states(sweep_dir)
    named = {job.name for job in jobs}
    waiting = [Job(name=name, overrides=[], task="train", path=sweep_dir / name, live=state)
               for name, state in states.items() if name not in named]  # fmt: skip
    return [replace(job, live=states.get(job.name, "")) for job in jobs] + waiting


def live_states(sweep_dir: Path) -> dict[str, str]:
    """Job name (its number): queued, running (epoch N of M), or lost, for the jobs of `sweep_dir` without a
    result."""
    submitted = queue.submitted(sweep_dir)
    slurm = queue.states(list(submitted.values()))  # None: squeue cannot be asked here
    numbers = sorted({*submitted, *(int(p.name) for p in rundir.job_dirs(sweep_dir))})
    states = {}
    for number in numbers:
        run_dir = sweep_dir / str(number)
        if rundir.finished(run_dir) or rundir.failure(run_dir):
            continue
        held = holder.read(run_dir)
        job_state = (slurm or {}).get(submitted.get(number, ""))
        if held is not None and held.alive():
            of = f" of {held.max_epochs}" if held.max_epochs else ""
            states[str(number)] = f"{RUNNING} (epoch {held.epoch}{of})" if held.epoch else RUNNING
        elif job_state in queue.RUNNING:
            states[str(number)] = RUNNING
        elif job_state in queue.WAITING:
            states[str(number)] = QUEUED
        elif number in submitted and slurm is not None:
            states[str(number)] = LOST
    return states
