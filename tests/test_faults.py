"""The fault battery: every bad input and fault a user can meet, run as the user would (a subprocess).

Each case asserts the exit status, that stderr names the problem, and that it is short: no traceback.
docs/faults-and-resume.md "Bad input and faults" lists the same cases.
"""

import gzip
import http.server
import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import VAL_SIZE, lenet_command, write_dataset

FIXTURE = [f"data.val_size={VAL_SIZE}", "data.batch_size=32", "callbacks.progress_bar.refresh_rate=0"]
# A mirror that refuses at once, so the real download code runs and fails with no network.
OFFLINE = (
    "from torchvision import datasets; datasets.MNIST.mirrors = [{mirror!r}]; from lenet.train import main; main()"
)


def run(cwd: Path, *overrides: str, module: str = "train", mirror: str | None = None) -> subprocess.CompletedProcess:
    command = lenet_command(module, *overrides)
    if mirror:
        command = [sys.executable, "-c", OFFLINE.format(mirror=mirror), *overrides]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_short_failure(result: subprocess.CompletedProcess, message: str, status: int = 1) -> None:
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 8, result.stderr  # Hydra's own messages take up to 7


def broken(tmp_path: Path, file: str, damage) -> Path:
    root = write_dataset(tmp_path / "data", gz=True)
    damage(root / file)
    return root


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lrr=0.1"], "error: optimizer.lrr is not a setting: did you mean optimizer.lr?"),
        (["--lr", "0.01"], "error: --lr is not an option: settings are written key=value, e.g. optimizer.lr=0.01"),
        (["seedd=1"], "error: seedd is not a setting: did you mean seed?"),
        (["+optimizer.lrr=0.1"], "error: optimizer.lrr is not a setting of torch.optim.SGD"),
        (["optimizer.lr=abc"], "error: optimizer.lr='abc' is not allowed: it must be a number > 0"),
        (["optimizer.lr=0"], "error: optimizer.lr=0 is not allowed: it must be a number > 0"),
        (["data.batch_size=0"], "error: data.batch_size=0 is not allowed: it must be an integer >= 1"),
        (["data.val_size=-5"], "error: data.val_size=-5 is not allowed: it must be a share of the training images"),
        (["optimizer.momentum=0"], "error: optimizer.nesterov=true needs optimizer.momentum > 0 and no dampening"),
        (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], "error: optimizer.betas=[0.9, 1.5] is not allowed"),
        (["model.num_classes=5", "data.root=fixture"], "has label 9, but model.num_classes=5 allows 0..4"),
        (["trainer.max_epochs=0"], "error: trainer.max_epochs=0 is not allowed: it must be an integer >= 1"),
        (["model.activation=gelu"], "error: model.activation='gelu' is not allowed: it must be one of relu, tanh"),
        (["model.activation=[relu]"], "error: model.activation=['relu'] is not allowed: it must be one of relu, tanh"),
        (["ckpt_path=missing.ckpt"], "error: ckpt_path=missing.ckpt: no such checkpoint file"),
        (["ckpt_path=last"], "error: ckpt_path=last: no run under outputs/ has a last.ckpt"),
        (["data.root=afile"], "data.root=afile is a file; it must be a folder"),
        (["hydra.run.dir=afile/run"], "error: cannot write the run dir afile/run (Not a directory)"),
    ],
)
def test_bad_config(overrides, message, tmp_path, flat_root):
    (tmp_path / "afile").write_text("")
    overrides = [o.replace("data.root=fixture", f"data.root={flat_root}") for o in overrides]
    assert_short_failure(run(tmp_path, *overrides), message)
    assert not [p for p in tmp_path.glob("outputs/**/*") if p.is_file()], "a refused run leaves no run dir behind"


def test_trainer_gpu_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_short_failure(run(tmp_path, "trainer=gpu"), "error: trainer.accelerator=gpu but no CUDA GPU is visible")


def test_eval_without_its_required_checkpoint(tmp_path):
    assert_short_failure(run(tmp_path, module="eval"), "error: ckpt_path is required: set it on the command line")
    assert list(tmp_path.rglob("*")) == [tmp_path / "outputs"], "a refused run leaves no run dir, no empty folders"


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("t10k-labels-idx1-ubyte.gz", Path.unlink, "lacks t10k-labels-idx1-ubyte (or .gz): put all four IDX files"),
        pytest.param(
            "train-images-idx3-ubyte.gz",
            lambda p: p.write_bytes(gzip.compress(b"\0\0\0\0" + bytes(12))),
            "train-images-idx3-ubyte.gz: not an IDX images file (found 0x00000000, expected 0x00000803)",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "train-images-idx3-ubyte.gz",
            lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-784])),
            "train-images-idx3-ubyte.gz: 940032 bytes where its header (1200 images) needs 940816",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "train-labels-idx1-ubyte.gz",
            lambda p: p.write_bytes(p.read_bytes()[:-20]),
            "train-labels-idx1-ubyte.gz: damaged gzip file",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "t10k-labels-idx1-ubyte.gz",
            lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-10])),
            "t10k-labels-idx1-ubyte.gz: 398 bytes where its header (400 labels) needs 408",
            marks=pytest.mark.slow,
        ),
    ],
    # The first through the whole command; the others are test_data's in-process checks again, end to end: slow.
    ids=["missing-file", "wrong-magic", "truncated-images", "broken-gzip", "truncated-labels"],
)
def test_broken_data_files(file, damage, message, tmp_path):
    root = broken(tmp_path, file, damage)
    result = run(tmp_path, f"data.root={root}", *FIXTURE)
    assert_short_failure(result, message)
    assert result.stderr.strip().endswith(("put all four IDX files there", "or replace it with a good copy"))


def test_mnist_that_cannot_be_downloaded(tmp_path):
    result = run(tmp_path, mirror="http://127.0.0.1:9/")
    assert_short_failure(result, "error: could not download MNIST into data (")
    assert "pass data.root=FOLDER" in result.stderr
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()], "nothing partial is left"


def test_a_failed_download_leaves_the_users_folder_as_it_was(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    result = run(tmp_path, "data.root=mine", mirror="http://127.0.0.1:9/")
    assert_short_failure(result, "error: could not download MNIST into mine (")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


class CutOff(http.server.BaseHTTPRequestHandler):
    """Promises MNIST's full-size file, sends 1 kB of it and hangs up."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "9912422")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(1022))
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_download_that_fails_mid_way(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutOff)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run(tmp_path, mirror=f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
    assert_short_failure(result, "error: could not download MNIST into data (")
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()], "nothing partial is left"


def test_a_diverging_run_stops_with_a_nonzero_exit_and_keeps_the_error_in_its_log(flat_root, tmp_path):
    result = run(tmp_path, f"data.root={flat_root}", *FIXTURE, "optimizer.lr=1e6")
    assert_short_failure(result, "error: the training loss is nan in epoch 0: lower optimizer.lr")
    log = next(tmp_path.glob("outputs/*/*/train.log")).read_text()
    assert "error: the training loss is nan in epoch 0" in log


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_keeps_last_ckpt_says_how_to_resume_and_resume_finishes(sent, status, flat_root, tmp_path):
    overrides = [f"data.root={flat_root}", *FIXTURE, "trainer.max_epochs=30", "scheduler=none"]
    training = subprocess.Popen(lenet_command("train", *overrides), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    training.send_signal(sent)
    _, stderr = training.communicate(timeout=120)
    result = subprocess.CompletedProcess(training.args, training.returncode, "", stderr)
    assert_short_failure(result, "epoch(s) saved. Resume: python -m lenet.train data.root=", status)

    printed = shlex.split(stderr.split("Resume: ")[1].strip())  # the command, as printed, runs
    assert printed[:3] == ["python", "-m", "lenet.train"] and printed[-1].startswith("ckpt_path=")
    saved = int(re.search(r"(\d+) epoch\(s\) saved", stderr).group(1))
    one_more = f"trainer.max_epochs={saved + 1}"  # rather than the 30 of the interrupted run: the test's time
    resumed = subprocess.run([sys.executable, *printed[1:], one_more], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    metrics = sorted(tmp_path.glob("outputs/*/*/metrics.json"))
    assert len(metrics) == 1 and f'"epochs": {saved + 1}' in metrics[0].read_text()


def test_full_error_shows_the_traceback_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    result = run(tmp_path, "optimizer.lr=-1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def logged_at(log: Path, text: str) -> float:
    """When the first line of a run's log holding `text` was logged (Hydra's timestamps: local time, milliseconds)."""
    line = next(line for line in log.read_text().splitlines() if text in line)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@pytest.mark.slow  # ~15 s: a run interrupted, then resumed
def test_a_resumed_runs_timings_cover_every_attempt(flat_root, tmp_path):
    """wall_s covers the interrupted attempt (to its interruption, past its last save) and the resumed one; the end
    line and metrics.json say how many attempts the run took."""
    overrides = [f"data.root={flat_root}", *FIXTURE, "scheduler=none"]
    first, second = tmp_path / "first", tmp_path / "second"
    command = lenet_command("train", *overrides, "trainer.max_epochs=30", f"hydra.run.dir={first}")
    training = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    last = first / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)  # time spent after a save counts too
    interrupted_at = time.time()
    training.send_signal(signal.SIGINT)
    _, stderr = training.communicate(timeout=120)
    assert training.returncode == 130, stderr
    saved = int(re.search(r"(\d+) epoch\(s\) saved", stderr).group(1))

    resumed = run(tmp_path, *overrides, f"trainer.max_epochs={saved + 1}", f"ckpt_path={last}",
                  f"hydra.run.dir={second}")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((second / "metrics.json").read_text())
    # Lower bounds of each attempt's time: from its start line to its interruption, or to its last save.
    first_s = interrupted_at - logged_at(first / "train.log", "Training on ")
    second_s = (second / "checkpoints" / "last.ckpt").stat().st_mtime - logged_at(second / "train.log", "Training on ")
    assert metrics["attempts"] == 2
    assert metrics["wall_s"] >= first_s + second_s, (metrics["wall_s"], first_s, second_s)
    assert f"({saved + 1} epochs in 2 attempts, {metrics['wall_s']:.1f} s, " in resumed.stdout


@pytest.mark.parametrize(
    ("timing", "refused"),
    [
        (None, False),  # a checkpoint from before the record: it loads, and counts as one attempt of unknown time
        ({"attempts": 0, "wall_s": 1.0, "train_s": 1.0, "train_images": 10}, True),
        ({"attempts": 1, "wall_s": float("nan"), "train_s": 1.0, "train_images": 10}, True),
        ({"attempts": 1, "wall_s": 1.0, "train_s": 1.0, "train_images": "10"}, True),
        ({"attempts": 1, "wall_s": 1.0, "train_s": 1.0}, True),
    ],
    ids=["missing", "no-attempt", "nan", "text", "incomplete"],
)
def test_a_checkpoints_timing_record_is_checked_before_a_resume_adds_to_it(timing, refused, glyph_checkpoint, tmp_path):
    import torch

    from lenet.frame.errors import ModelError
    from lenet.training.checkpoints import Checkpoint

    contents = torch.load(glyph_checkpoint, map_location="cpu", weights_only=True)
    assert Checkpoint.open(glyph_checkpoint).timing["attempts"] == 1, "every checkpoint carries it"
    contents.pop("timing")
    if timing is not None:
        contents["timing"] = timing
    torch.save(contents, tmp_path / "last.ckpt")
    if refused:
        with pytest.raises(ModelError, match=r"last.ckpt holds timing=.*, which is not allowed: it must be what its"):
            Checkpoint.open(tmp_path / "last.ckpt")
    else:
        assert Checkpoint.open(tmp_path / "last.ckpt").timing is None
