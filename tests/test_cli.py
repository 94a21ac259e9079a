"""The command line as users type it: subprocesses in a fresh working directory."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FASHION_MNIST, VAL_SIZE, lenet_command
from lenet.cli import command_line_refusal
from lenet.training import environment

ROOT = Path(__file__).parents[1]  # the checkout, with its Makefile
QUICK = ["debug=fast_dev_run", "callbacks.progress_bar.refresh_rate=0", f"data.val_size={VAL_SIZE}"]


def lenet(cwd: Path, module: str, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = lenet_command(module, *overrides)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_multirun_leaves_one_run_dir_with_metrics_per_job(flat_root, tmp_path):
    result = lenet(tmp_path, "train", "-m", "optimizer.lr=0.1,0.01", f"data.root={flat_root}", *QUICK)
    assert result.returncode == 0, result.stderr
    jobs = sorted(tmp_path.glob("outputs/multirun/*/*/*/metrics.json"))
    assert [path.parent.name for path in jobs] == ["0", "1"]
    lrs = [(path.parent / ".hydra" / "overrides.yaml").read_text() for path in jobs]
    assert "optimizer.lr=0.1\n" in lrs[0] and "optimizer.lr=0.01\n" in lrs[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"], "nothing is written outside outputs/"


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_a_piped_run_prints_one_start_line_no_progress_bar_and_no_warning(flat_root, tmp_path):
    overrides = [f"data.root={flat_root}", f"data.val_size={VAL_SIZE}", "data.batch_size=32", "trainer.max_epochs=2"]
    result = lenet(tmp_path, "train", *overrides)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "\r" not in output, "no progress bar when the output is not a terminal"
    assert not re.search(r"\.py:\d+: ", output), f"no warnings: {output}"
    lines = output.strip().splitlines()
    assert len(lines) == 3, output  # the start line, the results, where they are
    data = r"mnist from .* \(1,000 train, 200 val, 400 test images\)"
    assert re.search(rf"Training on cpu, \d+ threads? \([^)]*\): {data}\. Run dir: .*outputs/", lines[0]), lines[0]
    results = r"val/acc_best 0\.\d{4}  test/acc 0\.\d{4}  \(2 epochs, [\d.]+ s, [\d,]+ train images/s\)"
    assert re.search(results, lines[1]), lines[1]
    assert lines[2].startswith("Run outputs: ")
    env = json.loads(next(tmp_path.glob("outputs/*/*/env.json")).read_text())
    assert env["command"] == "python -m lenet.train " + " ".join(overrides)
    assert len(env["git_commit"]) == 40 and isinstance(env["git_dirty"], bool)  # tests run from the checkout
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] and env["python"] == platform.python_version()
    assert env["device"] and env["threads"] >= 1


def test_a_checkout_git_cannot_read_is_not_an_error(tmp_path, monkeypatch):
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")
    monkeypatch.setattr(environment, "SOURCE", tmp_path)
    assert environment.git_state() == {"git_commit": None, "git_dirty": None}


HYDRA_APPS = ["train", "eval", "predict", "export", "serve"]


@pytest.mark.parametrize(
    ("module", "flag"),
    [(app, flag) for app in HYDRA_APPS for flag in ("--help", "--cfg")] + [("report", "--help")],
)
def test_help_and_cfg_import_neither_torch_nor_lightning(module, flag):
    argv = [f"lenet.{module}", flag, *(["job"] if flag == "--cfg" else [])]
    probe = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        f"    runpy.run_module('lenet.{module}', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False False", result.stderr


@pytest.mark.parametrize(
    ("line", "expected"),
    [("lenet-train optimizer=", {"optimizer=adam", "optimizer=adamw", "optimizer=sgd"}),
     ("lenet-train data.ba", {"data.batch_size="}),
     ("lenet-eval ckpt", {"ckpt_path="})],
)  # fmt: skip
def test_tab_completion_offers_config_keys_and_options(line, expected):
    script = Path(sys.executable).parent / line.split()[0]
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
    result = subprocess.run([script, "-sc", "query=bash"], env=env, capture_output=True, text=True, timeout=60)
    assert expected <= set(result.stdout.split()), result.stdout + result.stderr


def test_lightning_lines_are_printed_once(flat_root, tmp_path):
    """Lightning's own console handler printed each of its lines a second time beside Hydra's (debug=fast_dev_run)."""
    result = lenet(tmp_path, "train", f"data.root={flat_root}", *QUICK)
    output = (result.stdout + result.stderr).splitlines()
    lines = [line.split("] - ", 1)[-1].removeprefix("INFO: ") for line in output]
    assert lines.count("Running in `fast_dev_run` mode: will run the requested loop using 1 batch(es). "
                       "Logging and checkpointing is suppressed.") == 1  # fmt: skip
    assert len(lines) == len(set(lines)), output


def outside_make() -> dict:
    """The environment as a shell's: `make test` passes its own flags and variables down to a make it runs."""
    return {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


@pytest.mark.parametrize("target", ["train", "sweep", "serve"])
def test_make_passes_overrides_typed_as_make_variables(target):
    """`make train data.root=X` without ARGS: make took data.root as its own variable and dropped it."""
    done = subprocess.run(["make", "-n", target, "data.root=/my data", "optimizer.lr=0.1", "ARGS=seed=3"],
                          cwd=ROOT, capture_output=True, text=True, env=outside_make())  # fmt: skip
    command = next(line for line in done.stdout.splitlines() if " -m lenet." in line)
    assert "seed=3" in command and "'data.root=/my data'" in command and "'optimizer.lr=0.1'" in command


def test_make_test_refuses_overrides_typed_as_make_variables():
    done = subprocess.run(["make", "-n", "test", "data.root=x"], cwd=ROOT, capture_output=True, text=True,
                          env=outside_make())  # fmt: skip
    assert done.returncode != 0
    assert 'data.root=... is not an option of make test: pass its options in ARGS="..."' in done.stderr


@pytest.mark.parametrize(
    "command, package, says",
    [("serve", "fastapi", "lenet.serve needs fastapi"), ("export", "onnx", "format=onnx needs onnx")],
)
def test_a_missing_extra_is_one_line_naming_it(command, package, says, glyph_checkpoint, tmp_path):
    """As on a machine where only `pip install lenet` ran: the package is not there. (A .pt2 export needs no extra.)"""
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(f"raise ModuleNotFoundError('no {package}', name={package!r})")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    overrides = [f"ckpt_path={glyph_checkpoint}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = lenet(tmp_path, command, *overrides, *(["format=onnx"] if command == "export" else []), env=env)
    assert result.returncode == 1
    extra = "serve" if command == "serve" else "export"
    assert result.stderr.strip() == f"error: {says}: pip install 'lenet[{extra}]'"


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["optimizer=adamm"], "optimizer=adamm is not an option of optimizer: did you mean optimizer=adam? "
                              "(optimizer: adam, adamw, sgd)"),
        (["experiment=orignal"], "experiment=orignal is not an option of experiment: did you mean "
                                 "experiment=original?"),
        (["-m", "optimizer=sgd,adamm"], "optimizer=adamm is not an option of optimizer: did you mean optimizer=adam?"),
        (["hydra/launcher=joblibb"], "hydra/launcher=joblibb is not an option of hydra/launcher: did you mean "
                                     "hydra/launcher=joblib?"),
        (["scheduler=null"], "scheduler=null is not an option of scheduler: did you mean scheduler=none?"),
        (["-m", "--cfg", "job"], "-m and --cfg cannot go together: pass one of them (--cfg job shows one job's config"),
        (["--cfg", "job", "--info"], "--cfg and --info cannot go together: pass one of them"),
    ],
)  # fmt: skip
def test_a_mistyped_group_option_or_two_modes_are_one_line_naming_what_was_meant(args, refusal):
    assert command_line_refusal("config", args).startswith(refusal)


def test_options_that_exist_pass_the_command_line_check():
    chosen = ["-m", "optimizer=sgd,adam", "hydra/launcher=joblib", "~scheduler", "logger=[tensorboard,csv]"]
    assert command_line_refusal("config", chosen) is None
    assert "logger=cvs is not an option of logger" in command_line_refusal("config", ["logger=[tensorboard,cvs]"])


def test_a_mistyped_group_option_exits_with_one_line(tmp_path):
    result = lenet(tmp_path, "train", "optimizer=adamm")
    said = "error: optimizer=adamm is not an option of optimizer: did you mean optimizer=adam?"
    assert (result.returncode, result.stderr) == (1, f"{said} (optimizer: adam, adamw, sgd)\n")
