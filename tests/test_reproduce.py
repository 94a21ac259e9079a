"""python -m lenet.reproduce: real runs (a plain one, a sweep's job) rerun as a user would, their metrics compared."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import VAL_SIZE, lenet_command, shared
from lenet.runs import replay

# One short epoch of the default recipe on the fixture data.
RECIPE = [f"data.val_size={VAL_SIZE}", "data.batch_size=32", "data.eval_batch_size=200", "trainer.max_epochs=1",
          "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip


def lenet(cwd: Path, command: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(lenet_command(command, *args), cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(scope="session")
def run(flat_root, tmp_path_factory) -> Path:
    """A plain run dir, its data given as a path relative to where it ran (as `data.root=data` is typed)."""
    project, lock = shared(tmp_path_factory, "reproduce-project")
    with lock:
        if not (project / "outputs" / "run" / "metrics.json").is_file():
            shutil.rmtree(project, ignore_errors=True)
            shutil.copytree(flat_root, project / "data")
            done = lenet(project, "train", "data.root=data", *RECIPE, "hydra.run.dir=outputs/run")
            assert done.returncode == 0, done.stderr
    return project / "outputs" / "run"


@pytest.fixture(scope="module")
def sweep(flat_root, tmp_path_factory) -> Path:
    """A sweep dir of one job."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    done = lenet(sweep_dir, "train", "-m", "seed=3", f"data.root={flat_root}", *RECIPE, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    return sweep_dir


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def edit_json(path: Path, **changes) -> dict:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, name = key.split("__")
        node = data
        for parent in parents:
            node = node[parent]
        node[name] = value(node[name]) if callable(value) else value
    path.write_text(json.dumps(data))
    return data


def table_rows(output: str) -> dict[str, list[str]]:
    """The rows of the tables printed (indented two spaces), by their first column."""
    rows = [line.split() for line in output.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    return {row[0]: row[1:] for row in rows if row}


def test_a_run_reproduces_identically_from_elsewhere_with_its_own_thread_count(run, tmp_path):
    before = contents(run)
    # Another directory (the relative data.root would not resolve there) and OMP_NUM_THREADS=2 (the run had 1).
    done = lenet(tmp_path, "reproduce", str(run), env={"OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "Metrics: identical (14 values of metrics.json, all but the timings wall_s, train_images_per_s)" in lines
    assert "Config: the same recipe" in lines
    data = run.parents[1] / "data"
    assert f"pinned as the run had them: threads=1 (env.json: OMP_NUM_THREADS=1), seed=42 (the saved config), " \
           f"data.root={data} (what it read, metrics.json)" in done.stdout  # fmt: skip
    (again,) = (tmp_path / "outputs" / "reproduce").glob("*/*")
    assert f"Rerunning {run} in {again.relative_to(tmp_path)}:" in done.stdout
    assert json.loads((again / "env.json").read_text())["threads"] == 1
    rerun, original = (json.loads((d / "metrics.json").read_text()) for d in (again, run))
    assert rerun["val/acc_best"] == original["val/acc_best"] and rerun["wall_s"] != original["wall_s"]
    assert contents(run) == before, "the original run dir is only read"


def test_a_sweeps_job_whose_record_differs_gets_each_difference_and_its_likely_cause(sweep, flat_root, tmp_path):
    copy = shutil.copytree(sweep, tmp_path / "sweep")
    job = copy / "0"
    metrics = edit_json(job / "metrics.json", **{"val/acc_best": lambda v: v + 0.01, "test/acc": 0.5})
    edit_json(job / "env.json", git_commit="0" * 40, versions__torch="2.5.0")
    config = OmegaConf.load(job / ".hydra" / "config.yaml")
    config.optimizer.lr = 0.02  # as if lenet's default were another when the run was made
    OmegaConf.save(config, job / ".hydra" / "config.yaml")
    moved = shutil.copytree(flat_root, tmp_path / "moved")
    done = lenet(tmp_path, "reproduce", str(job), f"data.root={moved}", "--out", "again")
    assert done.returncode == 1, done.stdout + done.stderr
    rerun = json.loads((tmp_path / "again" / "metrics.json").read_text())
    lines, rows = done.stdout.splitlines(), table_rows(done.stdout)
    assert f"  given by you, replacing the run's: data.root={moved}" in lines
    assert "Metrics: 2 of 14 differ" in lines
    assert rows["val/acc_best"] == [repr(metrics["val/acc_best"]), repr(rerun["val/acc_best"]), "-0.01"]
    assert rows["test/acc"] == ["0.5", repr(rerun["test/acc"]), f"{rerun['test/acc'] - 0.5:+.3g}"]
    env = json.loads((tmp_path / "again" / "env.json").read_text())
    assert rows["git_commit"] == ["0" * 40, str(env["git_commit"])]
    assert rows["versions.torch"] == ["2.5.0", env["versions"]["torch"]]
    assert "Config: 1 recipe value differs" in lines
    assert rows["optimizer.lr"] == ["0.02", "0.05"]
    cause = next(line for line in lines if line.startswith("Likely cause: "))
    assert cause.startswith("Likely cause: the config: optimizer.lr (lenet's defaults changed since the run); ")
    assert "torch's version" in cause and "lenet's code (another commit)" in cause


@pytest.mark.slow
def test_a_rerun_with_another_thread_count_differs_and_says_why(flat_root, tmp_path):
    """A real difference: 2 threads instead of the run's 1 change LeNet's gradients on a CPU in their last bits, which
    the steps of 4 epochs carry into the metrics (after one epoch's 31 steps they may still round to the same)."""
    run = tmp_path / "run"
    epochs = "trainer.max_epochs=4"
    trained = lenet(tmp_path, "train", f"data.root={flat_root}", *RECIPE, epochs, f"hydra.run.dir={run}")
    assert trained.returncode == 0, trained.stderr
    done = lenet(tmp_path, "reproduce", str(run), "threads=2", "--out", "again")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "  given by you, replacing the run's: threads=2" in done.stdout
    assert table_rows(done.stdout)["threads"] == ["1", "2"]
    assert "Likely cause: the thread count (on a CPU, " in done.stdout


def run_copy(run: Path, folder: Path) -> Path:
    return shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints", "events.*"))


def unfinished(run: Path, folder: Path) -> Path:
    (run_copy(run, folder) / "metrics.json").unlink()
    return folder


def failed(run: Path, folder: Path) -> Path:
    (unfinished(run, folder) / "error.txt").write_text("error: data.root=/x: no IDX files\n")
    return folder


def evaluated(run: Path, folder: Path) -> Path:
    hydra = OmegaConf.load(run_copy(run, folder) / ".hydra" / "hydra.yaml")
    hydra.hydra.job.name = "eval"
    OmegaConf.save(hydra, folder / ".hydra" / "hydra.yaml")
    return folder


def data_gone(run: Path, folder: Path) -> Path:
    edit_json(run_copy(run, folder) / "metrics.json", data__root="/nowhere/data")
    return folder


def env_not_json(run: Path, folder: Path) -> Path:
    (run_copy(run, folder) / "env.json").write_text("{'threads': 1}")
    return folder


def data_a_string(run: Path, folder: Path) -> Path:
    edit_json(run_copy(run, folder) / "metrics.json", data="abc")
    return folder


def failed_with_escapes(run: Path, folder: Path) -> Path:
    (unfinished(run, folder) / "error.txt").write_text("error: \x1b]0;title\x07\x1b[2Jno IDX files\n")
    return folder


def a_sweep(run: Path, folder: Path) -> Path:
    run_copy(run, folder / "0")
    (folder / "multirun.yaml").write_text("hydra: {}\n")
    return folder


def not_a_run(run: Path, folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda run, folder: folder, "no such folder: {folder}"),
        (lambda run, folder: a_sweep(run, folder), "{folder} is a sweep dir: pass one of its job dirs ({folder}/0)"),
        (lambda run, folder: not_a_run(run, folder), "{folder} is not a lenet run dir (no .hydra/overrides"),
        (lambda run, folder: unfinished(run, folder), "{folder} did not finish: no metrics.json"),
        (lambda run, folder: failed(run, folder), "{folder} did not finish, it failed: data.root=/x: no IDX"),
        (lambda run, folder: evaluated(run, folder),
         "{folder} is not a lenet.train run (Hydra job 'eval'): only training runs are rerun"),
        (lambda run, folder: data_gone(run, folder),
         "no data at data.root=/nowhere/data here: pass data.root=FOLDER after the run dir"),
        (lambda run, folder: env_not_json(run, folder),
         "cannot read the run in {folder}: env.json: not JSON (Expecting property name enclosed in double quotes at "
         "line 1)\n"),
        (lambda run, folder: data_a_string(run, folder),
         "cannot read the run in {folder}: metrics.json: data is 'abc', not a mapping\n"),
        (lambda run, folder: failed_with_escapes(run, folder),
         "{folder} did not finish, it failed: \\x1b]0;title\\x07\\x1b[2Jno IDX files\n"),
    ],
    ids=["missing", "sweep-dir", "not-a-run", "unfinished", "failed", "eval-run", "data-gone", "env-not-json",
         "data-a-string", "terminal-escapes"],
)  # fmt: skip
def test_what_is_not_a_finished_training_run_is_refused_in_one_line(make, message, run, tmp_path, capsys):
    folder = make(run, tmp_path / "folder")
    with pytest.raises(SystemExit) as end:
        replay.main([str(folder), "--out", str(tmp_path / "again")])
    assert end.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(folder=folder)) and err.count("\n") == 1, err
    assert not (tmp_path / "again").exists()


def test_a_taken_out_folder_and_a_failed_rerun_are_one_line_each(run, tmp_path, capfd):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").touch()
    with pytest.raises(SystemExit) as end:
        replay.main([str(run), "--out", str(tmp_path / "taken")])
    assert end.value.code == 2
    assert capfd.readouterr().err == f"error: {tmp_path / 'taken'} already holds files: pass a new folder as --out\n"
    with pytest.raises(SystemExit) as end:
        replay.main([str(run), "optimizer.lr=abc", "--out", str(tmp_path / "again")])
    assert end.value.code == 2
    err = capfd.readouterr().err.splitlines()
    assert err == ["error: optimizer.lr='abc' is not allowed: it must be a number > 0", "error: the rerun failed"]


MARKER = "MARKER"  # where each payload would make a folder


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (f"+hydra.callbacks.evil={{_target_:os.mkdir,path:{MARKER}}}",
         "+hydra.callbacks.evil adds a setting: only lenet's own may be set from a file"),
        ("hydra.job_logging.root.level=DEBUG", "hydra.job_logging.root.level is a setting of Hydra's, not of lenet's"),
        (f"+callbacks.evil={{_target_:os.mkdir,path:{MARKER}}}",
         "+callbacks.evil adds a setting: only lenet's own may be set from a file"),
        (f"trainer.profiler={{_target_:os.mkdir,path:{MARKER}}}", "trainer.profiler names code to run (_target_)"),
        ("optimizer._target_=os.mkdir", "optimizer._target_ names code to run (_target_)"),
        ("data.batch_size=${oc.env:LENET_BATCH}",
         "data.batch_size holds an interpolation (${...}): it would read what the machine running it holds"),
        ("~callbacks.progress_bar",
         "~callbacks.progress_bar deletes a setting: only lenet's own may be set from a file"),
        ("optimizer=../../../tmp/evil", "optimizer=../../../tmp/evil is no option of lenet's: one of adam, adamw, sgd"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not allowed: it must be an integer >= 1"),
        ("nothing.of.lenets=1", "nothing.of.lenets is not a setting lenet declares"),
    ],
    ids=["hydra-callback", "hydra-setting", "added-callback", "profiler", "target", "interpolation", "deleted",
         "option-path", "bad-value", "unknown-key"],
)  # fmt: skip
def test_a_run_dir_that_asks_for_what_lenet_does_not_run_is_refused_before_anything_runs(
    payload, reason, run, tmp_path, capsys
):
    """A stranger's run dir is data: only overrides of lenet's own keys, with values their rules accept, are rerun."""
    folder, marker = run_copy(run, tmp_path / "run"), tmp_path / "marker"
    overrides = folder / ".hydra" / "overrides.yaml"
    OmegaConf.save(OmegaConf.create([*OmegaConf.load(overrides), payload.replace(MARKER, str(marker))]), overrides)
    with pytest.raises(SystemExit) as end:
        replay.main([str(folder), "--out", str(tmp_path / "again")])
    assert end.value.code == 2
    assert capsys.readouterr().err == f"error: {overrides} holds what lenet does not run: {reason}\n"
    assert not marker.exists() and not (tmp_path / "again").exists()


def test_pinned_values_from_a_run_dir_are_checked_as_its_overrides(run, tmp_path, capsys):
    folder, marker = run_copy(run, tmp_path / "run"), tmp_path / "marker"
    edit_json(folder / "env.json", threads=f"{{_target_:os.mkdir,path:{marker}}}")
    with pytest.raises(SystemExit) as end:
        replay.main([str(folder), "--out", str(tmp_path / "again")])
    assert end.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {folder / 'env.json'} holds what lenet does not run: threads names code to run (_target_)\n"
    assert not marker.exists() and not (tmp_path / "again").exists()
