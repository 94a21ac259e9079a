"""Sweeps on a real Slurm cluster (a one-node one, started by tests/slurm.py): real sbatch, squeue, requeues.

Submitting takes seconds and each job starts a Python process, so all but the refusal are marked slow: `make
test-all` (and CI) runs them.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import slurm as cluster
from conftest import VAL_SIZE, lenet_command

# Jobs small enough for the one 2-core node: one CPU each, so two run at once.
ON_THE_NODE = ["hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]
TRAINING = [f"data.val_size={VAL_SIZE}", "data.batch_size=32", "callbacks.progress_bar.refresh_rate=0", "threads=1"]


def sweep(env: dict, cwd: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = lenet_command("train", "-m", *ON_THE_NODE, *overrides)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def job_ids(sweep_dir: Path) -> list[str]:
    """The Slurm ids of a sweep's jobs (<array>_<task>, or <id> for a single one), from submitit's folders."""
    ids = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.replace("_", "").isdigit()]
    tasks = sorted(name for name in ids if "_" in name)
    return tasks or sorted(ids)


def test_sbatch_refusing_the_jobs_is_one_line_naming_the_setting(slurm, flat_root, tmp_path):
    """The default launcher asks for a GPU: a CPU-only cluster refuses it ("Invalid generic resource")."""
    sweep_dir = tmp_path / "sweep"
    command = lenet_command("train", "-m", "hydra/launcher=slurm", f"data.root={flat_root}", "optimizer.lr=0.1,0.05",
                            f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: sbatch refused the jobs: Invalid generic resource (gres) specification: this cluster has no GPUs for "
        "hydra.launcher.gpus_per_node=1; on CPU nodes pass hydra.launcher.gpus_per_node=0, or take "
        "hydra/launcher=slurm_cpu"
    ]
    assert not (sweep_dir / ".submitit").exists(), "nothing was submitted"


@pytest.mark.slow
def test_a_job_larger_than_any_node_is_refused_naming_the_node(slurm, flat_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep(slurm, tmp_path, "hydra.launcher.cpus_per_task=64", f"data.root={flat_root}", "seed=1",
                   f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert result.returncode == 1
    largest = f"the largest node has {os.cpu_count()} CPUs"
    assert f"hydra.launcher.cpus_per_task=64 (x tasks_per_node) asks for 64 CPUs; {largest}" in result.stderr
    assert not (sweep_dir / ".submitit").exists(), "nothing was submitted"


@pytest.mark.slow
def test_a_sweep_on_slurm_ends_with_every_metrics_json_and_the_report(slurm, flat_root, tmp_path):
    result = sweep(slurm, tmp_path, "optimizer.lr=0.05,0.02", "trainer.max_epochs=1", f"data.root={flat_root}",
                   *TRAINING, f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json")) == ["0", "1"]
    assert "2 jobs: 2 done, 0 failed, 0 unfinished." in (tmp_path / "sweep" / "report.md").read_text()
    assert len({job.split("_")[0] for job in job_ids(tmp_path / "sweep")}) == 1, "one array of two jobs"


@pytest.mark.slow
def test_ddp_in_a_slurm_job_runs_two_ranks_slurm_started(slurm, flat_root, tmp_path):
    """tasks_per_node = trainer.devices: Slurm starts the ranks, Lightning reads them from its environment."""
    result = sweep(slurm, tmp_path, "hydra.launcher.tasks_per_node=2", "trainer=ddp", "trainer.accelerator=cpu",
                   "trainer.devices=2", "trainer.max_epochs=1", f"data.root={flat_root}", *TRAINING, "seed=1",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json")] == ["0"], "rank 0 writes it, once"
    log = (tmp_path / "sweep" / "0" / "train.log").read_text()
    assert ", 2 processes" in log


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.5)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("how", ["requeue", "time limit"])
def test_a_requeued_job_resumes_from_its_last_checkpoint_and_ends_as_if_never_stopped(how, slurm, flat_root, tmp_path):
    """`scontrol requeue` (as a preemption), or the USR2 that Slurm sends before the time limit (submitit requeues
    the job): the job starts again in its own dir and resumes from its last.ckpt."""
    recipe = ["trainer.max_epochs=6", "optimizer.lr=0.05", f"data.root={flat_root}", *TRAINING]
    sweep_dir = tmp_path / "sweep"
    waits = f"+callbacks.wait={{_target_:conftest.WaitsAfterTheFirstEpoch,marks:{tmp_path / 'marks'}}}"
    command = lenet_command("train", "-m", *ON_THE_NODE, *recipe, waits, f"hydra.sweep.dir={sweep_dir}")
    process = subprocess.Popen(command, cwd=tmp_path, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job_dir = sweep_dir / "0"
    wait_for(lambda: (tmp_path / "marks" / "waited").exists(), 300, "first epoch saved")  # the job waits there
    job_id = job_ids(sweep_dir)[0]
    if how == "requeue":
        cluster.requeue(job_id)
    else:
        cluster.signal(job_id, "USR2")
        wait_for(lambda: cluster.squeue(job_id).get(job_id) == "PENDING", 60, "requeue by submitit")
        cluster.release(job_id)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    log = (job_dir / "train.log").read_text()
    assert f"Resuming {job_dir / 'checkpoints' / 'last.ckpt'} after epoch " in log
    last = job_dir / "checkpoints" / "last.ckpt"
    assert f"requeued by Slurm after epoch 1: it resumes from {last} by itself" in log, "not an error: Slurm resumes it"
    assert "error: interrupted" not in log and "Continue the sweep" not in log

    alone = subprocess.run(lenet_command("train", *recipe, f"hydra.run.dir={tmp_path / 'alone'}"), cwd=tmp_path,
                           env=slurm, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    timings = ("wall_s", "train_images_per_s", "attempts")
    resumed, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (job_dir, tmp_path / "alone"))
    assert resumed["attempts"] == 2, "its timings cover both attempts"
    assert {k: v for k, v in resumed.items() if k not in timings} == {
        k: v for k, v in uninterrupted.items() if k not in timings
    }
