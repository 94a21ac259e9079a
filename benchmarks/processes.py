"""Whole processes measured from outside, for the benchmarks: wall time, peak RSS, and how much CPU others took.

The machine is shared and its speed moves 2-3x between days, so each figure comes with the CPU other processes used
meanwhile (`other_cores`), and the benchmarks compare figures taken side by side, never against a number from
another day.
"""

import contextlib
import os
import resource
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1e6  # decimal megabytes: 1 GB = 1000 MB
RUSAGE_BOTH = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
POLL_S = 0.02


def cpu_snapshot() -> tuple[float | None, float, float]:
    """(machine-wide busy CPU s, CPU s of this process and its finished children, wall clock s)."""
    try:
        ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = None  # not Linux
    own = sum(usage.ru_utime + usage.ru_stime for usage in map(resource.getrusage, RUSAGE_BOTH))
    return busy, own, time.perf_counter()


def other_cores(before: tuple[float | None, float, float]) -> float | None:
    """Cores' worth of CPU that other processes used since `before`. The machine is shared, so a
    measurement taken while others computed is slower than the code; this says by how much to doubt it."""
    busy, own, wall = cpu_snapshot()
    if busy is None or before[0] is None:
        return None
    return max(0.0, (busy - before[0]) - (own - before[1])) / (wall - before[2])


def peak_rss_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), 0 once it has exited or where /proc does not exist.

    Not ru_maxrss: a child forked from this big process (torch loaded) inherits its high-water mark.
    """
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def run_child(command: list[str], log: Path, timeout: float) -> tuple[int, int, float]:
    """Run `command` with its output in `log`; return its exit code, peak RSS in KiB and CPU seconds (user and
    system: steadier than the wall clock on a busy machine).

    Polls every 20 ms: VmHWM only grows, so the last reading before exit is the peak (a rise in the last
    20 ms, during shutdown, would be missed). A timeout or Ctrl-C kills the child's whole process group.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, peak = time.perf_counter() + timeout, 0
    try:
        while True:
            peak = max(peak, peak_rss_kib(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it
                return proc.returncode, peak, usage.ru_utime + usage.ru_stime
            if time.perf_counter() > deadline:
                raise subprocess.TimeoutExpired(command, timeout)
            time.sleep(POLL_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):  # it may have just ended by itself
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped, so its CPU time counts as ours, not as other processes'
        raise


def logged_at(stamp: str) -> float:
    """time.time() of a lenet log line's stamp (Hydra's format: `2026-12-08 04:11:27,316`)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def timed_child(command: list[str], log: Path, timeout: float) -> dict:
    """`run_child` with the wall clock around it: its `started` (time.time(), to place the child's log lines on),
    `wall_s`, `peak_rss_mb`, `returncode` and `other_cores`."""
    before, started = cpu_snapshot(), time.time()
    returncode, rss_kib, cpu_s = run_child(command, log, timeout)
    return {
        "started": started,
        "cpu_s": cpu_s,
        "wall_s": time.perf_counter() - before[2],
        "peak_rss_mb": rss_kib * 1024 / MB if rss_kib else None,
        "returncode": returncode,
        "other_cores": other_cores(before),
    }
