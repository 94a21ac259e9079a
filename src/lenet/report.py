"""A sweep's report: `python -m lenet.report outputs/multirun/<date>/<time>`, also run when every multirun ends.

One row per job (its swept overrides, accuracies, epochs, wall time, images/s), best first by `val/acc_best`,
the best job as a ready command line, and failed or unfinished jobs named as such. Written next to the jobs
as report.csv, report.md and report.png (the metric against each swept parameter).
"""

import argparse
import atexit
import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from lenet.console import SweepError, command_line

log = logging.getLogger(__name__)

METRIC = "val/acc_best"  # what lenet.train returns to sweepers, so what Optuna maximizes
COLUMNS = {  # metrics.json key -> how the markdown shows it
    METRIC: "{:.4f}",
    "test/acc": "{:.4f}",
    "epochs": "{:.0f}",
    "wall_s": "{:.1f}",
    "train_images_per_s": "{:.0f}",
}


@dataclass
class Job:
    """One job dir of a sweep: what it was given and what it wrote."""

    name: str
    overrides: list[str]
    task: str  # the Hydra job name: train, eval
    metrics: dict = field(default_factory=dict)
    error: str = ""

    @property
    def status(self) -> str:
        if self.metrics:
            return "done"
        return "failed" if self.error else "unfinished"

    @property
    def params(self) -> dict[str, str]:
        return dict(override.split("=", 1) for override in self.overrides if "=" in override)

    def command(self) -> str:
        return command_line(self.task, self.overrides)


def read_job(job_dir: Path) -> Job:
    hydra_dir = job_dir / ".hydra"
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    task = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.name
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Job(job_dir.name, overrides, task, metrics, "" if metrics else last_error(job_dir))


def last_error(job_dir: Path) -> str:
    """The last ERROR line of the job's log: a failed job logs why (see report_user_errors, SweepReport)."""
    errors = [
        line.split("][ERROR] - ", 1)[1].strip()
        for log_file in job_dir.glob("*.log")
        for line in log_file.read_text(errors="replace").splitlines()
        if "][ERROR] - " in line
    ]
    return errors[-1] if errors else ""


def read_sweep(sweep_dir: Path) -> list[Job]:
    """The jobs that started (Hydra wrote their .hydra/), best first; jobs without the metric last."""
    dirs = sorted((p.parents[1] for p in sweep_dir.glob("*/.hydra/overrides.yaml")), key=_job_order)
    return sorted((read_job(d) for d in dirs), key=lambda job: -job.metrics.get(METRIC, -math.inf))


def _job_order(job_dir: Path):
    return (0, int(job_dir.name), "") if job_dir.name.isdigit() else (1, 0, job_dir.name)


def swept(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs (all of them for a single job)."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.params))
    varying = [key for key in keys if len({job.params.get(key) for job in jobs}) > 1]
    return varying if len(jobs) > 1 else keys


def rows(jobs: list[Job]) -> list[dict]:
    params = swept(jobs)
    return [
        {"job": job.name, "status": job.status}
        | {key: job.params.get(key, "") for key in params}
        | {name: job.metrics.get(name, "") for name in COLUMNS}
        | {"error": job.error, "overrides": " ".join(job.overrides)}
        for job in jobs
    ]


def write_csv(table: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def markdown(sweep_dir: Path, jobs: list[Job]) -> str:
    params = swept(jobs)
    header = ["job", "status", *params, *COLUMNS]
    lines = [f"# Sweep {sweep_dir}", "", _counts(jobs), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        values = [_cell(job.metrics.get(name), spec) for name, spec in COLUMNS.items()]
        cells = [job.name, job.status, *(job.params.get(key, "") for key in params), *values]
        lines.append("| " + " | ".join(cells) + " |")
    best = next((job for job in jobs if METRIC in job.metrics), None)
    if best:
        lines += ["", f"Best: job {best.name}, {METRIC} {best.metrics[METRIC]:.4f}. Rerun it:", ""]
        lines += ["```bash", best.command(), "```"]
    problems = [job for job in jobs if job.status != "done"]
    if problems:
        lines += ["", "Not finished:", ""]
        lines += [f"- job {job.name} {job.status}: {job.error or 'no metrics.json'}" for job in problems]
    return "\n".join(lines) + "\n"


def _counts(jobs: list[Job]) -> str:
    done = sum(job.status == "done" for job in jobs)
    failed = sum(job.status == "failed" for job in jobs)
    return f"{len(jobs)} jobs: {done} done, {failed} failed, {len(jobs) - done - failed} unfinished."


def _cell(value, spec: str) -> str:
    return "" if value is None else spec.format(value)


def plot(jobs: list[Job], path: Path) -> bool:
    """The metric against each swept parameter, one panel each; False when there is nothing to plot."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any process

    done = [job for job in jobs if METRIC in job.metrics]
    params = swept(jobs)
    if not done or not params:
        return False
    figure = Figure(figsize=(4 * len(params), 3.2), layout="constrained")
    for axes, key in zip(figure.subplots(1, len(params), squeeze=False)[0], params, strict=True):
        _panel(axes, key, [job.params.get(key, "") for job in done], [job.metrics[METRIC] for job in done])
    figure.savefig(path, dpi=100)
    return True


def _panel(axes, key: str, values: list[str], metric: list[float]) -> None:
    numbers = [_number(v) for v in values]
    if None in numbers:  # categories (optimizer=adam): one position each, in first-seen order
        categories = list(dict.fromkeys(values))
        axes.scatter([categories.index(v) for v in values], metric)
        axes.set_xticks(range(len(categories)), categories)
    else:
        axes.scatter(numbers, metric)
        if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:  # learning rates, weight decays
            axes.set_xscale("log")
    axes.set_xlabel(key)
    axes.set_ylabel(METRIC)


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def report(sweep_dir: Path) -> list[Job]:
    """Write report.csv, report.md and report.png into `sweep_dir`; return its jobs (none: nothing written)."""
    jobs = read_sweep(sweep_dir)
    if jobs:
        write_csv(rows(jobs), sweep_dir / "report.csv")
        (sweep_dir / "report.md").write_text(markdown(sweep_dir, jobs))
        plot(jobs, sweep_dir / "report.png")
    return jobs


class SweepReport(Callback):
    """Hydra callback (hydra/default.yaml): the report at the end of every multirun, and a non-zero exit
    status when a job failed.

    Hydra skips on_multirun_end when the sweeper re-raises a failed job's error, so the report is also
    registered to run at exit; on_multirun_end takes it over when the sweep gets there.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._report)

    def on_multirun_end(self, config, **kwargs) -> None:
        atexit.unregister(self._report)
        failed = [job for job in self._report() if job.status == "failed"]
        # Sweepers that go on past failures (Optuna with max_failure_rate) must still exit non-zero. Hydra turns a
        # callback's exception into a warning, so it takes a SystemExit.
        if failed:
            raise SystemExit(f"error: {len(failed)} job(s) failed: see {self.sweep_dir / 'report.md'}")

    def on_job_end(self, config, job_return, **kwargs) -> None:
        # Into the job's own log, which the report reads; a UserError was already logged by report_user_errors.
        error = job_return._return_value  # `return_value` would re-raise it
        if job_return.status == JobStatus.FAILED and not isinstance(error, SweepError):
            log.error("%s: %s", type(error).__name__, error)

    def _report(self) -> list[Job]:
        try:
            jobs = report(self.sweep_dir)
        except Exception as error:  # a broken report must not hide how the sweep itself went
            log.warning("no sweep report: %s: %s", type(error).__name__, error)
            return []
        if jobs:
            log.info("%s\nSweep report: %s", _counts(jobs), self.sweep_dir / "report.md")
        return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lenet.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir, e.g. outputs/multirun/<date>/<time>")
    sweep_dir = parser.parse_args(argv).sweep_dir
    if not report(sweep_dir):
        sys.exit(f"error: {sweep_dir} holds no job dirs (<job>/.hydra/overrides.yaml): is it a multirun dir?")
    print((sweep_dir / "report.md").read_text(), end="")
    print(f"Written: {', '.join(str(p) for p in sorted(sweep_dir.glob('report.*')))}")


if __name__ == "__main__":
    main()
