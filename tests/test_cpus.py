"""The thread count a run takes: from the CPUs it may use and what keeps them busy, unless it is fixed."""

import math
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from lenet.frame import cpu_use
from lenet.training import cpus

LOOK = cpu_use.look  # the real one
WINDOW_S = 6.0  # the seconds since lenet's first look at the CPUs, as when Hydra and torch took that long


def proc_stat(busy_s: dict[int, float]) -> str:
    """/proc/stat as the kernel writes it (ticks of 10 ms), each CPU busy the seconds given."""
    ticks = {cpu: round(seconds / cpu_use.TICK_S) for cpu, seconds in busy_s.items()}
    total = sum(ticks.values())
    lines = [f"cpu  {total // 2} 3 {total - total // 2 - 3} 727351 6634 0 0 0 0 0"]
    lines += [f"cpu{cpu} {n // 2} 1 {n - n // 2 - 1} 447279 2819 0 0 0 0 0" for cpu, n in ticks.items()]
    return "\n".join([*lines, "intr 9566941 0 0 0", "ctxt 123456", "btime 1764900000", "procs_running 3", ""])


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A machine as lenet.training.cpus sees it: `allowed` CPUs in the affinity mask of `cores`, the cores other
    processes kept busy on the mask's CPUs (`busy`) and this process (`own`) over the WINDOW_S since lenet's first
    look, or where /proc/stat is missing (not Linux) a 1-minute `load` average; and environment variables."""
    for name in ("OMP_NUM_THREADS", *cpus.SLURM):
        monkeypatch.delenv(name, raising=False)

    def set_up(allowed=2, cores=2, busy=0.0, own=0.0, load: float | None = None, **env: str):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(allowed)))
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load / 2, load / 4))
        monkeypatch.setattr(cpus, "own_load", lambda: 0.0)
        before = {cpu: 10_000.0 for cpu in range(cores)}
        after = {cpu: seconds + (busy + own) * WINDOW_S / allowed * (cpu < allowed) for cpu, seconds in before.items()}
        stat = tmp_path / "stat"
        stat.write_text(proc_stat(after))
        monkeypatch.setattr(cpu_use, "STAT", stat if load is None else tmp_path / "no-such-file")
        first = cpu_use.busy_seconds(proc_stat(before)) if load is None else None
        started = cpu_use.Look(time.monotonic() - WINDOW_S, 0.0, first)
        monkeypatch.setattr(cpus, "LAST_LOOK", [started])
        # The second look, at the choice: WINDOW_S after the first, this process's CPU time `own` of it, however
        # long this test took to get there (the machine is shared).
        now = cpu_use.Look(started.at + WINDOW_S, own * WINDOW_S, None)
        monkeypatch.setattr(cpu_use, "look", lambda: replace(now, busy=cpu_use.busy_seconds(cpu_use.read_stat())))
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return set_up


EIGHT_OF_64 = {"allowed": 8, "cores": 64}
LAST_6 = "busy over the last 6.0 s"


@pytest.mark.parametrize(
    ("machine_state", "expected"),
    [
        ({}, f"2 threads (auto: 2 CPUs, 0.0 {LAST_6})"),
        ({"busy": 1.0}, f"1 thread (auto: 2 CPUs, 1.0 {LAST_6})"),
        ({"busy": 0.6}, f"1 thread (auto: 2 CPUs, 0.6 {LAST_6})"),  # more than half busy
        ({"busy": 0.4}, f"2 threads (auto: 2 CPUs, 0.4 {LAST_6})"),
        ({"own": 1.0}, f"2 threads (auto: 2 CPUs, 0.0 {LAST_6})"),  # this process's own work: Hydra, torch's import
        ({"busy": 1.0, "own": 1.0}, f"1 thread (auto: 2 CPUs, 1.0 {LAST_6})"),
        ({"busy": 2.0}, f"1 thread (auto: 2 CPUs, 2.0 {LAST_6})"),  # at least 1
        ({**EIGHT_OF_64, "busy": 4.0}, f"4 threads (auto: 8 of 64 CPUs, 4.0 {LAST_6})"),  # measured on the mask's CPUs
        ({"load": 1.0}, "1 thread (auto: 2 CPUs, load 1.0)"),  # no /proc/stat: the 1-minute average
        ({"load": 0.4}, "2 threads (auto: 2 CPUs, load 0.4)"),
        # The load fills the CPUs outside the mask first: 60 of it on 64 CPUs leaves 4 of these 8 free.
        ({**EIGHT_OF_64, "load": 60.0}, "4 threads (auto: 8 of 64 CPUs, load 60.0)"),
        ({**EIGHT_OF_64, "load": 50.0}, "8 threads (auto: 8 of 64 CPUs, load 50.0)"),
        ({"SLURM_CPUS_PER_TASK": "1"}, f"1 thread (auto: 1 of 2 CPUs (SLURM_CPUS_PER_TASK=1), 0.0 {LAST_6})"),
        # Slurm's 4 of a mask of 16: the busy CPUs fill the 12 others first.
        (
            {"allowed": 16, "cores": 16, "busy": 10.0, "SLURM_CPUS_ON_NODE": "4"},
            f"4 threads (auto: 4 of 16 CPUs (SLURM_CPUS_ON_NODE=4), 10.0 {LAST_6})",
        ),
        (
            {"allowed": 16, "cores": 16, "busy": 14.0, "SLURM_CPUS_ON_NODE": "4"},
            f"2 threads (auto: 4 of 16 CPUs (SLURM_CPUS_ON_NODE=4), 14.0 {LAST_6})",
        ),
        ({"SLURM_CPUS_PER_TASK": "8"}, f"2 threads (auto: 2 CPUs, 0.0 {LAST_6})"),  # the mask is smaller
        ({"allowed": 1}, f"1 thread (auto: 1 of 2 CPUs, 0.0 {LAST_6})"),  # taskset -c 0
    ],
    ids=[
        "idle", "one-busy", "half-busy", "less-than-half", "own-work", "own-and-one-busy", "overloaded", "mask-share",
        "not-linux", "not-linux-idle", "not-linux-mask-share", "not-linux-mask-free", "slurm-task", "slurm-node",
        "slurm-node-crowded", "slurm-above-mask", "mask",
    ],
)  # fmt: skip
def test_the_automatic_choice_follows_the_usable_cpus_and_what_keeps_them_busy(machine, machine_state, expected):
    machine(**machine_state)
    assert str(cpus.choose(None)) == expected


def test_a_choice_soon_after_the_first_look_waits_for_a_window_long_enough_to_measure(machine, monkeypatch):
    machine()
    monkeypatch.setattr(cpu_use, "look", LOOK)
    looked = time.monotonic()
    cpus.LAST_LOOK[0] = cpu_use.Look(looked, time.process_time(), cpus.LAST_LOOK[0].busy)
    chosen = cpus.choose(None)
    assert time.monotonic() - looked >= cpus.MIN_WINDOW_S  # the window runs from the look, not from the call
    assert chosen.count == 2 and chosen.how.startswith("auto: 2 CPUs, 0.0 busy over the last ")


def test_a_stale_look_is_taken_again(machine, monkeypatch):
    """A multirun's later job, long after the last look: the work done since (2 cores busy) is no news of now."""
    machine(busy=2.0)
    monkeypatch.setattr(cpu_use, "look", LOOK)
    stale = cpus.LAST_LOOK[0]
    cpus.LAST_LOOK[0] = cpu_use.Look(time.monotonic() - 2 * cpus.STALE_S, stale.own, stale.busy)
    assert cpus.choose(None).count == 2


def test_each_choice_starts_the_next_window(machine):
    machine(busy=1.0)
    assert cpus.choose(None).count == 1
    assert cpus.LAST_LOOK[0] == cpu_use.look()  # the next job of a multirun: what was busy since this one


def test_busy_seconds_are_read_from_the_cpu_lines_of_proc_stat():
    stat = "cpu  9 9 9 9 9 9 9 9 9 9\ncpu0 100 2 30 5000 40 1 2 3 50 0\ncpu1 7 0 3 9000 0 0 0 0 0 0\nintr 5 0 1\n\n"
    # user, nice, system, irq, softirq, steal: not idle, iowait nor guest (counted in user already)
    assert cpu_use.busy_seconds(stat) == {0: pytest.approx(1.38), 1: pytest.approx(0.1)}
    assert cpu_use.busy_seconds("intr 5 0 1\n") is None and cpu_use.busy_seconds(None) is None


def test_own_load_is_this_process_cpu_since_import_decayed_as_the_load_average(monkeypatch):
    # 60 s of CPU in the last 30 s: 2 threads busy; the average has taken 1 - exp(-30/60) of that in
    monkeypatch.setattr(cpus, "STARTED", (time.monotonic() - 30, time.process_time() - 60))
    assert cpus.own_load() == pytest.approx(2 * (1 - math.exp(-0.5)), abs=0.01)


def test_threads_n_wins_over_everything(machine):
    machine(OMP_NUM_THREADS="1")
    assert str(cpus.choose(3, saved=2)) == "3 threads (threads=3)"


def test_a_resume_takes_its_checkpoints_count_over_the_load_and_omp_num_threads(machine):
    machine(busy=1.0, OMP_NUM_THREADS="1")
    assert str(cpus.choose(None, saved=2)) == "2 threads (as before the resume)"


def test_a_saved_count_above_the_usable_cpus_gives_way(machine):
    machine(SLURM_CPUS_PER_TASK="1")
    assert cpus.choose(None, saved=2).how.startswith("auto: 1 of 2 CPUs")


@pytest.mark.parametrize(
    ("value", "expected"), [("1", "1 thread (OMP_NUM_THREADS=1)"), (" 2 ", "2 threads (OMP_NUM_THREADS=2)")]
)
def test_omp_num_threads_fixes_the_count(machine, value, expected):
    machine(busy=1.0, OMP_NUM_THREADS=value)
    assert str(cpus.choose(None)) == expected


@pytest.mark.parametrize("value", ["", "0", "two", "-1"])
def test_an_unusable_omp_num_threads_leaves_the_choice_automatic(machine, value):
    machine(OMP_NUM_THREADS=value)
    assert str(cpus.choose(None)) == f"2 threads (auto: 2 CPUs, 0.0 {LAST_6})"


def test_set_threads_gives_torch_the_count(machine):
    machine(busy=1.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cpus.set_threads(None).count == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


DDP_ACROSS_NODES = {"strategy": "ddp", "devices": 1, "num_nodes": 2}
ONE_DEVICE = {"strategy": "auto", "devices": 1, "num_nodes": 1}


@pytest.fixture
def torch_threads():
    """torch's count and lenet's hold on OMP_NUM_THREADS as they were (the machine fixture restores the variable)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    cpus.HELD.clear()


def test_a_ddp_run_holds_omp_num_threads_at_its_count_until_the_next_run_chooses(machine, torch_threads):
    """Lightning's DDP gives torch cpu_count // local processes threads unless OMP_NUM_THREADS is set: a DDP run
    sets it to lenet's count; the next run of the process (a sequential multirun's next job) chooses for itself."""
    machine()
    assert str(cpus.set_threads(1, trainer=DDP_ACROSS_NODES)) == "1 thread (threads=1)"
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert str(cpus.set_threads(None, trainer=ONE_DEVICE)) == f"2 threads (auto: 2 CPUs, 0.0 {LAST_6})"
    assert "OMP_NUM_THREADS" not in os.environ


def test_a_run_on_one_device_leaves_omp_num_threads_alone(machine, torch_threads):
    machine(load=0.0, OMP_NUM_THREADS="2")
    cpus.set_threads(1, trainer=ONE_DEVICE)
    assert os.environ["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize(
    ("slurm", "expected"),
    [
        ({}, f"1 thread (auto: 2 CPUs, 0.0 {LAST_6}, 2 processes)"),  # Lightning starts both ranks here
        ({"SLURM_CPUS_PER_TASK": "2"}, f"2 threads (auto: 2 CPUs, 0.0 {LAST_6})"),  # Slurm gave each its own
    ],
    ids=["lightning-starts-the-ranks", "slurm-starts-the-ranks"],
)
def test_the_automatic_choice_of_ddp_shares_the_cpus_between_the_local_ranks(machine, torch_threads, slurm, expected):
    machine(**slurm)
    assert str(cpus.set_threads(None, trainer={"strategy": "ddp", "devices": 2, "num_nodes": 1})) == expected


# --- Real processes: what a run started right after another, or beside one, chooses on 2 CPUs of this machine ---

QUIET = 0.25  # the cores other processes may keep busy on a machine taken as quiet
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass"


@pytest.fixture
def two_cpus(monkeypatch):
    """This process (and the children it starts) on 2 CPUs of its mask, no count fixed; mask restored after."""
    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("needs 2 CPUs in the affinity mask")
    for name in ("OMP_NUM_THREADS", *cpus.SLURM):
        monkeypatch.delenv(name, raising=False)
    os.sched_setaffinity(0, sorted(mask)[:2])
    monkeypatch.setattr(cpus, "LAST_LOOK", [cpu_use.look()], raising=False)
    yield
    os.sched_setaffinity(0, mask)


def busy_loop(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(seconds)])


def others_busy_now() -> float:
    """The cores other processes keep busy on this process's CPUs over half a second (/proc/stat)."""
    first = cpu_use.look()
    time.sleep(0.5)
    second = cpu_use.look()
    spent = sum(second.busy[cpu] - first.busy[cpu] for cpu in os.sched_getaffinity(0))
    return (spent - (second.own - first.own)) / (second.at - first.at)


def chosen_as_a_run_starting_now() -> int:
    cpus.LAST_LOOK[:] = [cpu_use.look()]  # a new process's first look
    return cpus.choose(None).count


@pytest.mark.slow
def test_a_run_started_right_after_a_cpu_heavy_process_ended_takes_all_the_cpus(two_cpus):
    """The next command right after the last one (a rerun, eval after train): the work that ended is not counted.
    Other tests run beside this one (pytest -n 2): a try counts when the 2 CPUs are quiet before and after it."""
    for _ in range(3):
        if others_busy_now() > QUIET:
            continue
        busy_loop(3).wait()  # 3 s of one core busy, ended
        chosen = chosen_as_a_run_starting_now()
        if chosen == 2 or others_busy_now() <= QUIET:
            assert chosen == 2
            return
    pytest.skip("the CPUs were not quiet around the busy loop: other processes kept them busy")


@pytest.mark.slow
def test_a_run_beside_a_process_that_keeps_a_core_busy_takes_one_thread_fewer(two_cpus):
    child = busy_loop(30)
    try:
        time.sleep(0.5)  # the child's Python started, its loop running
        assert chosen_as_a_run_starting_now() == 1  # 2 threads would wait for each other: 5x slower
    finally:
        child.kill()
        child.wait()
