"""What Slurm says of its jobs: this process's own job, which of a list of jobs are still queued or running, and
which Slurm job runs each job of a sweep (as its launcher queued them).

A job is named as squeue names it: `<array>_<task>` for a task of an array (a sweep's jobs, as submitit queues them),
else its number. squeue answers on a login node and inside jobs alike; where it cannot be asked (no Slurm here, or
the controller does not answer), `states` returns None and its callers say they could not tell.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from lenet.frame import atomic
from lenet.frame.safe_read import Unreadable, mapping, read_json

SUBMITTED = "slurm_jobs.json"  # in a sweep dir: the Slurm job of each of its jobs, by number (lenet's Slurm launcher)

# The states of a job that may still run or is running: any other state, or a job squeue no longer lists, has ended.
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}
ALIVE = WAITING | RUNNING


def this_job() -> str | None:
    """This process's Slurm job, as squeue names it; None outside a job."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def states(job_ids: list[str]) -> dict[str, str] | None:
    """The state of each of `job_ids` squeue still lists (PENDING, RUNNING, ...); a job it no longer lists is
    missing from the answer. None when squeue cannot be asked."""
    if not job_ids:
        return {}
    if not shutil.which("squeue"):
        return None
    try:
        # --array: each task of an array on its own line (a pending array is one line otherwise); --states=all: a job
        # that has just ended is listed (COMPLETED, CANCELLED) rather than taken for one queued
        listed = subprocess.run(["squeue", "-h", "--array", "--states=all", "-o", "%i %T", "-j", ",".join(job_ids)],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode and "Invalid job id" not in listed.stderr:
        return None  # the controller did not answer; an id it has forgotten is no answer about the others, though
    found = dict(line.split()[:2] for line in listed.stdout.splitlines() if len(line.split()) >= 2)
    return {job: state for job, state in found.items() if job in job_ids}


def alive(job_ids: list[str]) -> set[str] | None:
    """Which of `job_ids` are queued or running; None when squeue cannot be asked."""
    known = states(job_ids)
    return None if known is None else {job for job, state in known.items() if state in ALIVE}


def submitted(sweep_dir: Path) -> dict[int, str]:
    """The Slurm job that runs each job of the sweep, by its number, as the launches queued them (the latest)."""
    path = sweep_dir / SUBMITTED
    if not path.is_file():
        return {}
    try:
        jobs = mapping(read_json(path, SUBMITTED), SUBMITTED)
    except Unreadable:
        return {}
    return {int(number): job for number, job in jobs.items() if number.isdigit() and isinstance(job, str)}


def record_submitted(sweep_dir: Path, jobs: dict[int, str]) -> None:
    """Add the jobs a launch has just queued to the sweep's record."""
    if jobs:
        everyone = submitted(sweep_dir) | jobs
        atomic.write_text(sweep_dir / SUBMITTED, json.dumps({str(n): everyone[n] for n in sorted(everyone)}, indent=1))


def requeued() -> bool:
    """Whether this Slurm job has been requeued, rather than cancelled (scancel sends the same SIGTERM): Slurm counts
    a requeue in the job's restarts before it signals the job, and SLURM_RESTART_COUNT is the count this attempt
    started with."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or not shutil.which("scontrol"):
        return False
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    restarts = re.search(r"\bRestarts=(\d+)", shown.stdout)
    return bool(restarts) and int(restarts.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)
