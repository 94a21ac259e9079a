"""Run dirs read back: what each run was given (overrides, config), what it wrote (metrics, curves), why it failed.

The reading side of `lenet.report`. A run dir is any folder Hydra made for a job: `<run>/.hydra/overrides.yaml`.
"""

import csv
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet import keys, rundir
from lenet.cli import command_line

SEED = "seed"  # the one key configurations are pooled over
CURVE = "val/acc"  # logged once per epoch


@dataclass
class Job:
    """One run dir: what it was given and what it wrote."""

    name: str
    overrides: list[str]
    task: str  # the Hydra job name: train, eval
    metrics: dict = field(default_factory=dict)
    error: str = ""
    # .hydra/config.yaml as dotted keys, unresolved, and each config group's option (optimizer: adam) from hydra.yaml
    config: dict[str, str] = field(default_factory=dict)
    path: Path = Path()
    setting: dict[str, str] = field(default_factory=dict)  # what tells it apart: its overrides, or its recipe

    @property
    def status(self) -> str:
        if self.metrics:
            return "done"
        return "failed" if self.error else "unfinished"

    @property
    def params(self) -> dict[str, str]:
        return dict(override.split("=", 1) for override in self.overrides if "=" in override)

    @property
    def recipe(self) -> dict[str, str]:
        """The config but for the keys that say where or how a run goes, not what it trains (lenet.keys)."""
        return {key: value for key, value in self.config.items() if keys.role(key).recipe}

    @property
    def seed(self) -> str:
        return self.config.get(SEED) or self.params.get(SEED, "")

    def command(self) -> str:
        return command_line(self.task, self.overrides)


def read_job(job_dir: Path, name: str | None = None) -> Job:
    hydra_dir = job_dir / ".hydra"
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    hydra = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
    config_file = hydra_dir / "config.yaml"
    choices = OmegaConf.select(hydra, "runtime.choices", default={})  # first, so `optimizer` comes before its keys
    config = {group: str(option) for group, option in choices.items() if group.split("/")[0] != "hydra"}
    if config_file.is_file():
        flat = keys.flatten(OmegaConf.to_container(OmegaConf.load(config_file)))
        flat = {key: _text(value) for key, value in flat.items()}
        config |= {key: value for key, value in flat.items() if key not in config}  # `logger: {}` is logger=none
    metrics_file = job_dir / rundir.METRICS
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    error = "" if metrics else last_error(job_dir)
    job = Job(name or job_dir.name, overrides, hydra.job.name, metrics, error, config, job_dir)
    return replace(job, setting=job.params)


def _text(value) -> str:
    """A config value as the report shows it; interpolations (`${run_dir}/...`) stay as written."""
    return json.dumps(value) if value is None or isinstance(value, bool | list | dict) else str(value)


def last_error(job_dir: Path) -> str:
    """Why the job failed: the error lenet recorded in its run dir (lenet.rundir), or, for runs made before it did,
    the last ERROR line of its log."""
    if recorded := rundir.failure(job_dir):
        return recorded
    errors = [
        line.split("][ERROR] - ", 1)[1].strip()
        for log_file in job_dir.glob("*.log")
        for line in log_file.read_text(errors="replace").splitlines()
        if "][ERROR] - " in line
    ]
    return errors[-1] if errors else ""


def read_runs(folders: list[Path], by_folder: bool = False) -> tuple[str, list[Job]]:
    """A title, and the runs under `folders` (run dirs, sweep dirs or any folder above them), in order.

    One sweep (a folder's own job dirs) or a single run tells its jobs apart by their overrides, as typed. Runs
    gathered from further down or from several folders may have been made with other defaults: they are told apart
    by their configs, every recipe key that differs, and with `by_folder` also by the folder given that holds them
    (two code versions, two machines: what no config records). A report covers one task: train runs, when there
    are any.
    """
    found = {p.parents[1].resolve(): (p.parents[1], folder) for folder in folders[::-1]
             for p in folder.glob("**/.hydra/overrides.yaml")}  # fmt: skip
    given = {d: folder for d, folder in found.values()}  # the first folder named that holds it
    dirs = [d for d, _ in found.values()]  # once each, however the folders overlap
    sweep = len(folders) == 1 and all(folders[0] in (d, d.parent) for d in dirs)
    if sweep:
        jobs = [read_job(d) for d in sorted(dirs, key=_job_order)]
        title = f"Sweep {folders[0]}"
    else:  # named by their paths below the folder that holds them all
        common = Path(os.path.commonpath([d.parent.absolute() for d in dirs])) if dirs else Path()
        dirs = sorted(dirs, key=lambda d: (str(d.parent), _job_order(d)))
        jobs = [read_job(d, os.path.relpath(d.absolute(), common)) for d in dirs]
        title = f"Runs in {', '.join(map(str, folders))}"
    task = "train" if any(job.task == "train" for job in jobs) else next((job.task for job in jobs), "")
    if others := sum(job.task != task for job in jobs):
        title += f" (lenet.{task} runs only: {others} of other tasks left out)"
    jobs = [job for job in jobs if job.task == task]
    if not sweep and len(jobs) > 1:
        jobs = [replace(job, setting=job.recipe) if job.config else job for job in jobs]
    if by_folder and len(folders) > 1:
        jobs = [replace(job, setting={"folder": str(given[job.path])} | job.setting) for job in jobs]
    return title, jobs


def _job_order(job_dir: Path):
    return (0, int(job_dir.name), "") if job_dir.name.isdigit() else (1, 0, job_dir.name)


def curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, `val/acc`), epochs from 1, from the run's TensorBoard events, else from a CSV logger's metrics.csv."""
    points = _events_curve(run_dir) or _csv_curve(run_dir)
    return sorted(points.items())


def _events_curve(run_dir: Path) -> dict[int, float]:
    points = {}
    # Oldest first: a run resumed into its own dir logs its last epochs again, and the new points replace the old.
    for events in sorted(run_dir.glob("**/events.out.tfevents.*"), key=lambda path: path.stat().st_mtime):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: every point
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        if CURVE in tags:  # Lightning logs `epoch` at the step of every metric, so the step says the epoch
            epochs = {event.step: int(event.value) for event in accumulator.Scalars("epoch")} if "epoch" in tags else {}
            points |= {epochs.get(e.step, i) + 1: e.value for i, e in enumerate(accumulator.Scalars(CURVE))}
    return points


def _csv_curve(run_dir: Path) -> dict[int, float]:
    points = {}
    for path in sorted(run_dir.glob("**/metrics.csv")):
        with open(path, newline="") as f:
            points |= {int(row["epoch"]) + 1: float(row[CURVE]) for row in csv.DictReader(f) if row.get(CURVE)}
    return points
