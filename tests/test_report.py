"""The report pooled over seeds, its curves, and runs from several folders compared: fake run dirs, one real sweep."""

import csv
import functools
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from scipy import stats
from torch.utils.tensorboard import SummaryWriter

from lenet import CONFIG_DIR
from lenet.frame.quoting import markdown_cell
from lenet.runs import jobs, sweep_report
from lenet.runs.comparison import _power, _seeds_needed, difference
from lenet.runs.jobs import curve, read_runs
from lenet.runs.sweep_report import configurations, report_figure
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
    sweep_report.main([str(tmp_path)])
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


def test_an_events_file_larger_than_what_is_read_gives_its_first_points(tmp_path, monkeypatch):
    # A folder from elsewhere may hold an events file of any size: it is read up to EVENTS_READ, never whole.
    events = tmp_path / "events"
    with SummaryWriter(events) as writer:
        for epoch in range(200):
            writer.add_scalar("epoch", epoch, epoch)
            writer.add_scalar("val/acc", epoch / 200, epoch)
    whole = curve(events)
    (path,) = events.glob("events.out.tfevents.*")
    monkeypatch.setattr(jobs, "EVENTS_READ", path.stat().st_size // 2)
    first = curve(events)
    assert len(whole) == 200 and 0 < len(first) < 200 and first == whole[: len(first)]


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

    sweep_report.main([str(outputs / "multirun"), str(day), str(outputs / "eval")])
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

    sweep_report.main([str(outputs), "--out", str(tmp_path / "elsewhere")])  # a folder above them all, the same runs
    assert read_csv(tmp_path / "elsewhere" / "report_by_config.csv") == table


@pytest.mark.parametrize(
    ("folders", "message"),
    [(["missing"], "error: no such folder: missing"), (["."], "error: . holds no job dirs")],
    ids=["missing", "empty"],
)
def test_bad_folders_get_one_line(folders, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        sweep_report.main(folders)


@pytest.mark.slow
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


# --- Is it really better? ---

SEEDS = (1, 2, 3, 4, 5)
# val/acc_best by seed as a real sweep gives them: each seed's data order moves every configuration alike.
SEED_EFFECT = {1: 0.0021, 2: -0.0013, 3: 0.0004, 4: -0.0027, 5: 0.0015}


def sweep_of(folder: Path, offsets: dict[str, list[float]], seeds=SEEDS) -> None:
    """A sweep over optimizer.lr and seeds: each lr's results are 0.90 + its offset + the seed's effect."""
    runs = [(seed, lr) for seed in seeds for lr in offsets]
    for job, (seed, lr) in enumerate(runs):
        value = 0.90 + offsets[lr][seeds.index(seed)] + SEED_EFFECT.get(seed, 0.0)
        fake_run(folder / str(job), f"seed={seed}", f"optimizer.lr={lr}", metrics=finals(value, value - 0.01))


def test_each_configuration_is_compared_with_the_best_with_its_interval(tmp_path, capsys):
    jitter = [0.0004, -0.0003, 0.0001, -0.0002, 0.0003]  # what else differs between two configurations' runs
    clearly_worse = [-0.03 + j for j in jitter]  # lr 10x too small: three points worse on every seed
    near = [0.0001, -0.0004, 0.0003, -0.0002, -0.0008]  # lr 5% larger: no real difference
    sweep_of(tmp_path, {"0.05": [0.0] * 5, "0.0525": near, "0.005": clearly_worse})
    sweep_report.main([str(tmp_path)])
    md = capsys.readouterr().out

    table = {row["optimizer.lr"]: row for row in read_csv(tmp_path / "report_by_config.csv")}
    best, worse, same = table["0.05"], table["0.005"], table["0.0525"]
    assert best["delta_vs_best"] == best["ci95_low"] == best["seeds_needed"] == "", "the best is not compared"
    assert float(worse["delta_vs_best"]) == pytest.approx(-3.0, abs=0.01), "in accuracy points"
    assert float(worse["ci95_low"]) < -3.0 < float(worse["ci95_high"]) < 0, "resolved: the interval excludes 0"
    assert float(same["ci95_low"]) < float(same["delta_vs_best"]) < float(same["ci95_high"])
    assert float(same["ci95_low"]) < 0 < float(same["ci95_high"]), "noise: the interval holds 0"
    assert int(same["seeds_needed"]) > 5 >= int(worse["seeds_needed"]) >= 2
    assert worse["compared"] == "paired, 5 seeds", "the same seeds: paired"
    assert float(worse["test_delta_vs_best"]) == pytest.approx(-3.0, abs=0.01), "test/acc compared too"
    assert float(worse["test_ci95_high"]) < 0

    assert "## Is it really better?" in md
    assert "against the best (optimizer.lr=0.05)" in md
    assert re.search(
        r"- optimizer.lr=0.005: val/acc_best -\d\.\d\d \(-\d\.\d\d to -2\.\d\d\), resolved: worse; test", md
    )
    line = next(line for line in md.splitlines() if line.startswith("- optimizer.lr=0.0525:"))
    assert "val/acc_best" in line and "not resolved: about" in line and "resolved: worse" not in line, line
    figure = report_figure(*_jobs_and_configs(tmp_path))
    panel = next(ax for ax in figure.axes if "vs best" in ax.get_xlabel())
    assert [label.get_text() for label in panel.get_yticklabels()] == ["optimizer.lr=0.0525", "optimizer.lr=0.005"]


def test_a_sweep_of_many_configurations_is_reported_and_plotted_with_readable_labels(tmp_path, capsys):
    """Past what a panel's height holds, the differences panel names every n-th configuration, best first;
    report.md still names each one."""
    rates = [f"0.{lr:03d}" for lr in range(1, 81)]
    for job, (lr, seed) in enumerate((lr, seed) for lr in rates for seed in (1, 2)):
        value = 0.95 - int(lr[2:]) / 10_000 + SEED_EFFECT[seed]
        raw_run(tmp_path / str(job), [f"optimizer.lr={lr}", f"seed={seed}"], metrics=finals(value, value))
    sweep_report.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert all(f"- optimizer.lr={lr}: val/acc_best" in md for lr in rates[1:]), "each compared in words"
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    figure = report_figure(*_jobs_and_configs(tmp_path))
    panel = next(ax for ax in figure.axes if "vs best" in ax.get_xlabel())
    labels = [label.get_text() for label in panel.get_yticklabels()]
    assert labels[0] == "optimizer.lr=0.002" and 10 <= len(labels) <= sweep_report.MOST_LABELS, labels
    rows = [rates[1:].index(label.removeprefix("optimizer.lr=")) for label in labels]
    assert rows == list(range(0, len(rates) - 1, rows[1])) == list(panel.get_yticks()), "every n-th, at its row"


def _jobs_and_configs(folder: Path):
    _, jobs = read_runs([folder])
    jobs = sweep_report.best_first(jobs)
    return jobs, configurations(jobs)


def test_different_seeds_are_compared_unpaired_and_pairs_narrow_the_interval(tmp_path):
    offsets = {"0.05": [0.0] * 5, "0.02": [-0.002] * 5}
    sweep_of(tmp_path / "paired", offsets)
    paired = read_csv_after_report(tmp_path / "paired")[1]
    fake_seeds = (6, 7, 8, 9, 10)  # the worse lr ran other seeds: its seed effects no longer cancel
    sweep_of(tmp_path / "a", {"0.05": [0.0] * 5})
    sweep_of(tmp_path / "b", {"0.02": [-0.002 + SEED_EFFECT[s] for s in SEEDS]}, seeds=fake_seeds)
    sweep_report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path)])
    unpaired = read_csv(tmp_path / "report_by_config.csv")[1]
    assert paired["compared"] == "paired, 5 seeds" and unpaired["compared"] == "unpaired, 5 vs 5 seeds"
    assert float(paired["delta_vs_best"]) == pytest.approx(float(unpaired["delta_vs_best"])) == pytest.approx(-0.2)
    width = {name: float(row["ci95_high"]) - float(row["ci95_low"]) for name, row in (("p", paired), ("u", unpaired))}
    assert width["p"] < width["u"] / 10, width
    assert float(paired["ci95_high"]) < 0 < float(unpaired["ci95_high"]), "pairs resolve what unpaired seeds cannot"


def read_csv_after_report(folder: Path) -> list[dict]:
    sweep_report.report([folder], folder)
    return read_csv(folder / "report_by_config.csv")


def test_with_one_seed_per_configuration_nothing_is_ranked_as_resolved(tmp_path, capsys):
    for job, lr in enumerate(("0.1", "0.05", "0.01")):
        fake_run(
            tmp_path / str(job), f"optimizer.lr={lr}", "trainer.max_epochs=2", metrics=finals(0.9 - job / 100, 0.9)
        )
    sweep_report.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert "One seed per configuration: no difference here is resolved" in md
    command = "python -m lenet.train -m optimizer.lr=0.1 trainer.max_epochs=2 seed=1,2,3,4,5"
    assert f"```bash\n{command}\n```" in md
    assert_multirun_composes(command)
    table = read_csv(tmp_path / "report_by_config.csv")
    assert [row["ci95_low"] for row in table] == ["", "", ""] and float(table[2]["delta_vs_best"]) == pytest.approx(-2)
    assert "resolved: worse" not in md


def test_folders_of_one_recipe_are_compared_folder_against_folder(tmp_path, capsys):
    """Two code versions, same config and seeds: pooled as one recipe, unless the folders are what is compared."""
    sweep_of(tmp_path / "before", {"0.05": [0.0] * 5})
    sweep_of(tmp_path / "after", {"0.05": [0.004, 0.005, 0.003, 0.006, 0.004]})
    folders = [str(tmp_path / "before"), str(tmp_path / "after")]
    sweep_report.main(folders)
    assert [row["n"] for row in read_csv(tmp_path / "report_by_config.csv")] == ["10"], "one recipe, pooled"
    sweep_report.main([*folders, "--by-folder"])
    md = capsys.readouterr().out
    table = read_csv(tmp_path / "report_by_config.csv")
    assert [(Path(row["folder"]).name, row["n"], row["compared"]) for row in table] == [
        ("after", "5", ""),
        ("before", "5", "paired, 5 seeds"),
    ]
    assert float(table[1]["ci95_high"]) < 0
    label = markdown_cell(f"folder={tmp_path / 'before'}")
    assert f"- {label}: val/acc_best -0.44" in md, "the label as text in markdown"


def test_a_and_a_comparisons_raise_about_five_false_alarms_in_a_hundred():
    """Same configuration, different seeds: a 95% interval excludes 0 in about 5% of comparisons, no more. A
    percentile bootstrap or a normal (z) interval on 5 seeds raises about twice as many."""
    rng = np.random.default_rng(0)
    draws = 1000
    seeds = [str(seed) for seed in range(5)]
    unpaired = [
        difference(dict(zip(seeds, rng.normal(0.9, 0.003, 5), strict=True)), dict(enumerate(rng.normal(0.9, 0.003, 5))))
        for _ in range(draws)
    ]
    effects = rng.normal(0, 0.003, (draws, 5))  # each seed's shared effect, cancelled by the pairs
    paired = [
        difference(dict(zip(seeds, 0.9 + e + rng.normal(0, 0.001, 5), strict=True)),
                   dict(zip(seeds, 0.9 + e + rng.normal(0, 0.001, 5), strict=True)))
        for e in effects
    ]  # fmt: skip
    assert not any(found.paired for found in unpaired) and all(found.paired for found in paired)
    for found in (unpaired, paired):
        rate = sum(f.resolved for f in found) / draws
        assert 0.03 <= rate <= 0.07, rate


@pytest.mark.parametrize(("paired", "seeds"), [(True, 10), (False, 17)])
def test_seeds_needed_match_the_textbook_power_tables(paired, seeds):
    """80% power at 5% two-sided for a difference of one standard deviation: 10 pairs, or 17 seeds a side (Cohen)."""
    values = [0.0, 2.0] * 3  # mean 1, standard deviation ~1.095
    spread = np.std(values, ddof=1)
    if paired:
        found = difference(
            {str(i): 1 + (v - 1) / spread for i, v in enumerate(values)}, dict.fromkeys(map(str, range(6)), 0.0)
        )
    else:
        other = {str(i): v / spread for i, v in enumerate(values)}
        found = difference(other, {f"b{i}": v / spread - 1 for i, v in enumerate(values)})
    assert found.paired is paired
    assert found.seeds_needed == seeds


def test_a_sweep_whose_every_job_failed_still_gets_its_report(tmp_path, capsys):
    """Nothing to compare: the report lists the failures (it crashed on the comparison, and the sweep exited 0)."""
    for job, lr in enumerate(("-1", "-2")):
        fake_run(tmp_path / str(job), f"optimizer.lr={lr}")
        (tmp_path / str(job) / "train.log").write_text(f"[t][lenet.cli][ERROR] - error: optimizer.lr={lr} is bad\n")
    sweep_report.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert "2 jobs: 0 done, 2 failed, 0 unfinished." in md
    assert "- job 0 failed: error: optimizer.lr=-1 is bad" in md and "Is it really better?" not in md


# --- What a run dir holds is data, never code or markup ---


def raw_run(run_dir: Path, overrides: list, metrics=None, config=None, choices=None, task="train") -> Path:
    """A run dir written as plain YAML, whatever it holds: what a stranger's folder may hold."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"job": {"name": task}, "runtime": {"choices": choices or {}}}}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {}))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return run_dir


def test_a_report_replaces_links_in_its_folder_and_never_writes_through_them(tmp_path, capsys):
    sweep_of(tmp_path / "sweep", {"0.05": [0.0] * 5, "0.02": [-0.002] * 5})
    outside = tmp_path / "outside"
    outside.mkdir()
    names = ("report.md", "report.csv", "report_by_config.csv", "report.png")
    for name in names:
        (outside / name).write_text("precious")
        (tmp_path / "sweep" / name).symlink_to(outside / name)
    sweep_report.main([str(tmp_path / "sweep")])
    assert [(outside / name).read_bytes() for name in names] == [b"precious"] * 4, "no file outside the folder written"
    assert not any((tmp_path / "sweep" / name).is_symlink() for name in names), "each link replaced by the report"
    assert read_csv(tmp_path / "sweep" / "report_by_config.csv")[0]["optimizer.lr"] == "0.05"
    assert capsys.readouterr().out.startswith(f"# Sweep {tmp_path / 'sweep'}")


def test_interpolations_in_a_run_dir_are_never_resolved(tmp_path, monkeypatch):
    """A saved config keeps `${oc.env:...}` as written: read back, it stays that text, never the variable's value."""
    monkeypatch.setenv("LENET_TEST_SECRET", "hunter2")
    for job, lr in enumerate(("0.05", "0.02")):
        raw_run(tmp_path / str(job), [f"optimizer.lr={lr}"], metrics=finals(0.9 - job / 100, 0.9),
                config={"optimizer": {"lr": float(lr)}, "data": {"root": "${oc.env:LENET_TEST_SECRET}"}},
                choices={"optimizer": "${oc.env:LENET_TEST_SECRET}"})  # fmt: skip
    sweep_report.main(
        [str(tmp_path), "--out", str(tmp_path / "out")]
    )  # two folders' worth: told apart by their configs
    sweep_report.main([str(tmp_path / "0"), str(tmp_path / "1"), "--out", str(tmp_path / "out")])
    written = [(tmp_path / "out" / name).read_text() for name in ("report.md", "report.csv", "report_by_config.csv")]
    assert not any("hunter2" in text for text in written)
    _, jobs = read_runs([tmp_path / "0"])
    assert jobs[0].config["optimizer"] == jobs[0].config["data.root"] == "${oc.env:LENET_TEST_SECRET}"


def test_text_from_run_dirs_shows_as_text_in_every_output(tmp_path, capsys):
    """Markup, a cell border, terminal escapes and a formula in a value: report.md escapes them, the console shows
    escapes for the control characters, the CSV quotes the formula, and report.png draws `$\\cmd$` as written."""
    values = ['=HYPERLINK("http://x")|<b>bold</b>', "$\\cmd$\x1b]0;t\x07\x1b[31m"]
    for job, root in enumerate(values):
        raw_run(tmp_path / str(job), [f"data.root={root}"], metrics=finals(0.9 - job / 100, 0.9))
    sweep_report.main([str(tmp_path)])
    out = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    assert "\x1b" not in out + md and "\x07" not in out + md
    rows = [line for line in md.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert len(rows) == 2 and all(row.count(" | ") == 7 for row in rows), "a `|` in a value is no cell border"
    assert "<b>" not in md and "\\<b\\>bold\\</b\\>" in md and "\\$\\\\cmd\\$" in md
    cells = {row["job"]: row["data.root"] for row in read_csv(tmp_path / "report.csv")}
    assert cells["0"] == "'" + values[0], "a formula quoted for spreadsheets"
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    figure = report_figure(*_jobs_and_configs(tmp_path))
    ticks = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert "\\$\\cmd\\$\\x1b]0;t\\x07\\x1b[31m" in ticks, ticks  # an escaped dollar is drawn as a dollar


def test_damaged_run_dirs_are_listed_one_line_each_and_the_rest_reported(tmp_path, capsys):
    raw_run(tmp_path / "0", ["optimizer.lr=0.05"], metrics=finals(0.9, 0.9), config={"optimizer": {"lr": 0.05}})
    raw_run(tmp_path / "1", ["optimizer.lr=0.02"], metrics='{"val/acc_best": 0.9,')
    raw_run(tmp_path / "2", ["optimizer.lr=0.02"], metrics=finals(0.9, 0.9))
    (tmp_path / "2" / ".hydra" / "config.yaml").write_text("optimizer: {lr: [\n")
    raw_run(tmp_path / "3", ["optimizer.lr=0.02"], metrics=finals(0.9, 0.9))
    (tmp_path / "3" / ".hydra" / "hydra.yaml").write_text("- a list\n- where a mapping belongs\n")
    raw_run(tmp_path / "4", ["optimizer.lr=0.02"], metrics=finals(0.9, 0.9) | {"val/acc_best": "0.95"})
    raw_run(tmp_path / "5", ["optimizer.lr=0.02"], metrics={**finals(0.9, 0.9), "data": "not a mapping"})
    raw_run(tmp_path / "6", ["optimizer.lr=0.02"])
    (tmp_path / "6" / "train.log").symlink_to("/dev/zero")  # read to the end, it never ends
    raw_run(tmp_path / "7", ["optimizer.lr=0.02"], metrics=finals(0.9, 0.9))
    (tmp_path / "7" / "metrics.json").unlink()
    (tmp_path / "7" / "metrics.json").symlink_to("/dev/zero")
    raw_run(tmp_path / "8", {"a": "mapping"}, metrics=finals(0.9, 0.9))
    raw_run(tmp_path / "9", ["optimizer.lr=0.02"], metrics=finals(0.9, 0.9), task="train; rm -rf ~")
    raw_run(tmp_path / "10", ["optimizer.lr=0.02"], metrics=finals(0.9, 0.9))
    (tmp_path / "10" / ".hydra" / "overrides.yaml").unlink()
    (tmp_path / "10" / ".hydra" / "overrides.yaml").mkdir()
    sweep_report.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert "11 jobs: 1 done, 0 failed, 1 unfinished, 9 unreadable." in md
    problems = [line for line in md.splitlines() if line.startswith("- job ")]
    assert problems == [
        "- job 1 unreadable: metrics.json: not JSON (Expecting property name enclosed in double quotes at line 1)",
        "- job 2 unreadable: .hydra/config.yaml: not YAML (did not find expected node content at line 2)",
        "- job 3 unreadable: .hydra/hydra.yaml is \\['a list', 'where a mapping belongs'\\], not a mapping",
        "- job 4 unreadable: metrics.json: val/acc\\_best is '0.95', not a number",
        "- job 5 unreadable: metrics.json: data is 'not a mapping', not a mapping",
        "- job 6 unfinished: no metrics.json",
        "- job 7 unreadable: metrics.json: not a regular file",
        "- job 8 unreadable: .hydra/overrides.yaml: not a list of overrides",
        "- job 9 unreadable: .hydra/hydra.yaml: hydra.job.name is 'train; rm -rf \\~', no lenet command",
        "- job 10 unreadable: .hydra/overrides.yaml: not a regular file",
    ]
    table = read_csv(tmp_path / "report.csv")
    assert (table[0]["job"], table[0]["status"], table[0]["val/acc_best"]) == ("0", "done", "0.9"), "the rest reported"
    assert table[1]["error"] == "metrics.json: not JSON (Expecting property name enclosed in double quotes at line 1)"


def test_a_command_is_printed_only_when_lenet_would_run_every_override_in_it(tmp_path, capsys):
    """What a stranger's sweep dir may ask a user to paste: a payload is named, never printed as a command."""
    marker = tmp_path / "marker"
    payload = f"+callbacks.evil={{_target_:os.mkdir,path:{marker}}}"
    sweep = tmp_path / "sweep"
    raw_run(sweep / "0", ["optimizer.lr=0.05", payload], metrics=finals(0.9, 0.9))
    raw_run(sweep / "1", ["optimizer.lr=0.02", payload])  # unfinished: the report says how to continue the sweep
    hydra = ["hydra.mode=MULTIRUN", f"hydra.callbacks.evil={{_target_:os.mkdir,path:{marker}}}"]
    record = {"hydra": {"overrides": {"hydra": hydra, "task": ["optimizer.lr=0.05,0.02"]}, "job": {"name": "train"}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    sweep_report.main([str(sweep)])
    md = capsys.readouterr().out
    assert "os.mkdir" not in md and "```" not in md, "no command printed"
    assert (
        f"Rerun it: not printed, for {markdown_cell(str(sweep / '0' / '.hydra' / 'overrides.yaml'))} holds what "
        "lenet does not run: +callbacks.evil adds a setting: only lenet's own may be set from a file." in md
    )
    assert f"Continue the sweep: not printed, for {markdown_cell(str(sweep / 'multirun.yaml'))} holds what lenet " \
           "does not run: hydra.callbacks.evil names code to run (\\_target\\_)." in md  # fmt: skip
    assert read_csv(sweep / "report_by_config.csv")[0]["command"].startswith("not printed: ")

    # Lenet's own settings, a launcher and its resources: printed, and they compose.
    hydra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "hydra.mode=MULTIRUN"]
    record["hydra"]["overrides"]["hydra"] = hydra
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    for job in ("0", "1"):
        (sweep / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr=0.0{5 - 3 * int(job)}"]))
    sweep_report.main([str(sweep)])
    md = capsys.readouterr().out
    command = f"python -m lenet.train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 optimizer.lr=0.05,0.02 " \
              f"hydra.sweep.dir={sweep}"  # fmt: skip
    assert f"Continue the sweep:\n\n```bash\n{command}\n```" in md
    assert "```bash\npython -m lenet.train optimizer.lr=0.05\n```" in md
    assert not marker.exists()


def test_counts_say_one_job(tmp_path, capsys):
    raw_run(tmp_path / "0", ["optimizer.lr=0.05"], metrics=finals(0.9, 0.9))
    sweep_report.main([str(tmp_path)])
    assert "\n1 job: 1 done, 0 failed, 0 unfinished.\n" in capsys.readouterr().out


@pytest.mark.parametrize("paired", [True, False])
def test_seeds_needed_is_the_fewest_seeds_a_simulated_sweep_resolves_in_four_of_five(paired):
    """Normal results drawn at the seeds said and one fewer, compared by the same t-test: at least 80% of the
    simulated sweeps resolve the difference with the seeds said, fewer than 80% with one seed less (within the
    simulation's error). Large effects included: a bisection over scipy's power answered 18 seeds where 3 do."""
    rng = np.random.default_rng(1)
    draws = 20_000
    error = 4 * np.sqrt(0.8 * 0.2 / draws)  # four standard errors of a simulated power near 80%
    effects = [0.7, 1.0, 1.713, 2.5, 4.0, 10.449] if paired else [1.0, 1.5, 2.439, 4.0, 10.0]
    for effect in effects:
        seeds = _seeds_needed(effect, paired)
        for n, enough in ((seeds, True), (seeds - 1, False)):
            if n < 2:
                continue
            if paired:  # differences of pairs, `effect` of their standard deviations from 0
                p = stats.ttest_1samp(rng.normal(effect, 1, (draws, n)), 0, axis=1).pvalue
            else:
                p = stats.ttest_ind(rng.normal(effect, 1, (draws, n)), rng.normal(0, 1, (draws, n)), axis=1).pvalue
            power = np.mean(p < 0.05)
            assert (power >= 0.8 - error) if enough else (power < 0.8 + error), (effect, n, power)
            assert power == pytest.approx(_power(np.array(n), effect, paired), abs=error), (effect, n)


def test_a_large_resolved_difference_needs_the_seeds_that_resolved_it():
    """lr 0.01 against 0.05 over 3 paired seeds: -2.55 points (-3.17 to -1.94), resolved, so 3 seeds are enough."""
    spread = 0.615 / stats.t.ppf(0.975, 2) * np.sqrt(3)  # the standard deviation that interval says
    worse = {str(seed): 0.95 + (-2.555 + spread * (seed - 2)) / 100 for seed in (1, 2, 3)}
    found = difference(worse, dict.fromkeys(worse, 0.95)).scaled(100)
    assert (round(found.low, 2), round(found.high, 2)) == (-3.17, -1.94) and found.resolved
    assert found.seeds_needed == 3


BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_record(sweep: Path, task: list[str], sweeper: dict, **config) -> None:
    """A sweep dir's multirun.yaml, as lenet writes it: the whole config, unresolved."""
    hydra = {"sweeper": sweeper, "overrides": {"task": task, "hydra": []}, "job": {"name": "train"}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra, **config}))


def test_the_report_counts_the_jobs_a_sweep_has_not_started(tmp_path, capsys):
    """Its jobs as Hydra expands the sweep's overrides and hydra.sweeper.params; those without a job dir not started."""
    task = ["optimizer.lr=0.1,0.2", "data.root=${oc.env:HOME}"]  # text to the parser: never resolved
    sweep_record(tmp_path, task, {"_target_": BASIC, "params": {"seed": "1,2,3"}})
    fake_run(tmp_path / "0", "optimizer.lr=0.1", "seed=1", metrics=finals(0.9, 0.9))
    fake_run(tmp_path / "1", "optimizer.lr=0.1", "seed=2")  # interrupted
    sweep_report.main([str(tmp_path)])
    md = capsys.readouterr().out
    assert "6 jobs: 1 done, 0 failed, 1 unfinished, 4 not started." in md
    assert "- 4 jobs not started: 2-5" in md


@pytest.mark.parametrize(
    ("n_trials", "counted"),
    [(5, "5 jobs: 1 done, 0 failed, 0 unfinished, 4 not started."),
     ("${hparams_search.n_trials}", "5 jobs: 1 done, 0 failed, 0 unfinished, 4 not started."),  # lenet's config
     ("${oc.env:LENET_TEST_SECRET}", "1 job: 1 done, 0 failed, 0 unfinished.")],  # never resolved: not known
)  # fmt: skip
def test_the_report_of_an_optuna_search_counts_its_n_trials(n_trials, counted, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LENET_TEST_SECRET", "7")
    sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_trials": n_trials}
    sweep_record(tmp_path, ["hparams_search=optuna"], sweeper, hparams_search={"n_trials": 5})
    fake_run(tmp_path / "0", "optimizer.lr=0.1", metrics=finals(0.9, 0.9))
    sweep_report.main([str(tmp_path)])
    assert counted in capsys.readouterr().out


def test_a_resumed_jobs_epochs_say_how_many_attempts_it_took(tmp_path, capsys):
    fake_run(tmp_path / "0", "optimizer.lr=0.1", metrics=finals(0.9, 0.9) | {"epochs": 5, "attempts": 2})
    fake_run(tmp_path / "1", "optimizer.lr=0.2", metrics=finals(0.8, 0.8))
    sweep_report.main([str(tmp_path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert "| 5 in 2 attempts |" in rows[0] and "attempts" not in rows[1]
    assert [row["attempts"] for row in read_csv(tmp_path / "report.csv")] == ["2", "1"]
