"""The command line as users type it: subprocesses in a fresh working directory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASHION_MNIST, VAL_SIZE, lenet_command

QUICK = ["debug=fast_dev_run", "callbacks.progress_bar.refresh_rate=0", f"data.val_size={VAL_SIZE}"]


def lenet(cwd: Path, module: str, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = lenet_command(module, *overrides)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_a_multirun_leaves_one_run_dir_with_metrics_per_job(flat_root, tmp_path):
    result = lenet(tmp_path, "train", "-m", "optimizer.lr=0.1,0.01", f"data.root={flat_root}", *QUICK)
    assert result.returncode == 0, result.stderr
    jobs = sorted(tmp_path.glob("outputs/multirun/*/*/*/metrics.json"))
    assert [path.parent.name for path in jobs] == ["0", "1"]
    lrs = [(path.parent / ".hydra" / "overrides.yaml").read_text() for path in jobs]
    assert "optimizer.lr=0.1\n" in lrs[0] and "optimizer.lr=0.01\n" in lrs[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"], "nothing is written outside outputs/"


def test_two_runs_started_together_get_separate_run_dirs(flat_root, tmp_path):
    command = lenet_command("train", f"data.root={flat_root}", *QUICK)
    runs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in "12"]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    assert len(list(tmp_path.glob("outputs/*/*/metrics.json"))) == 2


def test_train_prints_where_its_outputs_are(flat_root, tmp_path):
    result = lenet(tmp_path, "train", f"data.root={flat_root}", *QUICK)
    run_dir = next(tmp_path.glob("outputs/*/*/metrics.json")).parent
    assert f"Run outputs: {run_dir}" in result.stdout + result.stderr
    assert (run_dir / "train.log").read_text().count("Run outputs:") == 1


def test_the_console_scripts_work_from_any_directory(flat_root, tmp_path):
    script = Path(sys.executable).parent / "lenet-train"
    result = subprocess.run([script, f"data.root={flat_root}", *QUICK], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("outputs/*/*/metrics.json"))) == 1


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_one_epoch_on_real_fashion_mnist_reaches_80_percent(tmp_path):
    overrides = [
        "data=fashion_mnist",
        f"data.root={FASHION_MNIST}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}",
    ]
    result = lenet(tmp_path, "train", *overrides, "callbacks.progress_bar.refresh_rate=0")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] >= 0.80
