"""logger=mlflow and logger=wandb: what a run records there, read back as their users read it: MLflow's client and its
UI in Chromium, W&B's offline run files. Nothing here leaves the machine (the `offline` fixture)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import VAL_SIZE, as_process, compose_config, finished, fixture_overrides, lenet_command, made_once
from lenet.frame.errors import UserError
from lenet.training.fit import train
from lenet.training.tracking import wandb_logged_in

EPOCHS = 2
TINY = [f"data.val_size={VAL_SIZE}", "data.batch_size=32", "data.eval_batch_size=200", f"trainer.max_epochs={EPOCHS}",
        "callbacks.progress_bar.refresh_rate=0", "threads=1"]  # fmt: skip
# A developer's own settings: W&B credentials (without them lenet must choose offline itself), an MLflow server.
CREDENTIALS = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "MLFLOW_TRACKING_URI")
FILES = ["checkpoints/best.ckpt", "env.json", "hydra/config.yaml", "hydra/overrides.yaml", "metrics.json"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """For this module's runs and the processes they start: MLflow's usage telemetry off (read when mlflow is
    imported), no MLflow server, no W&B credentials, W&B's server unreachable should anything try it, its files here."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as patch:
        for name in CREDENTIALS:
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DO_NOT_TRACK", "true")
        patch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
        patch.setenv("NETRC", str(home / "netrc"))  # none there
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            patch.setenv(name, str(home / name.lower()))
        yield


def mlflow_client(uri: str):
    from mlflow import MlflowClient  # once `offline` has turned its telemetry off

    return MlflowClient(uri)


@pytest.fixture(scope="module")
def sweep(flat_root, tmp_path_factory, offline):
    """A sweep of two jobs (seed=1,2) that logs to TensorBoard, MLflow and W&B at once."""
    loggers = "logger=[tensorboard,mlflow,wandb]"
    command = lenet_command("train", "-m", loggers, "seed=1,2", f"data.root={flat_root}", *TINY)

    def make(cwd: Path) -> dict:  # once for every worker: the tests only read it
        return finished(subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600))

    cwd, made = made_once(tmp_path_factory, "tracked-sweep", make)
    done = as_process(made)
    assert done.returncode == 0, done.stderr
    [sweep_dir] = cwd.glob("outputs/multirun/*/*")
    client = mlflow_client(f"sqlite:///{cwd}/outputs/mlflow.db")
    experiment = client.get_experiment_by_name(str(sweep_dir.relative_to(cwd / "outputs")))
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])} if experiment else {}
    return SimpleNamespace(cwd=cwd, dir=sweep_dir, output=done.stdout + done.stderr, client=client,
                           experiment=experiment, runs=runs)  # fmt: skip


def tensorboard_hparams(job_dir: Path) -> dict:
    """The hparams TensorBoard's HPARAMS shows for the job (its logger writes them to hparams.yaml too)."""
    return yaml.safe_load((job_dir / "hparams.yaml").read_text())


def metrics_json(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def test_a_sweep_is_one_mlflow_experiment_with_a_run_per_job(sweep):
    assert sweep.experiment is not None, "no experiment named for the sweep's dir"
    assert sorted(sweep.runs) == ["0", "1"]
    assert {run.info.status for run in sweep.runs.values()} == {"FINISHED"}
    assert [e.name for e in sweep.client.search_experiments()] == [sweep.experiment.name, "Default"]  # nothing else


def test_mlflow_gets_tensorboards_hparams_and_every_epochs_metrics(sweep):
    for job, run in sweep.runs.items():
        hparams = tensorboard_hparams(sweep.dir / job)
        assert run.data.params == {name: str(value) for name, value in hparams.items()}
        assert run.data.params["lr"] == "0.05" and run.data.params["seed"] == str(int(job) + 1)
        history = sweep.client.get_metric_history(run.info.run_id, "val/acc")
        assert len(history) == EPOCHS and history[0].step < history[1].step


def test_mlflows_test_metrics_are_those_of_metrics_json(sweep):
    for job, run in sweep.runs.items():
        written = metrics_json(sweep.dir / job)
        for name in ("test/acc", "test/loss", "val/acc_best", "train/loss"):
            assert run.data.metrics[name] == written[name], name


def test_mlflow_keeps_the_runs_files_as_artifacts_under_outputs_dir(sweep, tmp_path):
    for job, run in sweep.runs.items():
        assert Path(run.info.artifact_uri).is_relative_to(sweep.cwd / "outputs" / "mlartifacts")
        folders = [a.path for a in sweep.client.list_artifacts(run.info.run_id) if a.is_dir]
        listed = sorted(a.path for a in sweep.client.list_artifacts(run.info.run_id) if not a.is_dir)
        listed += [a.path for folder in folders for a in sweep.client.list_artifacts(run.info.run_id, folder)]
        assert sorted(listed) == FILES
        best = sweep.client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path))
        assert Path(best).read_bytes() == (sweep.dir / job / "checkpoints" / "best.ckpt").read_bytes()
    assert sorted(p.name for p in (sweep.cwd / "outputs").iterdir()) == ["mlartifacts", "mlflow.db", "mlflow.lock",
                                                                          "multirun"]  # fmt: skip
    assert sorted(p.name for p in sweep.cwd.iterdir()) == ["outputs"]  # no ./mlruns, no ./wandb


def test_tensorboard_logs_the_same_epochs_beside_mlflow(sweep):
    for job, run in sweep.runs.items():
        events = EventAccumulator(str(sweep.dir / job), size_guidance={"scalars": 0}).Reload()
        tensorboard = [(event.step, event.value) for event in events.Scalars("val/acc")]
        mlflow = [(m.step, m.value) for m in sweep.client.get_metric_history(run.info.run_id, "val/acc")]
        assert tensorboard == mlflow


def test_the_run_prints_none_of_the_trackers_set_up_notes(sweep):
    for note in ("Creating initial MLflow database tables", "Updating database tables", "Experiment with name",
                 "wandb: WARNING"):  # fmt: skip
        assert note not in sweep.output
    assert "wandb sync " in sweep.output  # W&B's own hint, which its user acts on


def wandb_records(run: Path) -> list:
    """The records of an offline W&B run (its `run-<id>.wandb`, which `wandb sync` uploads): LevelDB's log format, a
    7-byte header, then 32 KiB blocks of chunks (4-byte checksum, 2-byte length, 1-byte type: 1 a whole record, 2-4
    its first, middle, last part), each record one of wandb's protobuf Records."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, offset, parts, records = next(run.glob("run-*.wandb")).read_bytes(), 7, b"", []
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a chunk's header is padding
            offset += 32768 - offset % 32768
            continue
        length, kind = int.from_bytes(data[offset + 4 : offset + 6], "little"), data[offset + 6]
        parts += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(parts))
            parts = b""
    return records


def wandb_run(run: Path) -> SimpleNamespace:
    """An offline W&B run as W&B shows it: its name, group, config and logged rows."""
    records = wandb_records(run)

    def items(items) -> dict:
        return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}

    info = next(record.run for record in records if record.HasField("run"))
    config = {k: v for r in records if r.HasField("config") for k, v in items(r.config.update).items()}
    rows = [items(record.history.item) for record in records if record.HasField("history")]
    config = {key: value for key, value in config.items() if not key.startswith("_")}  # W&B's own
    return SimpleNamespace(name=info.display_name, group=info.run_group, id=info.run_id, config=config, rows=rows)


def test_wandb_runs_offline_a_run_per_job_with_tensorboards_hparams_and_the_metrics(sweep):
    ids = set()
    for job in ("0", "1"):
        job_dir = sweep.dir / job
        [offline_run] = (job_dir / "wandb").glob("offline-run-*")
        run = wandb_run(offline_run)
        ids.add(run.id)
        assert (run.name, run.group) == (job, sweep.experiment.name)
        assert run.config == tensorboard_hparams(job_dir)
        assert len([row for row in run.rows if "val/acc" in row]) == EPOCHS
        [test] = [row for row in run.rows if "test/acc" in row]
        written = metrics_json(job_dir)
        assert (test["test/acc"], test["test/loss"]) == (written["test/acc"], written["test/loss"])
        files = offline_run / "files"
        assert set(FILES) <= {str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()}
        assert (files / "metrics.json").read_bytes() == (job_dir / "metrics.json").read_bytes()
    assert len(ids) == 2, "the second job logged into the first job's W&B run"


def test_a_tracking_uri_puts_the_run_and_its_files_there(flat_root, tmp_path, monkeypatch):
    store, outputs, from_env = tmp_path / "elsewhere" / "tracking.db", tmp_path / "outputs", tmp_path / "env.db"
    # As MLflow's users set it. Restored after the test: MLflow's own set_tracking_uri writes it into os.environ.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{from_env}")
    assert compose_config("logger=mlflow", "run_dir=x").logger.mlflow.tracking_uri == f"sqlite:///{from_env}"
    overrides = [*fixture_overrides(flat_root, outputs / "run"), "trainer.max_epochs=1", f"outputs_dir={outputs}"]
    metrics = train(compose_config(*overrides, "logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{store}"))
    client = mlflow_client(f"sqlite:///{store}")
    [run] = client.search_runs([client.get_experiment_by_name("lenet").experiment_id])  # a single run's experiment
    assert run.info.run_name == "run"  # its run dir, under outputs_dir
    assert run.data.metrics["test/acc"] == metrics["test/acc"]
    assert Path(run.info.artifact_uri).is_relative_to(store.parent / "mlartifacts")  # beside the store
    assert "env.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert not (outputs / "mlflow.db").exists() and not from_env.exists()  # the command line's wins


@pytest.mark.parametrize("option", ["mlflow", "wandb"])
def test_a_tracker_not_installed_is_one_line_naming_the_extra(option, flat_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, option, None)  # `import mlflow` fails, as where it is not installed
    cfg = compose_config(*fixture_overrides(flat_root, tmp_path / "run"), f"outputs_dir={tmp_path}", f"logger={option}")
    with pytest.raises(UserError) as refused:
        train(cfg)
    assert str(refused.value) == f"logger={option} needs {option}: pip install 'lenet[track]'"


def test_wandb_goes_online_only_for_a_user_logged_in(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_BASE_URL")  # W&B's own server
    assert not wandb_logged_in()  # no netrc, no key
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'0' * 40}\n")  # what `wandb login` writes
    assert wandb_logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not wandb_logged_in()  # logged in to another server
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert wandb_logged_in()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium")
def test_mlflow_ui_in_chromium_shows_the_sweeps_runs_and_their_metrics(sweep, tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    store = f"sqlite:///{sweep.cwd}/outputs/mlflow.db"
    command = [Path(sys.executable).parent / "mlflow", "ui", "--backend-store-uri", store, "--port", str(port),
               "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # 15-30 s on 2 busy cores
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        assert server.poll() is None, "mlflow ui exited"
        experiment = sweep.experiment.experiment_id
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                # MLflow 3 opens on its GenAI view; a training experiment's runs are under "Model training".
                page.goto(f"{url}#/experiments/{experiment}/runs?workflowType=machine_learning")
                page.wait_for_selector("text=2 matching runs", timeout=60_000)
                for name, run in sweep.runs.items():
                    assert page.locator(f'a[href*="{run.info.run_id}"]').first.inner_text() == name
                run = sweep.runs["0"]
                page.goto(f"{url}#/experiments/{experiment}/runs/{run.info.run_id}?workflowType=machine_learning")
                page.wait_for_selector("text=test/acc", timeout=60_000)
                shown = page.inner_text("body")
                assert f"test/acc\n{run.data.metrics['test/acc']}" in shown
                assert "lr\n0.05" in shown
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its worker
        server.wait(timeout=30)


@pytest.mark.slow
def test_parallel_jobs_share_one_new_store(flat_root, tmp_path):
    """Three joblib jobs start together on a store none has made yet: its tables and the experiment once."""
    command = lenet_command("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", "logger=mlflow",
                            "seed=1,2,3", f"data.root={flat_root}", *TINY)  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    client = mlflow_client(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["0", "1", "2"]
    assert {run.info.status for run in runs} == {"FINISHED"}
