"""What a run writes survives a full disk, a kill mid-save and a killed sweep: on a real small file system (a tmpfs
mounted for the test; skipped where mounting is not permitted) and with real processes."""

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import VAL_SIZE, compose_config, fixture_overrides, lenet_command
from lenet import CONFIG_DIR
from lenet.frame import atomic
from lenet.frame.full_disk import LogFile
from lenet.runs import rundir
from lenet.runs.multirun import MultirunCheck
from lenet.runs.watchdog import SWEEP_PROCESS
from lenet.training.checkpoints import Checkpoint
from lenet.training.fit import train
from lenet.training.saving import WholeCheckpointIO

TRAINING = [f"data.val_size={VAL_SIZE}", "data.batch_size=32", "callbacks.progress_bar.refresh_rate=0", "threads=1"]


@pytest.fixture
def disk(tmp_path):
    """A file system of its own, 4 MB (room for about ten checkpoints), under tmp_path."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


class Filler(threading.Thread):
    """Another program writing to the disk: it takes all the free space, and whatever comes free, until stopped."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stopped, self.full = path, threading.Event(), threading.Event()

    def run(self):
        with open(self.path, "wb", buffering=0) as file:
            while not self.stopped.is_set():
                try:
                    file.write(bytes(4096))
                except OSError:
                    self.full.set()
                    time.sleep(0.001)

    def __enter__(self):
        self.start()
        assert self.full.wait(10), "the disk did not fill"
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join()
        self.path.unlink()


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- Checkpoints ---


def test_a_checkpoint_that_does_not_fit_leaves_the_one_before_whole_and_nothing_in_tmpdir(disk, tmp_path, monkeypatch):
    """Lightning's own CheckpointIO copied the new file over the old one from $TMPDIR: the copy a full disk cut short
    was all that was left (TorchCheckpointIO in place of WholeCheckpointIO fails here)."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # read $TMPDIR again
    path, io = disk / "checkpoints" / "last.ckpt", WholeCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.zeros(50_000)}, path)  # 200 KB
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "as readable as a file written in place"
    with Filler(disk / "filler"), pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2, "w": torch.ones(60_000)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert files(disk / "checkpoints") == ["last.ckpt"] and files(tmpdir) == []


KILLED_SAVE = """
import sys, torch
from lenet.training.saving import WholeCheckpointIO
from lenet.frame.full_disk import LogFile, quiet_threads
WholeCheckpointIO().save_checkpoint({"epoch": 1}, sys.argv[1])
print("saved", flush=True)
WholeCheckpointIO().save_checkpoint({"epoch": 2, "w": torch.ones(32 * 2**20)}, sys.argv[1])  # 128 MB: killed in it
"""


def test_a_save_killed_midway_leaves_the_one_before_and_nothing_in_tmpdir(tmp_path):
    """Lightning's own CheckpointIO left its temporary file in $TMPDIR (360 KB per kill, never removed)."""
    tmpdir, checkpoints = tmp_path / "tmpdir", tmp_path / "run" / "checkpoints"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    command = [sys.executable, "-c", KILLED_SAVE, str(checkpoints / "last.ckpt")]
    saving = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert saving.stdout.readline() == "saved\n"
    deadline = time.monotonic() + 60
    while files(checkpoints) == ["last.ckpt"] and not files(tmpdir) and time.monotonic() < deadline:
        time.sleep(0.0005)  # until the second save has made its file, wherever that is
    saving.kill()
    saving.wait()
    assert files(tmpdir) == []
    assert torch.load(checkpoints / "last.ckpt", weights_only=True) == {"epoch": 1}
    [partial] = [name for name in files(checkpoints) if name != "last.ckpt"]  # beside it, for the next attempt
    assert partial.endswith(atomic.TEMP_SUFFIX)


def test_the_next_attempt_in_a_run_dir_removes_what_a_killed_save_left(flat_root, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*fixture_overrides(flat_root, run_dir), "trainer.max_epochs=1", "logger=none"]
    train(compose_config(*overrides))
    (run_dir / rundir.METRICS).unlink()  # stopped before its test: the next attempt (a requeue, a sweep) resumes it
    leftovers = [
        run_dir / "checkpoints" / f".last.ckpt.0123{atomic.TEMP_SUFFIX}",
        run_dir / f".env.json.4567{atomic.TEMP_SUFFIX}",
    ]
    for leftover in leftovers:
        leftover.write_bytes(bytes(1000))
    metrics = train(compose_config(*overrides))
    assert metrics["epochs"] == 1 and (run_dir / rundir.METRICS).is_file()
    assert not [path for path in leftovers if path.exists()]


def test_checkpoints_are_written_whole_beside_slurms_environment_and_ddp(monkeypatch):
    import lightning as L

    from lenet.training.fit import plugins

    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "job", "SLURM_NODELIST": "node",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "1"}  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", plugins=plugins(), logger=False)
    assert type(trainer.strategy.checkpoint_io) is WholeCheckpointIO
    assert type(trainer.strategy.cluster_environment).__name__ == "SLURMEnvironment"


# --- A run on a full disk ---


TENSORBOARD_ON_A_FULL_DISK = """
import sys, torch
from torch.utils.tensorboard import SummaryWriter
from lenet.frame.full_disk import quiet_threads
quiet_threads()  # as lenet.training.fit.train does
writer = SummaryWriter(sys.argv[1])
writer.flush()
input()  # the disk fills
try:
    writer.add_image("misclassified", torch.rand(3, 200, 200), 0)  # 100 KB that cannot be written
    writer.close()
except OSError as error:
    print(error)
"""


def test_a_full_disk_under_tensorboards_writer_thread_is_no_traceback_and_reaches_the_run(disk):
    """The writer thread printed "Exception in thread" and a traceback; the run meets the error at its next write."""
    command = [sys.executable, "-c", TENSORBOARD_ON_A_FULL_DISK, str(disk / "run")]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    writing = subprocess.Popen(command, **pipes, text=True)
    while not list(disk.glob("run/events.out.tfevents.*")):
        assert writing.poll() is None, writing.communicate()
        time.sleep(0.05)
    with Filler(disk / "filler"):
        stdout, stderr = writing.communicate("\n", timeout=120)
    assert writing.returncode == 0 and stderr == ""
    assert stdout == "[Errno 28] No space left on device\n"


def test_a_full_disk_silences_the_log_file_not_the_console(disk, capfd):
    """logging printed "--- Logging error ---" and a traceback for every line it could not write."""
    log = logging.getLogger("test_full_disk")
    log.addHandler(handler := LogFile(disk / "train.log"))
    try:
        with Filler(disk / "filler"):
            for _ in range(3):
                log.warning("x" * 10_000)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert capfd.readouterr().err == ""


@pytest.mark.slow
def test_a_run_that_fills_its_disk_says_so_in_one_line_keeps_its_last_epoch_and_resumes(flat_root, disk, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    overrides = [f"data.root={flat_root}", *TRAINING, "trainer.max_epochs=30", "scheduler=none", f"outputs_dir={disk}"]
    training = subprocess.Popen(lenet_command("train", *overrides), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(disk.glob("*/*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    with Filler(disk / "filler"):  # after an epoch was saved: the disk fills while the run goes on
        _, stderr = training.communicate(timeout=120)
    assert training.returncode == 74, stderr
    [line] = stderr.strip().splitlines()
    found = re.fullmatch(rf"error: no space left on {disk}: the last good checkpoint is (\S+) \((\d+) epoch\(s\)\); "
                         r"free some space\. Resume: (python -m lenet\.train .*)", line)  # fmt: skip
    assert found, line
    last, epochs = Path(found[1]), int(found[2])
    assert Checkpoint.open(last).epochs == epochs >= 1
    assert Checkpoint.open(last.parent / rundir.BEST).epochs <= epochs
    assert files(last.parent) == [rundir.BEST, rundir.LAST] and files(tmpdir) == []

    printed = shlex.split(found[3])  # the command, as printed, resumes once there is room again
    resumed = subprocess.run([sys.executable, *printed[1:], f"trainer.max_epochs={epochs + 1}"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    [metrics] = [path for path in disk.glob(f"*/*/{rundir.METRICS}")]
    assert f'"epochs": {epochs + 1}' in metrics.read_text()


@pytest.mark.parametrize("sweep", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["run", "sweep"])
def test_a_full_disk_is_refused_before_hydra_writes_anything(sweep, disk, tmp_path):
    """Hydra left 0-byte .hydra/config.yaml and train.log there."""
    with Filler(disk / "filler"):
        result = subprocess.run(lenet_command("train", *(["-m", "seed=1,2"] if sweep else []), f"outputs_dir={disk}"),
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 74
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"error: no space left on {disk}, where the run dir {disk}/")
        assert line.endswith(": free some space, or pass outputs_dir=FOLDER")
        assert files(disk) == ["filler"] and [p.name for p in disk.iterdir()] == ["filler"], "no file, no folder made"


# --- A killed sweep ---


def test_only_a_joblib_sweep_has_its_jobs_watch_it(tmp_path, monkeypatch):
    """Slurm jobs outlive their launcher on purpose: they are not stopped when it ends."""
    for launcher, watched in [("slurm", False), ("joblib", True)]:
        monkeypatch.delenv(SWEEP_PROCESS, raising=False)
        sweep_dir = tmp_path / launcher
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            overrides = [f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"]
            config = compose("config", overrides=overrides, return_hydra_config=True)
        MultirunCheck().on_multirun_start(config)
        assert os.environ.get(SWEEP_PROCESS) == (str(os.getpid()) if watched else None)
        assert (sweep_dir / "multirun.yaml").is_file()


def descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def alive(pid: int) -> bool:
    """Running, or stopped: not gone and not a zombie (a container's first process may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_killing_a_joblib_sweep_ends_its_workers_which_keep_their_last_epoch(flat_root, tmp_path):
    """Measured before: both loky workers still training 12.5 minutes after the sweep was killed, 1.2 GB each."""
    sweep_of_two = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=0.05,0.02"]
    command = lenet_command("train", "-m", *sweep_of_two, f"data.root={flat_root}", *TRAINING, "trainer.max_epochs=500")
    with open(tmp_path / "stderr", "w") as stderr:  # not a pipe: the workers outlive the reader
        sweep = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    workers = []
    try:
        deadline = time.monotonic() + 180
        while len(list(tmp_path.glob("outputs/multirun/*/*/*/checkpoints/last.ckpt"))) < 2:
            assert time.monotonic() < deadline and sweep.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.1)
        workers = descendants(sweep.pid)
        sweep.kill()
        sweep.wait()
        deadline = time.monotonic() + 15
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in workers if alive(pid)] == []
    finally:
        for pid in filter(alive, [sweep.pid, *workers]):
            os.kill(pid, signal.SIGKILL)
    said = (tmp_path / "stderr").read_text()
    assert said.count("epoch(s) of this job saved. Continue the sweep: python -m lenet.train -m") == 2, said
