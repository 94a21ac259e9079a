"""The work done on each CPU, as /proc/stat counts it, and this process's share of it; the first look is taken as lenet
starts (lenet.cli imports this module first), so that the automatic thread count (lenet.training.cpus) can see what
other processes kept busy while Hydra composed the config and torch loaded: seconds of what is busy now, where the
1-minute load average still counts work that ended a minute ago.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

STAT = Path("/proc/stat")  # Linux: "cpu0 user nice system idle iowait irq softirq steal guest guest_nice", in ticks
TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (guest time is counted in user already)


@dataclass(frozen=True)
class Look:
    """When the CPUs were looked at (time.monotonic), this process's CPU seconds then (all its threads), and each
    CPU's busy seconds so far; `busy` is None where the kernel does not say (not Linux)."""

    at: float
    own: float
    busy: dict[int, float] | None


def look() -> Look:
    return Look(time.monotonic(), time.process_time(), busy_seconds(read_stat()))


def read_stat() -> str | None:
    try:
        return STAT.read_text()
    except OSError:
        return None


def busy_seconds(stat: str | None) -> dict[int, float] | None:
    """Each CPU's busy seconds since boot, from /proc/stat's `cpuN` lines; None without them."""
    busy = {}
    for line in (stat or "").splitlines():
        name, *ticks = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and len(ticks) >= 8:
            busy[int(name[3:])] = sum(int(ticks[field]) for field in BUSY_FIELDS) * TICK_S
    return busy or None


FIRST = look()
