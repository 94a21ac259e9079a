"""The thread count a run takes: from the CPUs it may use and the load on them, unless it is fixed."""

import math
import os
import time

import pytest
import torch

from lenet.training import cpus


@pytest.fixture
def machine(monkeypatch):
    """A machine as lenet.training.cpus sees it: `allowed` CPUs in the affinity mask of `cores`, a 1-minute load
    average,
    the tasks running besides this one (None: not Linux) and environment variables; this process ran nothing yet."""
    for name in ("OMP_NUM_THREADS", *cpus.SLURM):
        monkeypatch.delenv(name, raising=False)

    def set_up(allowed: int = 2, cores: int = 2, load: float = 0.0, running: int | None = 0, **env: str):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(allowed)))
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load / 2, load / 4))
        monkeypatch.setattr(cpus, "others_running", lambda: running)
        monkeypatch.setattr(cpus, "own_load", lambda: 0.0)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return set_up


EIGHT_OF_64 = {"allowed": 8, "cores": 64}


@pytest.mark.parametrize(
    ("machine_state", "expected"),
    [
        ({"load": 0.1}, "2 threads (auto: 2 CPUs, load 0.1 lately, 0 now)"),
        ({"load": 1.0, "running": 1}, "1 thread (auto: 2 CPUs, load 1.0 lately, 1 now)"),
        ({"load": 0.6}, "1 thread (auto: 2 CPUs, load 0.6 lately, 0 now)"),  # more than half busy
        ({"load": 0.4}, "2 threads (auto: 2 CPUs, load 0.4 lately, 0 now)"),
        ({"load": 0.1, "running": 1}, "1 thread (auto: 2 CPUs, load 0.1 lately, 1 now)"),  # began seconds ago
        ({"load": 1.2, "running": 0}, "1 thread (auto: 2 CPUs, load 1.2 lately, 0 now)"),  # comes and goes
        ({"load": 7.5, "running": 6}, "1 thread (auto: 2 CPUs, load 7.5 lately, 6 now)"),  # at least 1
        ({"load": 1.0, "running": None}, "1 thread (auto: 2 CPUs, load 1.0)"),  # no /proc: the average alone
        # The load fills the CPUs outside the mask first: 60 of it on 64 CPUs leaves 4 of these 8 free.
        ({**EIGHT_OF_64, "load": 60.0, "running": 60}, "4 threads (auto: 8 of 64 CPUs, load 60.0 lately, 60 now)"),
        ({**EIGHT_OF_64, "load": 50.0, "running": 50}, "8 threads (auto: 8 of 64 CPUs, load 50.0 lately, 50 now)"),
        ({"SLURM_CPUS_PER_TASK": "1"}, "1 thread (auto: 1 of 2 CPUs (SLURM_CPUS_PER_TASK=1), load 0.0 lately, 0 now)"),
        (
            {"allowed": 16, "cores": 16, "load": 10.0, "running": 10, "SLURM_CPUS_ON_NODE": "4"},
            "4 threads (auto: 4 of 16 CPUs (SLURM_CPUS_ON_NODE=4), load 10.0 lately, 10 now)",
        ),
        ({"SLURM_CPUS_PER_TASK": "8"}, "2 threads (auto: 2 CPUs, load 0.0 lately, 0 now)"),  # the mask is smaller
        ({"allowed": 1}, "1 thread (auto: 1 of 2 CPUs, load 0.0 lately, 0 now)"),  # taskset -c 0
    ],
    ids=[
        "idle", "one-busy", "half-busy", "less-than-half", "now-not-lately", "lately-not-now", "overloaded",
        "not-linux", "mask-share", "mask-free", "slurm-task", "slurm-node", "slurm-above-mask", "mask",
    ],
)  # fmt: skip
def test_the_automatic_choice_follows_the_usable_cpus_and_their_load(machine, machine_state, expected):
    machine(**machine_state)
    assert str(cpus.choose(None)) == expected


def test_a_multiruns_earlier_jobs_in_this_process_are_taken_out_of_the_load(machine, monkeypatch):
    machine(load=2.0, running=0)
    monkeypatch.setattr(cpus, "own_load", lambda: 1.8)  # the job before ran 2 threads for a while, here
    assert str(cpus.choose(None)) == "2 threads (auto: 2 CPUs, load 0.2 lately, 0 now)"


def test_own_load_is_this_process_cpu_since_import_decayed_as_the_load_average(monkeypatch):
    # 60 s of CPU in the last 30 s: 2 threads busy; the average has taken 1 - exp(-30/60) of that in
    monkeypatch.setattr(cpus, "STARTED", (time.monotonic() - 30, time.process_time() - 60))
    assert cpus.own_load() == pytest.approx(2 * (1 - math.exp(-0.5)), abs=0.01)


def test_threads_n_wins_over_everything(machine):
    machine(load=0.0, OMP_NUM_THREADS="1")
    assert str(cpus.choose(3, saved=2)) == "3 threads (threads=3)"


def test_a_resume_takes_its_checkpoints_count_over_the_load_and_omp_num_threads(machine):
    machine(load=1.0, running=1, OMP_NUM_THREADS="1")
    assert str(cpus.choose(None, saved=2)) == "2 threads (as before the resume)"


def test_a_saved_count_above_the_usable_cpus_gives_way(machine):
    machine(load=0.0, SLURM_CPUS_PER_TASK="1")
    assert cpus.choose(None, saved=2).how.startswith("auto: 1 of 2 CPUs")


@pytest.mark.parametrize(
    ("value", "expected"), [("1", "1 thread (OMP_NUM_THREADS=1)"), (" 2 ", "2 threads (OMP_NUM_THREADS=2)")]
)
def test_omp_num_threads_fixes_the_count(machine, value, expected):
    machine(load=1.0, running=1, OMP_NUM_THREADS=value)
    assert str(cpus.choose(None)) == expected


@pytest.mark.parametrize("value", ["", "0", "two", "-1"])
def test_an_unusable_omp_num_threads_leaves_the_choice_automatic(machine, value):
    machine(load=0.0, OMP_NUM_THREADS=value)
    assert str(cpus.choose(None)) == "2 threads (auto: 2 CPUs, load 0.0 lately, 0 now)"


def test_set_threads_gives_torch_the_count(machine):
    machine(load=1.0, running=1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cpus.set_threads(None).count == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class Counts:
    """/proc/loadavg as it reads on successive reads: the running tasks (this one included) given."""

    def __init__(self, *running: int):
        self.running = list(running)

    def read_text(self) -> str:
        return f"0.50 0.40 0.30 {self.running.pop(0)}/120 4242\n"


@pytest.mark.parametrize(("running", "others"), [((1, 1, 1, 1, 1), 0), ((2, 3, 2, 2, 4), 1), ((3, 3, 1, 3, 3), 0)])
def test_others_running_is_the_fewest_of_a_few_counts_less_this_process(monkeypatch, running, others):
    monkeypatch.setattr(cpus, "SNAPSHOT_GAP_S", 0)
    monkeypatch.setattr(cpus, "LOADAVG", Counts(*running))
    assert cpus.others_running() == others


def test_others_running_is_none_where_the_kernel_does_not_say(monkeypatch, tmp_path):
    monkeypatch.setattr(cpus, "LOADAVG", tmp_path / "no-such-file")
    assert cpus.others_running() is None


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
    machine(load=0.0)
    assert str(cpus.set_threads(1, trainer=DDP_ACROSS_NODES)) == "1 thread (threads=1)"
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert str(cpus.set_threads(None, trainer=ONE_DEVICE)) == "2 threads (auto: 2 CPUs, load 0.0 lately, 0 now)"
    assert "OMP_NUM_THREADS" not in os.environ


def test_a_run_on_one_device_leaves_omp_num_threads_alone(machine, torch_threads):
    machine(load=0.0, OMP_NUM_THREADS="2")
    cpus.set_threads(1, trainer=ONE_DEVICE)
    assert os.environ["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize(
    ("slurm", "expected"),
    [
        ({}, "1 thread (auto: 2 CPUs, load 0.0 lately, 0 now, 2 processes)"),  # Lightning starts both ranks here
        ({"SLURM_CPUS_PER_TASK": "2"}, "2 threads (auto: 2 CPUs, load 0.0 lately, 0 now)"),  # Slurm gave each its own
    ],
    ids=["lightning-starts-the-ranks", "slurm-starts-the-ranks"],
)
def test_the_automatic_choice_of_ddp_shares_the_cpus_between_the_local_ranks(machine, torch_threads, slurm, expected):
    machine(load=0.0, **slurm)
    assert str(cpus.set_threads(None, trainer={"strategy": "ddp", "devices": 2, "num_nodes": 1})) == expected
