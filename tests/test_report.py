"""The report pooled over seeds, its curves, and runs from several folders compared: fake run dirs, one real sweep."""

import csv
import functools
import json
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from torch.utils.tensorboard import SummaryWriter

from lenet import CONFIG_DIR, report
from lenet.report import configurations, report_figure
from lenet.runs import curve, read_runs
from test_sweep import TINY, assert_composes, sweep_dirs, train


@functools.cache
def hydra_files(*overrides: str) -> tuple[str, dict]:
    """What Hydra saves for these overrides: the config, unresolved, and the option of each config group."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", list(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_yaml(cfg), choices


def fake_run(run_dir: Path, *overrides: str, metrics: dict | None = None, task: str = "train") -> Path:
    """A run dir as Hydra and lenet.train leave it, without training: .hydra/, metrics.json, train.log."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    config, choices = hydra_files(*overrides) if task == "train" else ("", {})
    hydra = {"hydra": {"job": {"name": task}, "runtime": {"choices": choices}}}
    OmegaConf.save(OmegaConf.create(hydra), hydra_dir / "hydra.yaml")
    if config:
        (hydra_dir / "config.yaml").write_text(config)
    (run_dir / f"{task}.log").write_text("")
    if metrics:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_multirun_composes(command: str) -> None:
    """A printed multirun: `-m`, then a sweep over seeds only, each of whose jobs composes."""
    words = shlex.split(command)
    assert words[3] == "-m", command
    sweep = [word for word in words[4:] if "," in word]
    assert len(sweep) == 1 and sweep[0].startswith("seed="), command
    for seed in sweep[0].removeprefix("seed=").split(","):
        assert_composes(shlex.join([*words[:3], *(w for w in words[4:] if w not in sweep), f"seed={seed}"]))


def finals(val: float, test: float) -> dict:
    return {"val/acc_best": val, "test/acc": test, "epochs": 2, "wall_s": 1.0, "train_images_per_s": 1000.0}


def test_a_sweep_over_seeds_is_pooled_per_configuration(tmp_path, capsys):
    results = {"0.1": [(0.90, 0.88), (0.92, 0.90), (0.94, 0.92)], "0.05": [(0.95, 0.93), (0.96, 0.95), (0.97, 0.94)]}
    for job, (seed, lr) in enumerate((seed, lr) for seed in (1, 2, 3) for lr in results):
        fake_run(tmp_path / str(job), f"seed={seed}", f"optimizer.lr={lr}", metrics=finals(*results[lr][seed - 1]))
    fake_run(tmp_path / "6", "seed=4", "optimizer.lr=0.05")  # unfinished: listed, not pooled
    report.main([str(tmp_path)])
    md = capsys.readouterr().out

    table = read_csv(tmp_path / "report_by_config.csv")
    assert [(row["optimizer.lr"], row["n"], row["seeds"]) for row in table] == [
        ("0.05", "3", "1 2 3"),
        ("0.1", "3", "1 2 3"),
    ]
    best = table[0]
    expected = {"val/acc_best_mean": 0.96, "val/acc_best_std": 0.01, "test/acc_mean": 0.94, "test/acc_std": 0.01}
    assert {name: float(best[name]) for name in expected} == pytest.approx(expected)
    assert best["command"] == "python -m lenet.train -m optimizer.lr=0.05 seed=1,2,3"
    assert_multirun_composes(best["command"])

    assert "| optimizer.lr | n | seeds | val/acc_best | test/acc |" in md
    assert "| 0.05 | 3 | 1 2 3 | 0.9600 ± 0.0100 | 0.9400 ± 0.0100 |" in md
    assert "| 0.1 | 3 | 1 2 3 | 0.9200 ± 0.0200 | 0.9000 ± 0.0200 |" in md
    assert "```bash\npython -m lenet.train -m optimizer.lr=0.05 seed=1,2,3\n```" in md
    assert "Best: job" not in md, "with seeds, the best configuration is the recipe, not its luckiest job"
    assert "- job 6 unfinished: no metrics.json" in md
    assert len(read_csv(tmp_path / "report.csv")) == 7, "the per-job table is still there"
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_come_from_tensorboard_events_or_a_csv_logger(tmp_path):
    events = tmp_path / "events"
    for points in ([(0, 31, 0.5), (1, 63, 0.6)], [(1, 63, 0.65), (2, 95, 0.7)]):  # then resumed after epoch 1
        with SummaryWriter(events) as writer:
            for epoch, step, value in points:
                writer.add_scalar("epoch", epoch, step)
                writer.add_scalar("val/acc", value, step)
                writer.add_scalar("train/loss", 1.0, step)
    assert curve(events) == [(1, pytest.approx(0.5)), (2, pytest.approx(0.65)), (3, pytest.approx(0.7))]

    (tmp_path / "csv" / "csv").mkdir(parents=True)
    rows = "epoch,step,train/loss,val/acc\n0,9,1.2,\n0,9,,0.4\n1,19,0.9,\n1,19,,0.55\n"
    (tmp_path / "csv" / "csv" / "metrics.csv").write_text(rows)
    assert curve(tmp_path / "csv") == [(1, 0.4), (2, 0.55)]


def test_runs_from_several_folders_are_compared_by_their_configs(tmp_path, capsys):
    outputs = tmp_path / "outputs"
    sweep = outputs / "multirun" / "2026-01-01" / "10-00-00"
    for job, (seed, lr) in enumerate([(1, "0.05"), (1, "0.02"), (2, "0.05"), (2, "0.02")]):
        metrics = finals(0.9 + 0.01 * job, 0.9)
        fake_run(sweep / str(job), f"seed={seed}", f"optimizer.lr={lr}", "threads=1", metrics=metrics)
    # Single runs of the same recipe as lr=0.05: one with the default lr, run dirs, paths and threads of their own.
    day = outputs / "2026-01-02"
    fake_run(day / "11-00-00", metrics=finals(0.95, 0.9))  # seed 42, optimizer.lr 0.05 by default
    ckpts = f"callbacks.checkpoint.dirpath={day / '12-00-00' / 'ckpts'}"
    fake_run(day / "12-00-00", "seed=7", "threads=2", ckpts, f"run_dir={day / '12-00-00'}", metrics=finals(0.93, 0.9))
    fake_run(day / "13-00-00", "optimizer=adam", "logger=csv", metrics=finals(0.8, 0.8))
    fake_run(outputs / "eval" / "2026-01-03" / "13-00-00", "ckpt_path=x", metrics={"test/acc": 0.9}, task="eval")

    report.main([str(outputs / "multirun"), str(day), str(outputs / "eval")])
    md = capsys.readouterr().out
    folders = f"{outputs / 'multirun'}, {day}, {outputs / 'eval'}"
    assert md.startswith(f"# Runs in {folders} (lenet.train runs only: 1 of other tasks left out)")
    written = sorted(p.name for p in outputs.glob("report*"))
    assert written == ["report.csv", "report.md", "report.png", "report_by_config.csv"], "into the common parent"
    table = read_csv(outputs / "report_by_config.csv")
    # Seeds pool; run dirs, paths, threads and loggers are no recipe; optimizer=adam's own keys go with its column.
    assert list(table[0])[:5] == ["optimizer", "optimizer.lr", "optimizer.weight_decay", "n", "seeds"]
    assert [(row["optimizer"], row["optimizer.lr"], row["seeds"]) for row in table] == [
        ("sgd", "0.05", "1 2 7 42"),
        ("sgd", "0.02", "1 2"),
        ("adam", "0.001", "42"),
    ]
    assert_multirun_composes(table[0]["command"])
    jobs = [row["job"] for row in read_csv(outputs / "report.csv")]
    day_runs = [f"2026-01-02/{hour}-00-00" for hour in (11, 12, 13)]
    assert sorted(jobs) == [*day_runs, *(f"multirun/2026-01-01/10-00-00/{job}" for job in "0123")], "named by path"

    report.main([str(outputs), "--out", str(tmp_path / "elsewhere")])  # a folder above them all, the same runs
    assert read_csv(tmp_path / "elsewhere" / "report_by_config.csv") == table


@pytest.mark.parametrize(
    ("folders", "message"),
    [(["missing"], "error: no such folder: missing"), (["."], "error: . holds no job dirs")],
    ids=["missing", "empty"],
)
def test_bad_folders_get_one_line(folders, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        report.main(folders)


def test_a_real_sweep_over_seeds_ends_with_the_pooled_report(flat_root, tmp_path):
    result = train(tmp_path, "-m", "seed=1,2", "optimizer.lr=0.1,0.05", f"data.root={flat_root}", *TINY)
    assert result.returncode == 0, result.stderr
    sweep = sweep_dirs(tmp_path)[0]
    table = read_csv(sweep / "report_by_config.csv")
    assert sorted((row["optimizer.lr"], row["n"], row["seeds"]) for row in table) == [
        ("0.05", "2", "1 2"),
        ("0.1", "2", "1 2"),
    ]
    assert float(table[0]["val/acc_best_mean"]) >= float(table[1]["val/acc_best_mean"]), "best first"
    assert_multirun_composes(table[0]["command"])
    assert "## Pooled over seeds" in (sweep / "report.md").read_text()
    val_acc = json.loads((sweep / "0" / "metrics.json").read_text())["val/acc"]
    assert curve(sweep / "0") == [(1, pytest.approx(val_acc))], "one point per epoch, from the run's events"


def test_one_epoch_curves_are_drawn_as_points(tmp_path):
    """A one-epoch run's validation curve is a single point: a line alone draws nothing of it."""
    for job, lr in enumerate(("0.1", "0.05")):
        fake_run(tmp_path / str(job), f"optimizer.lr={lr}", metrics=finals(0.9, 0.9))
        (tmp_path / str(job) / "csv" / "csv").mkdir(parents=True)
        (tmp_path / str(job) / "csv" / "csv" / "metrics.csv").write_text("epoch,step,val/acc\n0,9,0.8\n")
    _, jobs = read_runs([tmp_path])
    figure = report_figure(jobs, configurations(jobs))
    points = [line for line in figure.axes[-1].lines if len(line.get_xdata()) == 1]
    assert len(points) == 2 and all(line.get_marker() not in ("None", "", None) for line in points)
