"""DDP across nodes: a Slurm job of 2 nodes (n1 and n2, two slurmds of the two-node cluster that tests/slurm.py
starts on this machine), one rank on each, against 2 ranks on one node, reading a read-only data folder; a requeued
2-node job; the layout refused before anything is submitted when Slurm's and Lightning's disagree; a read-only data
folder without the files refused in one line.

This module imports no conftest at its top: the jobs import `SeesItsRank` from it, and conftest would set
OMP_NUM_THREADS in them, which hides how many threads Lightning's DDP would give torch.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import slurm as cluster

TESTS = Path(__file__).parent
# Each rank a task of one CPU; the data as in tests/test_cluster.py (conftest.VAL_SIZE).
ON_SLURM = ["hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu"]
ACROSS_NODES = ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1", "trainer.num_nodes=2", "trainer.devices=1"]
ON_ONE_NODE = ["hydra.launcher.nodes=1", "hydra.launcher.tasks_per_node=2", "trainer.num_nodes=1", "trainer.devices=2"]
# Each rank's batch is 32: the global batch is 64 in both layouts.
RECIPE = ["data.val_size=200", "data.batch_size=32", "callbacks.progress_bar.refresh_rate=0", "threads=1", "seed=1",
          "optimizer.lr=0.05", "trainer.max_epochs=3"]  # fmt: skip
TIMINGS = ("wall_s", "train_images_per_s", "attempts")  # and how many attempts they cover (a resumed run: 2)


class SeesItsRank(L.Callback):
    """Leaves `rank<N>.json` in `folder` while each rank trains: the Slurm node it runs on and torch's threads.
    `+callbacks.seen=...`."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_epoch_start(self, trainer, module):
        self.folder.mkdir(parents=True, exist_ok=True)
        seen = {"node": os.environ.get("SLURMD_NODENAME"), "threads": torch.get_num_threads()}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))


def train_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "lenet.train", "-m", *overrides]


@pytest.fixture(scope="module")
def two_nodes() -> dict[str, str]:
    """The two-node cluster's environment, without the tests' OMP_NUM_THREADS=1: the runs fix their threads by
    `threads=1`, which Lightning's DDP overrode when OMP_NUM_THREADS was unset."""
    try:
        env = cluster.start_two_nodes()
    except cluster.Unavailable as why:
        pytest.skip(f"no two-node Slurm cluster here: {why}")
    env.pop("OMP_NUM_THREADS", None)
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def read_only_data(flat_root, tmp_path_factory):
    """A copy of the fixture data on a file system mounted read-only (a tmpfs: root writes anywhere else), with an
    empty folder `empty/` beside the files. Where mounting is not allowed, a copy that only root may write: the
    tests then check that nothing in it changed."""
    folder = tmp_path_factory.mktemp("read-only")
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)]
    mounted = os.geteuid() == 0 and bool(shutil.which("mount"))
    mounted = mounted and subprocess.run(mount, capture_output=True).returncode == 0
    (folder / "empty").mkdir()
    for path in flat_root.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        for path in folder.iterdir():
            path.chmod(0o555 if path.is_dir() else 0o444)
        folder.chmod(0o555)
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)


def tree(folder: Path) -> list[tuple[str, int, int]]:
    """Every entry under `folder` with its size and modification time: what a write would change."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def run_sweep(env: dict, cwd: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(train_command(*ON_SLURM, *DDP, *overrides), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    return done, time.monotonic() - started


def without_timings(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in TIMINGS}


@pytest.mark.slow
def test_ddp_across_two_nodes_ends_as_two_ranks_on_one_node(two_nodes, read_only_data, tmp_path):
    """One rank on n1 and one on n2 write one metrics.json and one checkpoints dir, with the numbers of 2 ranks on
    one node (same global batch, same threads); each rank trains with the `threads=1` it was given; a read-only data
    folder is read, never written."""
    read_only, _ = read_only_data
    data = [f"data.root={read_only}"]
    before = tree(read_only)
    runs = {}
    for name, layout in (("across", ACROSS_NODES), ("one_node", ON_ONE_NODE)):
        seen = f"+callbacks.seen={{_target_:test_nodes.SeesItsRank,folder:{tmp_path / name / 'seen'}}}"
        sweep_dir = tmp_path / name / "sweep"
        done, wall = run_sweep(two_nodes, tmp_path, *layout, *RECIPE, *data, seen, f"hydra.sweep.dir={sweep_dir}")
        assert done.returncode == 0, done.stderr
        runs[name] = sweep_dir, wall

    sweep_dir = runs["across"][0]
    assert [p.parent.name for p in sweep_dir.glob("*/metrics.json")] == ["0"], "rank 0 writes it, once"
    assert [p.relative_to(sweep_dir) for p in sweep_dir.rglob("checkpoints")] == [Path("0/checkpoints")]
    ranks = {p.name: json.loads(p.read_text()) for p in (tmp_path / "across" / "seen").iterdir()}
    assert ranks == {"rank0.json": {"node": "n1", "threads": 1}, "rank1.json": {"node": "n2", "threads": 1}}
    assert "Training on cpu, 1 thread (threads=1), 2 processes" in (sweep_dir / "0" / "train.log").read_text()
    one_node = {p.name: json.loads(p.read_text())["node"] for p in (tmp_path / "one_node" / "seen").iterdir()}
    assert one_node == {"rank0.json": "n1", "rank1.json": "n1"}

    metrics = {name: json.loads((d / "0" / "metrics.json").read_text()) for name, (d, _) in runs.items()}
    assert without_timings(metrics["across"]) == without_timings(metrics["one_node"])
    assert tree(read_only) == before, "nothing was written into the data folder"
    for name, (_, wall) in runs.items():  # the numbers docs/sweeps.md quotes
        m = metrics[name]
        print(f"{name}: val/acc_best {m.get('val/acc_best')} test/acc {m.get('test/acc')} wall_s {m['wall_s']} "
              f"images/s {m.get('train_images_per_s')} sweep {wall:.1f} s")  # fmt: skip


@pytest.mark.slow
def test_a_requeued_two_node_job_resumes_from_its_last_checkpoint_and_ends_as_if_never_stopped(
    two_nodes, flat_root, tmp_path
):
    """`scontrol requeue` (as a preemption) of a job whose ranks run on n1 and n2: both start again and resume from
    the job's last.ckpt, and end with the numbers of the same job never stopped."""
    recipe = [*ACROSS_NODES, *RECIPE, f"data.root={flat_root}"]
    sweep_dir = tmp_path / "sweep"
    waits = f"+callbacks.wait={{_target_:conftest.WaitsAfterTheFirstEpoch,marks:{tmp_path / 'marks'}}}"
    command = train_command(*ON_SLURM, *DDP, *recipe, waits, f"hydra.sweep.dir={sweep_dir}")
    process = subprocess.Popen(command, cwd=tmp_path, env=two_nodes, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (tmp_path / "marks" / "waited").exists():  # the job waits there, its first epoch saved
        assert process.poll() is None and time.monotonic() < deadline, "no first epoch saved in 300 s"
        time.sleep(0.5)
    ids = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.replace("_", "").isdigit())
    job_id = ids[-1]  # <id>, or <array>_<task> (sorted after its array's <id>)
    cluster.requeue(job_id, conf=cluster.TWO_NODES_CONF)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    job_dir = sweep_dir / "0"
    assert f"Resuming {job_dir / 'checkpoints' / 'last.ckpt'} after epoch " in (job_dir / "train.log").read_text()

    uninterrupted, _ = run_sweep(two_nodes, tmp_path, *recipe, f"hydra.sweep.dir={tmp_path / 'alone'}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    resumed, alone = (json.loads((d / "0" / "metrics.json").read_text()) for d in (sweep_dir, tmp_path / "alone"))
    assert without_timings(resumed) == without_timings(alone)


@pytest.mark.parametrize(
    ("layout", "refusal"),
    [
        (["hydra.launcher.nodes=1", "trainer.num_nodes=2", "trainer.devices=1"],
         "error: hydra.launcher.nodes=1 but trainer.num_nodes=2: Lightning would refuse each job once it started; "
         "set both to the number of nodes a job spans"),
        (["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1", "trainer.num_nodes=2", "trainer.devices=2"],
         "error: hydra.launcher.tasks_per_node=1 but trainer.devices=2: Slurm starts one process per task and "
         "Lightning runs one per device; set both to the processes per node"),
    ],
    ids=["nodes", "tasks-per-node"],
)  # fmt: skip
def test_a_slurm_sweep_whose_layout_is_not_the_trainers_is_refused_before_submitting(layout, refusal, tmp_path):
    """No cluster needed: the refusal comes before sbatch (without it, Lightning's ValueError in the job's log)."""
    sweep_dir = tmp_path / "sweep"
    command = train_command(*ON_SLURM, *DDP, *layout, "optimizer.lr=0.1,0.05", f"hydra.sweep.dir={sweep_dir}")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [refusal]
    assert not (sweep_dir / ".submitit").exists(), "nothing was submitted"


@pytest.mark.parametrize("root", ["empty", "missing/folder"])
def test_a_read_only_data_root_without_the_files_is_one_line_naming_it(read_only_data, root):
    """Nothing can be downloaded into a read-only folder (a shared one, mounted read-only on the compute nodes): one
    line saying so, not the lock file's PermissionError."""
    from hydra.utils import instantiate

    from conftest import compose_config  # here, not at the top: see this module's docstring
    from lenet.frame.errors import DataError

    read_only, mounted = read_only_data
    if not mounted:
        pytest.skip("no read-only mount here (root writes through chmod): needs root and mount")
    data = instantiate(compose_config(f"data.root={read_only / root}", "run_dir=x").data, num_classes=10)
    with pytest.raises(DataError) as refused:
        data.prepare_data()
    why = "holds no MNIST files" if root == "empty" else f"does not exist, and {read_only}"
    assert f"data.root={read_only / root} {why}" in str(refused.value)
    assert "is not writable (read-only), so nothing can be downloaded there. Put train-images-idx3-ubyte.gz" in str(
        refused.value
    )
