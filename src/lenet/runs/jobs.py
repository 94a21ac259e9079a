"""Run dirs read back: what each run was given (overrides, config), what it wrote (metrics, curves), why it failed.

The reading side of `lenet.report` and `lenet.reproduce`. A run dir is any folder Hydra made for a job:
`<run>/.hydra/overrides.yaml`. Its files are data from whoever made the folder (lenet.frame.safe_read), and a command is
printed from them only when every override in it is one lenet would run (lenet.frame.safe_read.trusted). A job whose
files are
damaged or of the wrong shape is listed as unreadable, with the file and why, so that one bad job of a hundred does
not stop a report.
"""

import csv
import json
import os
import re
import stat
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf.message import DecodeError
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from tensorboard.compat.proto.event_pb2 import Event

from lenet.frame import keys
from lenet.frame.hydra_job import command_line
from lenet.frame.quoting import shown
from lenet.frame.safe_read import Unreadable, job_name, mapping, read_json, read_text, read_yaml, trusted
from lenet.runs import rundir
from lenet.runs.multirun import MULTIRUN, sweep_record

SEED = "seed"  # the one key configurations are pooled over
CURVE = "val/acc"  # logged once per epoch
OVERRIDES, HYDRA, CONFIG = ".hydra/overrides.yaml", ".hydra/hydra.yaml", ".hydra/config.yaml"
EVENTS_READ = 256 << 20  # of an events file, what is read: a lenet run's are a few MB (a grid image an epoch)


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
    damaged: bool = False  # its record cannot be read: `error` names the file and why
    live: str = ""  # of a sweep's job without a result: queued, running (epoch N of M), lost (lenet.runs.liveness)

    @property
    def status(self) -> str:
        """done, failed, unreadable; without a result, queued, running or lost (lenet.runs.liveness), else
        unfinished (stopped: a continuation resumes it)."""
        if self.damaged:
            return "unreadable"
        if self.metrics:
            return "done"
        if self.error:
            return "failed"
        return self.live.split(" (")[0] if self.live else "unfinished"

    @property
    def state(self) -> str:
        """The status, with a running job's epoch."""
        return self.live if self.status == self.live.split(" (")[0] else self.status

    @property
    def attempts(self) -> int:
        """How many attempts its run took (metrics.json says when it took more than one: resumed after an interruption,
        a requeue); its timings cover them all."""
        attempts = self.metrics.get(rundir.ATTEMPTS, 1)
        return attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 1 else 1

    @property
    def params(self) -> dict[str, str]:
        return dict(override.split("=", 1) for override in self.overrides if "=" in override)

    @property
    def recipe(self) -> dict[str, str]:
        """The config but for the keys that say where or how a run goes, not what it trains (lenet.frame.keys)."""
        return {key: value for key, value in self.config.items() if keys.role(key).recipe}

    @property
    def seed(self) -> str:
        return self.config.get(SEED) or self.params.get(SEED, "")

    def command(self) -> str:
        """The command that runs this job again; a UserError when its overrides hold what lenet would not run."""
        return command_line(self.task, trusted(self.overrides, self.path / OVERRIDES))


def read_job(job_dir: Path, name: str | None = None) -> Job:
    """The job in `job_dir`; one whose files cannot be read is listed as unreadable (its error says why)."""
    name = name or job_dir.name
    try:
        return _read_job(job_dir, name)
    except Unreadable as damage:
        return Job(name, [], "", error=str(damage), path=job_dir, damaged=True)


def _read_job(job_dir: Path, name: str) -> Job:
    overrides = read_yaml(job_dir / OVERRIDES, OVERRIDES)
    if not isinstance(overrides, list) or not all(isinstance(override, str) for override in overrides):
        raise Unreadable(f"{OVERRIDES}: not a list of overrides")
    hydra = mapping(mapping(read_yaml(job_dir / HYDRA, HYDRA), HYDRA).get("hydra"), f"{HYDRA}: hydra")
    task = job_name(hydra, HYDRA)
    runtime = mapping(hydra.get("runtime") or {}, f"{HYDRA}: hydra.runtime")
    choices = mapping(runtime.get("choices") or {}, f"{HYDRA}: hydra.runtime.choices")
    # The choices first, so that `optimizer` comes before its keys
    config = {str(group): str(option) for group, option in choices.items() if str(group).split("/")[0] != "hydra"}
    if os.path.lexists(job_dir / CONFIG):
        flat = keys.flatten(mapping(read_yaml(job_dir / CONFIG, CONFIG), CONFIG))
        config |= {key: _text(value) for key, value in flat.items() if key not in config}  # `logger: {}` is logger=none
    metrics = read_metrics(job_dir) if os.path.lexists(job_dir / rundir.METRICS) else {}
    error = "" if metrics else last_error(job_dir)
    job = Job(name, overrides, task, metrics, error, config, job_dir)
    return replace(job, setting=job.params)


def read_metrics(job_dir: Path) -> dict:
    """metrics.json, checked: numbers by name, lists of them (the confusion matrix), and `data`, a mapping."""
    metrics = mapping(read_json(job_dir / rundir.METRICS, rundir.METRICS), rundir.METRICS)
    for name, value in metrics.items():
        if name == "data":
            mapping(value, f"{rundir.METRICS}: data")
        elif not isinstance(value, list) and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Unreadable(f"{rundir.METRICS}: {name} is {shown(value)}, not a number")
    return metrics


def _text(value) -> str:
    """A config value as the report shows it; interpolations (`${run_dir}/...`) stay as written."""
    return json.dumps(value) if value is None or isinstance(value, bool | list | dict) else str(value)


def last_error(job_dir: Path) -> str:
    """Why the job failed: the error lenet recorded in its run dir (lenet.runs.rundir), or, for runs made before it did,
    the last ERROR line of its log."""
    if recorded := rundir.failure(job_dir):
        return recorded
    errors = [
        line.split("][ERROR] - ", 1)[1].strip()
        for log_file in job_dir.glob("*.log")
        for line in _log(log_file).splitlines()
        if "][ERROR] - " in line
    ]
    return errors[-1] if errors else ""


def _log(path: Path) -> str:
    """The end of a log; nothing for one that is not a regular file (a link to /dev/zero would never end)."""
    try:
        return read_text(path, path.name, tail=True)
    except Unreadable:
        return ""


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
    task = "train" if any(job.task == "train" for job in jobs) else next((job.task for job in jobs if job.task), "")
    if others := sum(job.task != task and not job.damaged for job in jobs):
        title += f" (lenet.{task} runs only: {others} of other tasks left out)"
    jobs = [job for job in jobs if job.task == task or job.damaged]  # what an unreadable job was is unknown: listed
    if not sweep and len(jobs) > 1:
        jobs = [replace(job, setting=job.recipe) if job.config else job for job in jobs]
    if by_folder and len(folders) > 1:
        jobs = [replace(job, setting={"folder": str(given[job.path])} | job.setting) for job in jobs]
    return title, jobs


def planned_jobs(sweep_dir: Path) -> int | None:
    """How many jobs the sweep in `sweep_dir` runs, from its multirun.yaml read as data: its overrides (and
    hydra.sweeper.params) expanded as Hydra's basic sweeper does, or an Optuna search's n_trials. None when the record
    does not say: none there, another sweeper, or sweeps Hydra's parser cannot expand without the configs (glob())."""
    try:
        saved, _, task = sweep_record(sweep_dir)
        sweeper = mapping(saved.get("sweeper") or {}, f"{MULTIRUN}: hydra.sweeper")
    except Unreadable:
        return None
    target = str(sweeper.get("_target_", ""))
    if target.endswith("BasicSweeper"):
        params = sweeper.get("params") or {}
        arguments = [f"{key}={value}" for key, value in params.items()] if isinstance(params, dict) else []
        try:
            overrides = OverridesParser.create().parse_overrides([*arguments, *task])
            return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
        except HydraException:  # a glob() sweep needs the configs; a continuous range is no basic sweep
            return None
    if "optuna" in target.lower():
        try:
            trials = _literal(sweeper.get("n_trials"), sweep_dir)
        except Unreadable:
            return None
        return trials if isinstance(trials, int) and not isinstance(trials, bool) and trials > 0 else None
    return None


def _literal(value, sweep_dir: Path):
    """`value`, or where it is a reference to another key of the record (`${hparams_search.n_trials}`, as lenet's
    Optuna config writes it), that key's value as written: looked up as data, never resolved (no resolver runs)."""
    reference = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    if not reference:
        return value
    found = read_yaml(sweep_dir / MULTIRUN, MULTIRUN)
    for key in reference.group(1).split("."):
        found = found.get(key) if isinstance(found, dict) else None
    return found


def _job_order(job_dir: Path):
    return (0, int(job_dir.name), "") if job_dir.name.isdigit() else (1, 0, job_dir.name)


def curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, `val/acc`), epochs from 1, from the run's TensorBoard events, else from a CSV logger's metrics.csv."""
    points = _events_curve(run_dir) or _csv_curve(run_dir)
    return sorted(points.items())


def _events_curve(run_dir: Path) -> dict[int, float]:
    points = {}
    found = {path: _written(path) for path in run_dir.glob("**/events.out.tfevents.*")}
    files = {path: when for path, when in found.items() if when is not None}
    # Oldest first: a run resumed into its own dir logs its last epochs again, and the new points replace the old.
    for events in sorted(files, key=files.get):
        try:
            scalars = _scalars(events)
        except OSError:  # unreadable: no points
            continue
        if values := scalars.get(CURVE):  # Lightning logs `epoch` at the step of every metric: the step says the epoch
            epochs = {step: int(value) for step, value in scalars.get("epoch", [])}
            points |= {epochs.get(step, i) + 1: value for i, (step, value) in enumerate(values)}
    return points


def _scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each scalar in a TensorBoard events file, by tag, in the order written.

    The records are read here, not by TensorBoard's EventAccumulator, which checks each one's CRC in pure Python
    (about 30 ms a run dir: 30 s for a sweep of 1,000). A damaged or cut-off record ends the file's points."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    with open(path, "rb") as file:  # read whole, in one call: two reads a record cost more than the parsing
        # as long as it was when opened (a running job's grows), and at most EVENTS_READ: a folder from elsewhere
        # may hold a file of any size, whose points past that are left out as a cut-off file's
        data = file.read(min(os.fstat(file.fileno()).st_size, EVENTS_READ))
    start = 0
    # A record: the event's length (8 bytes), their CRC (4), the event, its CRC (4).
    while start + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, start)
        end = start + 12 + length
        if end + 4 > len(data):  # cut off, or no length at all: never read past the end
            break
        try:
            event = Event.FromString(data[start + 12 : end])
        except DecodeError:
            break
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
        start = end + 4
    return scalars


def _csv_curve(run_dir: Path) -> dict[int, float]:
    points = {}
    for path in sorted(path for path in run_dir.glob("**/metrics.csv") if _written(path) is not None):
        try:
            lines = read_text(path, path.name).splitlines()
        except Unreadable:
            continue
        for row in csv.DictReader(lines):
            try:
                points[int(row["epoch"]) + 1] = float(row[CURVE])
            except (KeyError, TypeError, ValueError):  # a row of other metrics, or not a number: no point
                continue
    return points


def _written(path: Path) -> float | None:
    """When a regular file was last written; None for anything else or one reached through a link (a device, a FIFO,
    a file outside the run dir)."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None
