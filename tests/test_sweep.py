"""Sweeps at scale: Optuna, the joblib and submitit launchers, DDP, the sweep report, failing jobs, TensorBoard."""

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from conftest import VAL_SIZE, as_process, compose_config, finished, lenet_command, made_once
from lenet import CONFIG_DIR
from lenet.frame.validate import validate
from lenet.runs import sweep_report
from lenet.runs.multirun import _other_overrides

TESTS = Path(__file__).parent
# One epoch on fixture data, one thread per process: two cores shared with other work collapse with more.
TINY = [
    f"data.val_size={VAL_SIZE}",
    "data.batch_size=32",
    "data.eval_batch_size=200",
    "trainer.max_epochs=1",
    "callbacks.progress_bar.refresh_rate=0",
    "threads=1",
]
QUICK = ["debug=fast_dev_run", "callbacks.progress_bar.refresh_rate=0", f"data.val_size={VAL_SIZE}", "threads=1"]


def train(cwd: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """lenet.train in a process of its own, which can reach the tests' callbacks (`conftest.*`)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    command = lenet_command("train", *overrides)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def sweep_dirs(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("outputs/multirun/*/*"))


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


# --- A crash does not sink a sweep; the report is written when a multirun ends ---


@pytest.fixture(scope="module")
def failing_sweep(flat_root, tmp_path_factory):
    """Four jobs: two that train, one refused at start-up (lr=-1), one whose loss turns NaN (lr=1e9)."""
    cwd = tmp_path_factory.mktemp("failing_sweep")
    result = train(cwd, "-m", "optimizer.lr=0.05,-1,1e9,0.02", f"data.root={flat_root}", *TINY)
    return result, sweep_dirs(cwd)[0]


def test_a_failing_job_does_not_stop_the_others_and_the_sweep_exits_nonzero(failing_sweep):
    result, sweep = failing_sweep
    assert result.returncode != 0
    assert sorted(path.parent.name for path in sweep.glob("*/metrics.json")) == ["0", "3"], (
        "jobs after the failures ran"
    )
    assert "error: optimizer.lr=-1 is not allowed: it must be a number > 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert "error: the training loss is nan in epoch 0" in (sweep / "2" / "train.log").read_text()


def test_the_report_is_written_when_the_multirun_ends(failing_sweep):
    _, sweep = failing_sweep
    md = (sweep / "report.md").read_text()
    assert "4 jobs: 2 done, 2 failed, 0 unfinished." in md
    assert "job 1 failed: error: optimizer.lr=-1 is not allowed" in md
    assert "job 2 failed: error: the training loss is nan" in md
    table = [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ")][1:]
    best = max(("0", "3"), key=lambda job: metrics(sweep / job)["val/acc_best"])
    assert table[0] == best, "best first"
    assert f"python -m lenet.train optimizer.lr={'0.05' if best == '0' else '0.02'} data.root=" in md
    assert_composes(md.split("```bash\n")[1].split("\n```")[0])
    rows = (sweep / "report.csv").read_text().splitlines()
    assert rows[0].startswith("job,status,optimizer.lr,val/acc_best,test/acc,epochs,wall_s,train_images_per_s")
    assert len(rows) == 5
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_lists_unfinished_jobs_and_spells_out_the_best_command(tmp_path, capsys):
    def job(name: str, overrides: list[str], metrics: dict | None = None, log: str = ""):
        hydra_dir = tmp_path / name / ".hydra"
        hydra_dir.mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": {"job": {"name": "train"}}}), hydra_dir / "hydra.yaml")
        (tmp_path / name / "train.log").write_text(log)
        if metrics:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))

    done = {"test/acc": 0.8, "epochs": 2, "wall_s": 3.0, "train_images_per_s": 900.0}
    search = ["hparams_search=optuna", "hparams_search.storage=sqlite:///optuna.db", "hparams_search.n_trials=5"]
    job("0", [*search, "optimizer=adam", "optimizer.lr=0.001"], done | {"val/acc_best": 0.81})
    job("1", [*search, "optimizer=sgd", "optimizer.lr=0.1"], done | {"val/acc_best": 0.85})
    job("2", [*search, "optimizer=sgd", "optimizer.lr=0.3"])  # still running, or killed
    job("10", [*search, "optimizer=sgd", "optimizer.lr=0.5"], log="[t][x][ERROR] - error: boom\n")
    sweep_report.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert [line[2:4].strip() for line in md.splitlines() if line.startswith("| ")][1:] == ["1", "0", "2", "10"]
    assert "| 1 | done | sgd | 0.1 | 0.8500 | 0.8000 | 2 | 3.0 | 900 |" in md
    assert "python -m lenet.train optimizer=sgd optimizer.lr=0.1\n" in md, "a search's own overrides are left out"
    assert_composes("python -m lenet.train optimizer=sgd optimizer.lr=0.1")
    assert "- job 2 unfinished: no metrics.json" in md and "- job 10 failed: error: boom" in md
    assert sorted(p.name for p in tmp_path.glob("report.*")) == [
        "report.csv",
        "report.md",
        "report.png",
    ]


def assert_composes(command: str) -> None:
    """A printed command line composes into a valid config (and is a single run)."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "lenet.train"], command
    cfg = compose_config(*words[3:], "run_dir=x")
    validate(cfg)
    assert cfg.get("hparams_search") is None


def test_report_of_a_folder_without_jobs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="holds no job dirs"):
        sweep_report.main([str(tmp_path)])


# --- DDP ---


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], "error: DDP over 2 processes cannot run"),
        (["ckpt_path=last"], "error: ckpt_path=last cannot run in a multirun: each job would resume the newest"),
    ],
    ids=["ddp", "ckpt_path-last"],
)
def test_a_multirun_no_job_could_run_is_refused_once_before_any_job(overrides, message, flat_root, tmp_path):
    result = train(tmp_path, "-m", "optimizer.lr=0.1,0.05", *overrides, f"data.root={flat_root}", *TINY)
    assert result.returncode == 1
    assert result.stderr.count(message) == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.glob("outputs/**/*.log")), "no job started"


@pytest.mark.slow
def test_a_swept_ddp_option_is_refused_by_its_own_job(flat_root, tmp_path):
    result = train(tmp_path, "-m", "trainer=cpu,ddp", "trainer.accelerator=cpu", f"data.root={flat_root}", *TINY)
    assert result.returncode != 0
    assert "error: DDP over 2 processes cannot run inside a multirun" in result.stderr
    assert not list(tmp_path.glob("outputs/**/train_ddp_process_1.log")), "no extra rank was started"


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_on_twice_the_batch(flat_root, tmp_path):
    # Rank r takes every other image of the same order: two ranks with batches of 16 see, step by step, the images
    # one process sees in batches of 32 (data.augment: transformed alike), and DDP's averaged gradient is that
    # batch's gradient. Evaluation images are shared out, each counted once.
    common = [f"data.root={flat_root}", *TINY, "trainer.max_epochs=2", "data.augment=true"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    result = train(tmp_path, "trainer=cpu", *common, f"hydra.run.dir={single}")
    assert result.returncode == 0, result.stderr
    ddp_options = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=16"]
    result = train(tmp_path, *common, *ddp_options, f"hydra.run.dir={ddp}")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "sync_dist" not in output and output.count("Run outputs:") == 1 and output.count("Training on") == 1
    assert "2 processes" in output
    assert (ddp / "train_ddp_process_1.log").is_file(), "a second rank ran"
    events = [path.name for path in ddp.glob("events.out.tfevents.*")]
    assert len({name.split(".")[-2] for name in events}) == 1, f"one process wrote events: {events}"  # .<pid>.<n>
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    one, two = metrics(single), metrics(ddp)
    assert two["epochs"] == 2
    assert sum(map(sum, two["test/confusion_matrix"])) == 400, "every test image counted once"
    for key in ("val/acc_best", "test/acc"):  # the same training, up to the order of float sums: a one-image margin
        assert abs(one[key] - two[key]) <= 1 / 200 + 1e-6, key
    # Each rank holds about 40 of the ~80 errors: the grid shows 64 only when rank 0 gathers the others' too.
    grids = [EventAccumulator(str(run)).Reload().Images("test/misclassified")[-1] for run in (single, ddp)]
    assert grids[0].height == grids[1].height == 8 * (84 + 28), "8 rows of 8"


# --- Optuna ---


@pytest.mark.slow
def test_optuna_search_stores_its_trials_and_resumes(flat_root, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = ["hparams_search=optuna", f"hparams_search.storage={storage}", f"data.root={flat_root}", *QUICK]
    first = train(tmp_path, *search, "hparams_search.n_trials=3")
    assert first.returncode == 0, first.stderr
    resumed = train(tmp_path, *search, "hparams_search.n_trials=1")  # no -m: the search config sets MULTIRUN
    assert resumed.returncode == 0, resumed.stderr
    assert "Warning" not in first.stderr + resumed.stderr, "a new study or sweep dir is no search to continue"
    study = optuna.load_study(study_name="lenet", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 4
    assert set(study.best_params) == {"optimizer", "optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    assert all((sweep / "report.md").is_file() for sweep in sweep_dirs(tmp_path))
    # A failing trial: the search goes on (max_failure_rate), but its exit status says so.
    failing = train(tmp_path, *search, "hparams_search.n_trials=1", "optimizer.lr=-1")
    assert failing.returncode != 0 and "1 job(s) failed: see" in failing.stderr
    assert optuna.load_study(study_name="lenet", storage=storage).trials[-1].state.name == "FAIL"


# --- Launchers ---


def test_the_slurm_launcher_config_composes_with_its_placeholders():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        launcher = compose("config", ["hydra/launcher=slurm", "run_dir=x"], return_hydra_config=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.lenet_launcher.SlurmLauncher"  # submitit's, with lenet's checks
    asked = (launcher.partition, launcher.timeout_min, launcher.gpus_per_node, launcher.tasks_per_node)
    assert asked == (None, 60, 1, 1)
    assert launcher.signal_delay_s > 0  # Slurm warns before the time limit, so the job saves and requeues


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
    ],
    ids=["joblib", "submitit_local"],
)
def test_a_launcher_runs_a_sweep(launcher, flat_root, tmp_path):
    result = train(tmp_path, "-m", *launcher, "optimizer.lr=0.05,0.02", f"data.root={flat_root}", *TINY)
    assert result.returncode == 0, result.stderr
    sweep = sweep_dirs(tmp_path)[0]
    assert sorted(path.parent.name for path in sweep.glob("*/metrics.json")) == ["0", "1"]
    if "joblib" in launcher[0]:
        assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    else:  # one submitit job (a process, locally; a SLURM job on a cluster) per sweep job
        assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2
    assert "2 jobs: 2 done" in (sweep / "report.md").read_text()


# --- TensorBoard across a sweep ---


def test_tensorboard_serves_every_jobs_scalars_and_hparams(failing_sweep):
    _, sweep = failing_sweep
    port = free_port()
    command = [Path(sys.executable).parent / "tensorboard", "--logdir", sweep, "--host", "127.0.0.1", "--port", port]
    server = subprocess.Popen(list(map(str, command)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/data"
        tags = poll(lambda: get(f"{base}/plugin/scalars/tags"), lambda t: {"0", "3"} <= set(t))
        assert {"val/acc", "val/acc_best", "test/acc", "hp/val_acc_best"} <= set(tags["0"]) & set(tags["3"])
        curve = get(f"{base}/plugin/scalars/scalars?run=0&tag=val/acc")
        assert curve[-1][2] == pytest.approx(metrics(sweep / "0")["val/acc"], abs=1e-4)
        experiment = poll(lambda: post(f"{base}/plugin/hparams/experiment", {"experimentName": ""}), hparams_ready)
        assert {"lr", "optimizer", "batch_size"} <= {info["name"] for info in experiment["hparamInfos"]}
        assert "hp/val_acc_best" in {info["name"]["tag"] for info in experiment["metricInfos"]}
        first = experiment["hparamInfos"][0]  # the web page ticks the first five: `differs` ones first, then by name
        assert first["name"] == "lr" and first["differs"], "the swept key comes first"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_job_logs_the_same_hparams_and_marks_the_swept_ones(failing_sweep):
    _, sweep = failing_sweep
    infos = {}
    for job in ("0", "2", "3"):  # done, diverged, done
        content = EventAccumulator(str(sweep / job)).Reload().PluginTagToContent("hparams")["_hparams_/experiment"]
        infos[job] = {info.name: info.differs for info in HParamsPluginData.FromString(content).experiment.hparam_infos}
    assert infos["0"] == infos["2"] == infos["3"]
    assert {name for name, differs in infos["0"].items() if differs} == {"lr"}, "only the swept key is ticked"
    assert {"data.root", "data.val_size", "data.eval_batch_size"} <= set(infos["0"]), "the command line's other keys"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def post(url: str, body: dict):
    # TensorBoard refuses POSTs without this header (its cross-site request forgery guard).
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def hparams_ready(experiment: dict) -> bool:
    return bool(experiment.get("hparamInfos")) and bool(experiment.get("metricInfos"))


def poll(fetch, ready, timeout: float = 90.0):
    """fetch() until ready(result): TensorBoard starts, then loads the logdir in the background."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fetch()
            if ready(result):
                return result
        except OSError:  # not listening yet (URLError is an OSError)
            result = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorBoard not ready after {timeout} s; last answer: {result}")
        time.sleep(0.5)


# --- An interrupted sweep continues: `hydra.sweep.dir=<its dir>` with the same command ---


CONTINUED = ["-m", "optimizer.lr=0.05,0.04,0.03,0.02", "trainer.max_epochs=3", "threads=1", f"data.val_size={VAL_SIZE}",
             "data.batch_size=32", "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip


def stops(marks: Path, fail: int = 1, interrupt: int = 2) -> str:
    """Job 1 fails, job 2 is interrupted after its first epoch: in their first attempts only."""
    return f"+callbacks.stop={{_target_:conftest.FirstAttemptStops,marks:{marks},fail:{fail},interrupt:{interrupt}}}"


@pytest.fixture(scope="module")
def continued_sweep(flat_root, tmp_path_factory):
    """A sweep of four jobs, interrupted in job 2 after job 1 failed; then the same command continuing it. Made once
    for every worker: the tests only read it."""

    def make(cwd: Path) -> dict:
        command = [*CONTINUED, f"data.root={flat_root}", stops(cwd / "stopped"), f"hydra.sweep.dir={cwd / 'sweep'}"]
        first = train(cwd, *command)
        before = {"jobs": sorted(p.name for p in (cwd / "sweep").iterdir() if p.name.isdigit()),
                  "0": (cwd / "sweep" / "0" / "metrics.json").stat().st_mtime_ns,
                  "report": (cwd / "sweep" / "report.md").read_text()}  # fmt: skip
        return {"first": finished(first), "second": finished(train(cwd, *command)), "before": before}

    cwd, made = made_once(tmp_path_factory, "continued-sweep", make)
    return as_process(made["first"]), as_process(made["second"]), cwd / "sweep", made["before"]


def test_an_interrupted_sweep_says_how_to_continue_it(continued_sweep):
    first, _, sweep, before = continued_sweep
    assert first.returncode == 130, first.stderr
    line = first.stderr.strip().splitlines()[-1]
    assert line.startswith("error: interrupted; 1 epoch(s) of this job saved. Continue the sweep: python -m ")
    assert f"hydra.sweep.dir={sweep}" in line and "optimizer.lr=0.05,0.04,0.03,0.02" in line
    assert before["jobs"] == ["0", "1", "2"], "the interrupt ended the sweep"


def test_the_report_of_an_interrupted_sweep_counts_the_jobs_not_started(continued_sweep):
    first, _, _, before = continued_sweep
    counts = "4 jobs: 1 done, 1 failed, 1 unfinished, 1 not started."
    assert counts in before["report"] and "- 1 job not started: 3" in before["report"]
    assert counts in first.stdout + first.stderr, "the line said when the sweep ended"


def test_a_continued_sweep_keeps_finished_jobs_reruns_failed_ones_and_resumes_the_interrupted(continued_sweep):
    _, second, sweep, before = continued_sweep
    assert second.returncode == 0, second.stderr
    assert "Warning" not in second.stderr and "exists and is not empty" not in second.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1", "2", "3"]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == before["0"], "job 0 kept as it was"
    assert "finished before: its metrics.json is kept as it is" in (sweep / "0" / "train.log").read_text()
    assert not (sweep / "1" / "error.txt").exists() and metrics(sweep / "1")["epochs"] == 3, "job 1 ran again"
    log = (sweep / "2" / "train.log").read_text()
    assert f"Resuming {sweep / '2' / 'checkpoints' / 'last.ckpt'} after epoch 1." in log
    assert metrics(sweep / "2")["attempts"] == 2 and "(3 epochs in 2 attempts, " in log
    assert "4 jobs: 4 done, 0 failed, 0 unfinished." in (sweep / "report.md").read_text()


def test_a_resumed_job_ends_as_it_would_have_uninterrupted(continued_sweep, tmp_path):
    _, _, sweep, _ = continued_sweep
    resumed = metrics(sweep / "2")
    data = resumed["data"]["root"]  # the sweep's own (made by another worker, perhaps): metrics.json names it
    alone = train(tmp_path, *[o for o in CONTINUED if o != "-m" and not o.startswith("optimizer.lr")],
                  "optimizer.lr=0.03", f"data.root={data}", f"hydra.run.dir={tmp_path / 'alone'}")  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    uninterrupted = metrics(tmp_path / "alone")
    timings = ("wall_s", "train_images_per_s", "attempts")
    assert {k: v for k, v in resumed.items() if k not in timings} == {
        k: v for k, v in uninterrupted.items() if k not in timings
    }


@pytest.mark.slow  # ~27 s: a sweep stopped and continued
def test_a_run_stopped_between_its_last_epoch_and_its_test_is_tested_when_resumed(flat_root, tmp_path):
    """As a preemption or a time limit may stop it. Resumed by the command it prints, or in its own run dir (a
    requeued Slurm job, a continued sweep), it trains nothing more, tests, and reports what an unstopped run does."""
    recipe = [o for o in CONTINUED if o != "-m" and not o.startswith("optimizer.lr")] + [f"data.root={flat_root}"]
    stop = f"+callbacks.stop={{_target_:conftest.StopsBeforeTheTest,marks:{tmp_path / 'marks'}}}"
    run_dir = tmp_path / "run"
    stopped = train(tmp_path, *recipe, stop, f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 130, stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("error: interrupted; 3 epoch(s) saved. Resume: python -m lenet.train "), stopped.stderr
    assert "Detected KeyboardInterrupt" not in stopped.stdout + stopped.stderr, "Lightning's line: lenet's says it"
    assert not (run_dir / "metrics.json").exists()

    printed = shlex.split(line.split("Resume: ")[1])
    by_command = train(tmp_path, *printed[3:], f"hydra.run.dir={tmp_path / 'resumed'}")
    in_its_run_dir = train(tmp_path, *recipe, stop, f"hydra.run.dir={run_dir}")
    alone = train(tmp_path, *recipe, f"hydra.run.dir={tmp_path / 'alone'}")
    timings = ("wall_s", "train_images_per_s", "attempts")
    uninterrupted = {k: v for k, v in metrics(tmp_path / "alone").items() if k not in timings}
    for resumed, folder in ((by_command, tmp_path / "resumed"), (in_its_run_dir, run_dir)):
        assert resumed.returncode == 0, resumed.stderr
        assert f"Resuming {run_dir / 'checkpoints' / 'last.ckpt'} after epoch 3." in (folder / "train.log").read_text()
        assert {k: v for k, v in metrics(folder).items() if k not in timings} == uninterrupted
    assert alone.returncode == 0, alone.stderr


def test_continuing_a_sweep_with_other_overrides_is_refused_before_anything_runs(continued_sweep, flat_root, tmp_path):
    _, _, sweep, _ = continued_sweep
    result = train(tmp_path, "-m", "optimizer.lr=0.1,0.2", f"data.root={flat_root}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: hydra.sweep.dir={sweep} holds a sweep of other overrides (")
    assert not (sweep / "4").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_sweep_continues_under_every_launcher(launcher, flat_root, tmp_path):
    """Job 1 fails the first time; the continued sweep keeps job 0 as it is and runs job 1 again."""
    sweep = tmp_path / "sweep"
    command = ["-m", f"hydra/launcher={launcher}", "optimizer.lr=0.05,0.04", f"data.root={flat_root}", *TINY,
               stops(tmp_path / "marks", interrupt=-1), f"hydra.sweep.dir={sweep}"]  # fmt: skip
    first = train(tmp_path, *command)
    assert first.returncode != 0 and (sweep / "1" / "error.txt").is_file(), first.stderr
    kept = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    second = train(tmp_path, *command)
    assert second.returncode == 0, second.stderr
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == kept
    assert metrics(sweep / "1")["epochs"] == 1 and not (sweep / "1" / "error.txt").exists()


@pytest.mark.slow
def test_a_continued_optuna_search_takes_up_its_interrupted_trial_and_runs_only_those_left(flat_root, tmp_path):
    import optuna

    storage, sweep = f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "sweep"
    command = ["hparams_search=optuna", f"hparams_search.storage={storage}", "hparams_search.n_trials=3",
               f"data.root={flat_root}", *TINY, "trainer.max_epochs=2", stops(tmp_path / "marks", fail=-1, interrupt=1),
               f"hydra.sweep.dir={sweep}"]  # fmt: skip
    first = train(tmp_path, *command)
    assert first.returncode == 130, first.stderr
    interrupted = OmegaConf.load(sweep / "1" / ".hydra" / "overrides.yaml")
    second = train(tmp_path, *command)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"], "no job dir taken twice"
    assert "after epoch 1." in (sweep / "1" / "train.log").read_text(), "job 1 resumed in its own dir"
    assert OmegaConf.load(sweep / "1" / ".hydra" / "overrides.yaml") == interrupted
    states = [trial.state.name for trial in optuna.load_study(study_name="lenet", storage=storage).trials]
    assert sorted(states) == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"], "3 trials done; the stopped one told failed"
    assert "3 jobs: 3 done, 0 failed, 0 unfinished." in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_an_optuna_search_kept_in_memory_cannot_be_continued(flat_root, tmp_path):
    sweep, overrides = tmp_path / "sweep", ["hparams_search=optuna", f"data.root={flat_root}"]
    (sweep / "0" / ".hydra").mkdir(parents=True)  # a search that ran a job, interrupted
    (sweep / "multirun.yaml").write_text(OmegaConf.to_yaml({"hydra": {"overrides": {"task": overrides}}}))
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(["optimizer.lr=0.01"]))
    (sweep / "0" / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": {"job": {"name": "train"}}}))
    result = train(tmp_path, *overrides, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: hydra.sweep.dir={sweep} holds an Optuna search that kept its")


def test_a_sweep_dirs_record_is_compared_as_written_never_resolved(tmp_path, monkeypatch):
    """multirun.yaml comes from whoever made the sweep dir: an interpolation in it is text, a damaged one a line."""
    monkeypatch.setenv("LENET_TEST_SECRET", "hunter2")
    record = tmp_path / "multirun.yaml"
    record.write_text("hydra:\n  overrides:\n    task: [seed=1, 'data.root=${oc.env:LENET_TEST_SECRET}']\n")
    config = OmegaConf.create({"hydra": {"overrides": {"task": ["seed=2"]}}})
    refusal = _other_overrides(record, config)
    assert "data.root=${oc.env:LENET_TEST_SECRET}" in refusal and "hunter2" not in refusal
    record.write_text("hydra: [not, a, mapping]\n")
    assert _other_overrides(record, config).startswith(f"hydra.sweep.dir={tmp_path}: multirun.yaml: hydra is ")
