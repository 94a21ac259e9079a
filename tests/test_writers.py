"""Many processes, one record: a run dir has one writer (lenet.runs.holder), a refused attempt leaves a finished run's
files as they were, and a Slurm sweep continued after its launcher died leaves the jobs still running alone, or is
submitted and left (hydra.launcher.wait=false). Real processes and the real one-node Slurm cluster (tests/slurm.py)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest

import slurm as cluster
from conftest import VAL_SIZE, lenet_command
from test_cluster import ON_THE_NODE, TRAINING, job_ids, wait_for

QUICK = [f"data.val_size={VAL_SIZE}", "data.batch_size=32", "callbacks.progress_bar.refresh_rate=0", "threads=1"]


class HoldsUntil(L.Callback):
    """Holds training at the start of its second epoch until the file `go` exists (at most `seconds`): a job or run
    that is still running whatever the machine's speed. `+callbacks.hold=...` in every attempt."""

    def __init__(self, go: str, seconds: float = 240):
        self.go, self.seconds = Path(go), seconds

    def on_train_epoch_start(self, trainer, module):
        deadline = time.monotonic() + self.seconds
        while trainer.current_epoch == 1 and not self.go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def holds(go: Path) -> str:
    return f"+callbacks.hold={{_target_:test_writers.HoldsUntil,go:{go}}}"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def environment(**more: str) -> dict[str, str]:
    tests = str(Path(__file__).parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])), **more}


def run(cwd: Path, module: str, *overrides: str, env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(lenet_command(module, *overrides), cwd=cwd, env=env or environment(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_a_refused_attempt_leaves_a_finished_run_dir_byte_identical(flat_root, tmp_path):
    """The same run dir again, with another config or the same one: refused in one line, before anything is written,
    so lenet.report and lenet.reproduce still read the run that finished there."""
    run_dir = tmp_path / "run"
    recipe = [f"data.root={flat_root}", *QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    assert run(tmp_path, "train", *recipe).returncode == 0
    before = files(run_dir)
    for again in (["trainer.max_epochs=3"], []):
        refused = run(tmp_path, "train", *recipe, *again)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"error: {run_dir} holds a finished run (metrics.json), kept as it is: run lenet.train in a new run dir "
            f"(leave out hydra.run.dir); to train it longer or on other data, start that run from its weights: "
            f"init_from={run_dir}"
        ]
        assert files(run_dir) == before, "not .hydra/, not metrics.json, not the log: nothing changed"
    evaluated = run(tmp_path, "eval", f"ckpt_path={run_dir}", f"hydra.run.dir={run_dir}")
    assert evaluated.returncode == 1 and "holds a finished run" in evaluated.stderr
    assert files(run_dir) == before


@pytest.mark.slow
def test_a_second_process_is_refused_while_the_first_trains_and_takes_over_once_it_is_killed(flat_root, tmp_path):
    """Two terminals, one run dir: the second is refused naming the first (host, pid); once the first is killed
    (SIGKILL: it could not give the dir back), a resume with a typo is refused and changes nothing (no error.txt,
    which would make the next attempt start over), and the next attempt takes the dir over, says so, and resumes."""
    run_dir, go = tmp_path / "run", tmp_path / "go"
    recipe = [f"data.root={flat_root}", *QUICK, "trainer.max_epochs=2", holds(go), f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen(lenet_command("train", *recipe), cwd=tmp_path, env=environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        held = wait_for(lambda: _holder(run_dir) if _holder(run_dir).get("epoch") == 1 else None, 120, "epoch 1")
        assert held["pid"] == first.pid and held["max_epochs"] == 2
        before = files(run_dir)
        second = run(tmp_path, "train", *recipe)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"error: {run_dir} is in use by pid {first.pid} on {os.uname().nodename}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held['since']))}: wait for it to end, or train in "
            "another run dir"
        ]
        assert files(run_dir) == before, "the refused process wrote nothing there"
    finally:
        first.kill()
        first.communicate()
    record = {name: data for name, data in files(run_dir).items() if name not in ("train.log", "holder.json")}
    for typo in ("optimizer.lr=-1", "model.dropout=0.3"):  # refused by the checks, then by the resume's own check
        refused = run(tmp_path, "train", *recipe, typo)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert refused.stderr.strip() in (run_dir / "train.log").read_text(), "its line goes into the log"
        after = {name: data for name, data in files(run_dir).items() if name != "train.log"}
        assert after == record, "a refused resume keeps the record and checkpoints that resume the run"
    go.touch()
    resumed = run(tmp_path, "train", *recipe)
    assert resumed.returncode == 0, resumed.stderr
    log = (run_dir / "train.log").read_text()
    assert f"taken over from pid {first.pid} on {os.uname().nodename}" in log and "which has ended" in log
    assert f"Resuming {run_dir / 'checkpoints' / 'last.ckpt'} after epoch 1" in log
    assert not (run_dir / "holder.json").exists(), "given back at the end"


def _holder(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "holder.json").read_text())
    except (OSError, ValueError):
        return {}


# --- On Slurm ---


def slurm_sweep(*overrides: str) -> list[str]:
    return lenet_command("train", "-m", *ON_THE_NODE, *TRAINING, *overrides)


def hangup_as_default() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.slow
def test_a_sweep_continued_after_its_launcher_died_leaves_running_jobs_alone(slurm, flat_root, tmp_path):
    """An ssh drop (SIGHUP) ends the launcher on the login node; its jobs run on. The same command continues the
    sweep: the finished job is not queued again, the running ones are not duplicated but waited for, and the report
    counts every job."""
    sweep_dir, go = tmp_path / "sweep", tmp_path / "go"
    go.mkdir()
    (go / "0").touch()  # job 0 runs through; jobs 1 and 2 hold in their second epoch
    recipe = ["optimizer.lr=0.05,0.02,0.01", "trainer.max_epochs=2", f"data.root={flat_root}",
              f"+callbacks.hold={{_target_:test_writers.HoldsUntil,go:{go}/${{hydra:job.num}}}}",
              f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    # SIGHUP as a login shell leaves it (a suite run under nohup would hand its SIG_IGN on to the launcher)
    launcher = subprocess.Popen(slurm_sweep(*recipe), cwd=tmp_path, env=slurm, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=hangup_as_default)  # fmt: skip
    wait_for(
        lambda: (
            (sweep_dir / "0" / "metrics.json").is_file()
            and all(_holder(sweep_dir / str(n)).get("epoch") == 1 for n in (1, 2))
        ),
        300,
        "job 0 done, jobs 1 and 2 held",
    )
    launcher.send_signal(signal.SIGHUP)
    launcher.communicate(timeout=60)
    submitted = json.loads((sweep_dir / "slurm_jobs.json").read_text())
    assert set(cluster.squeue(*submitted.values()).values()) == {"RUNNING"}, "the jobs outlive their launcher"
    finished_job = files(sweep_dir / "0")

    continued = subprocess.Popen(slurm_sweep(*recipe), cwd=tmp_path, env=slurm, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(15)  # what it queues, it queues at once
    assert json.loads((sweep_dir / "slurm_jobs.json").read_text()) == submitted, "nothing queued again"
    assert sorted(job_ids(sweep_dir)) == sorted(submitted.values()), "nothing submitted again (.submitit)"
    queued = cluster.squeue(*submitted.values())  # other tests' jobs may share the cluster: this sweep's only
    assert queued == {submitted["1"]: "RUNNING", submitted["2"]: "RUNNING"}, "no duplicate in the queue"
    for n in (1, 2):
        (go / str(n)).touch()
    stdout, stderr = continued.communicate(timeout=300)
    assert continued.returncode == 0, stderr
    for n in (1, 2):
        assert f"job {n} is still running (Slurm job {submitted[str(n)]}, running): waited for" in stdout
    assert files(sweep_dir / "0") == finished_job
    for n in (1, 2):
        events = list((sweep_dir / str(n)).glob("events.out.tfevents.*"))
        assert len({path.name.split(".")[-2] for path in events}) == 1, "one process wrote each job's events"
    assert "3 jobs: 3 done, 0 failed, 0 unfinished." in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_sweep_submitted_and_left_shows_each_job_and_is_reported_by_its_last_job(slurm, flat_root, tmp_path):
    """hydra.launcher.wait=false: the command queues the jobs, says their ids and how to follow them, and exits.
    lenet.report shows each job queued, running (its epoch) or lost (cancelled); the last job to end writes the
    report."""
    sweep_dir, go = tmp_path / "sweep", tmp_path / "go"
    command = slurm_sweep("optimizer.lr=0.05,0.02,0.01", "trainer.max_epochs=2",
                          f"data.root={flat_root}", holds(go),
                          "hydra.launcher.wait=false", f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    started = time.monotonic()
    submitted = subprocess.run(command, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    assert time.monotonic() - started < 30, "it does not wait for the jobs"
    jobs = json.loads((sweep_dir / "slurm_jobs.json").read_text())
    assert f"Queued job 0 as {jobs['0']}, job 1 as {jobs['1']}, job 2 as {jobs['2']} in Slurm." in submitted.stdout
    assert f"Progress: python -m lenet.report {sweep_dir}" in submitted.stdout

    # Two jobs fit on the node (a CPU each): they hold in their second epoch, the third waits for a CPU.
    wait_for(lambda: all(_holder(sweep_dir / n).get("epoch") == 1 for n in ("0", "1")), 300, "two jobs in epoch 2")
    status = run(tmp_path, "report", str(sweep_dir), env=slurm)
    assert status.returncode == 0, status.stderr
    assert "3 jobs: 0 done, 0 failed, 0 unfinished, 1 queued, 2 running." in status.stdout
    assert "- job 0 running (epoch 1 of 2): no metrics.json yet" in status.stdout
    assert "- job 2 queued: waiting in Slurm's queue" in status.stdout
    assert "Continue the sweep" not in status.stdout, "nothing to continue while every job runs"

    subprocess.run(["scancel", jobs["1"]], env=slurm, check=True)
    wait_for(lambda: jobs["1"] not in cluster.squeue(), 60, "the cancelled job out of the queue")
    go.touch()
    wait_for(lambda: not cluster.squeue(*jobs.values()), 300, "every job ended")
    report = (sweep_dir / "report.md").read_text()  # lenet.report above wrote one too: the last job's replaced it
    assert "3 jobs: 2 done, 0 failed, 0 unfinished, 1 lost." in report
    assert "- job 1 lost: Slurm no longer has it and it left no result: continuing the sweep runs it again" in report


@pytest.mark.slow
def test_a_job_out_of_requeues_at_its_time_limit_is_one_line_naming_the_settings(slurm, flat_root, tmp_path):
    """USR2 before the time limit, with no requeue left (max_num_timeout=0): one line naming timeout_min and
    max_num_timeout, not submitit's traceback; the job keeps its last.ckpt, which a continuation resumes."""
    sweep_dir, go = tmp_path / "sweep", tmp_path / "go"
    command = slurm_sweep("seed=1", "trainer.max_epochs=2", f"data.root={flat_root}", holds(go),
                          "hydra.launcher.max_num_timeout=0", "hydra.launcher.timeout_min=5",
                          f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    launcher = subprocess.Popen(command, cwd=tmp_path, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    wait_for(lambda: _holder(sweep_dir / "0").get("epoch") == 1, 300, "epoch 1")
    cluster.signal(json.loads((sweep_dir / "slurm_jobs.json").read_text())["0"], "USR2")
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode != 0
    assert "Traceback" not in stderr
    line = next(line for line in stderr.splitlines() if "ran out of time" in line)
    assert "hydra.launcher.timeout_min=5" in line and "hydra.launcher.max_num_timeout=0" in line
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep_dir / "0" / "error.txt").exists(), "not a failure: a continuation resumes it"


def test_a_search_cannot_be_submitted_and_left(tmp_path):
    """Optuna chooses each trial from the results before it: a search waits for its trials."""
    refused = run(tmp_path, "train", "hparams_search=optuna", "hydra/launcher=slurm_cpu", "hydra.launcher.wait=false",
                  f"hydra.sweep.dir={tmp_path / 'search'}")  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: hydra.launcher.wait=false cannot run a search (hparams_search): each trial is chosen from the results "
        "of those before, so the search waits for them; leave out hydra.launcher.wait=false"
    ]
    assert not (tmp_path / "search").exists()


@pytest.mark.slow
def test_a_cancelled_job_ends_the_waiting_sweep_with_one_line(slurm, flat_root, tmp_path):
    """`scancel`: the job ends without a result. Without Slurm's accounting submitit cannot tell it from a job still
    running and waited for ever; the sweep now says it in one line, and a continuation resumes the job."""
    sweep_dir, go = tmp_path / "sweep", tmp_path / "go"
    command = slurm_sweep("seed=1", "trainer.max_epochs=2", f"data.root={flat_root}", holds(go),
                          f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    launcher = subprocess.Popen(command, cwd=tmp_path, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    wait_for(lambda: _holder(sweep_dir / "0").get("epoch") == 1, 300, "epoch 1")
    job = json.loads((sweep_dir / "slurm_jobs.json").read_text())["0"]
    subprocess.run(["scancel", job], env=slurm, check=True)
    _, stderr = launcher.communicate(timeout=180)
    assert launcher.returncode != 0 and "Traceback" not in stderr
    assert f"error: job 0 (Slurm job {job}) ended without a result (cancelled); continue the sweep" in stderr
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").is_file()
