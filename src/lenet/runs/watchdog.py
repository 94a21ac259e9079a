"""A job of a joblib sweep ends when its sweep's process does.

joblib's workers (loky's processes) outlive a sweep killed with SIGKILL: measured, both still training and writing
checkpoints 12.5 minutes later, 1.2 GB each, and a continued sweep would share their run dirs. The sweep's process
names itself in the environment its workers inherit; each job watches it and, once it is gone, stops as SIGTERM
stops a run (its last finished epoch kept, which the continued sweep resumes); then the worker ends. Slurm jobs are
not watched: they outlive their launcher on purpose (lenet's Slurm launcher waits on a login node; its jobs must not
end with an ssh session).
"""

import os
import signal
import threading
import time

SWEEP_PROCESS = "LENET_SWEEP_PID"  # the process id of the joblib sweep whose workers run the jobs
POLL_S = 1.0
GRACE_S = 60.0  # after the first SIGTERM: the most a job may take to stop; then the process ends regardless

_watching = threading.Event()  # a worker runs several jobs, one after the other: one watcher is enough


def name_sweep_process() -> None:
    """In a joblib sweep's process, before its workers start: they inherit the variable."""
    os.environ[SWEEP_PROCESS] = str(os.getpid())


def stop_when_sweep_ends() -> None:
    """In a job that runs in a worker process of a joblib sweep: a daemon thread that stops this process once the
    sweep's process is gone (this process's parent changed, or that process id no longer exists)."""
    sweep = int(os.environ.get(SWEEP_PROCESS) or 0)
    if not sweep or sweep == os.getpid() or _watching.is_set():  # no joblib sweep, or its jobs run in its process
        return
    _watching.set()
    threading.Thread(target=_watch, args=(sweep, os.getppid()), name="lenet-sweep-watchdog", daemon=True).start()


def _watch(sweep: int, parent: int) -> None:
    while os.getppid() == parent and _exists(sweep):  # a dead parent's children get another parent at once
        time.sleep(POLL_S)
    # The first SIGTERM stops the job as SIGTERM stops any run: Lightning ends the batch, the last finished epoch is
    # kept, lenet says so. Once the job has ended, no one handles SIGTERM: the next one ends the idle worker.
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(POLL_S)
    os._exit(143)  # something kept handling SIGTERM: 128 + SIGTERM, as a shell reports it


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: another user's process took the id
        return False
    return True
