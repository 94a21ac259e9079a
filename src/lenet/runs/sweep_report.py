"""Reports on runs: `python -m lenet.report outputs/multirun/<date>/<time>`, also run when every multirun ends.

One row per job (what tells it apart, accuracies, epochs, wall time, images/s), best first by `val/acc_best`,
failed or unfinished jobs named as such; then the jobs pooled over their seeds: one row per configuration with the
mean and standard deviation of its accuracies, and the best configuration (or job) as a ready command line.
Each configuration is compared with the best one, with the 95% interval of the difference and about how many
seeds would resolve it (lenet.runs.comparison), for `val/acc_best` and `test/acc`; report.md says which differences are
resolved and which are noise. Written as report.csv, report_by_config.csv, report.md and report.png (the metric per
configuration, the differences with their intervals, and every job's validation curve). Several folders, or one
above many runs (`outputs/`), are compared together: by their configs, or folder against folder (`--by-folder`).

What the run dirs hold is data from whoever made them (lenet.runs.jobs): shown as text in every output (markdown
escaped,
spreadsheet formulas quoted, terminal sequences and TeX shown as written), a command printed only when lenet would
run every override in it, and each report file replaced whole (a link in its place is replaced, never followed).
"""

import argparse
import csv
import logging
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any process
from matplotlib.ticker import MaxNLocator

from lenet.frame import atomic, keys
from lenet.frame.errors import UserError
from lenet.frame.hydra_job import METRIC, command_line
from lenet.frame.quoting import markdown_cell, spreadsheet_cell, terminal
from lenet.frame.safe_read import trusted
from lenet.runs import liveness
from lenet.runs.comparison import MOST_SEEDS, Difference, difference
from lenet.runs.jobs import CURVE, SEED, Job, curve, planned_jobs, read_runs
from lenet.runs.multirun import MULTIRUN, continue_command

log = logging.getLogger(__name__)
# What a job without a result is waiting for, in report.md's "Not finished" list.
WHY = {
    "unfinished": "no metrics.json",
    liveness.QUEUED: "waiting in Slurm's queue",
    liveness.RUNNING: "no metrics.json yet",
    liveness.LOST: "Slurm no longer has it and it left no result: continuing the sweep runs it again",
}

COLUMNS = {  # metrics.json key -> how the markdown shows it
    METRIC: "{:.4f}",
    "test/acc": "{:.4f}",
    "epochs": "{:.0f}",
    "wall_s": "{:.1f}",
    "train_images_per_s": "{:.0f}",
}
POOLED = (METRIC, "test/acc")  # their mean and standard deviation over each configuration's seeds
COMPARED = {METRIC: "", "test/acc": "test_"}  # compared with the best configuration: the CSV columns' prefixes
POINTS = 100  # accuracy differences are said in points: 0.9123 - 0.9080 is +0.43
SUGGESTED_SEEDS = 5  # what one seed per configuration is told to run: enough for an interval, and a first estimate
MOST_LABELS = 30  # of report.png's differences panel: every configuration's name up to this many, else every n-th


def best_first(jobs: list[Job]) -> list[Job]:
    """Jobs without the metric last."""
    return sorted(jobs, key=lambda job: -job.metrics.get(METRIC, -math.inf))


def swept(jobs: list[Job]) -> list[str]:
    """The keys whose values differ between jobs (all of them for a single job)."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.setting))
    if len(jobs) == 1:
        return keys
    varying = [key for key in keys if len({job.setting.get(key) for job in jobs}) > 1]
    return [key for key in varying if not _said_by_option(key, varying, jobs)]


def _said_by_option(key: str, varying: list[str], jobs: list[Job]) -> bool:
    """optimizer._target_, or optimizer.betas that only some options have, where the option itself differs: the
    `optimizer` column (sgd, adam) says it. Keys every option has (optimizer.lr) stay."""
    if not any(key.startswith(f"{group}.") for group in varying):
        return False
    return key.endswith("._target_") or any(key not in job.setting for job in jobs)


@dataclass
class Configuration:
    """Jobs that differ in their seed only, best first."""

    label: dict[str, str]  # the keys that tell configurations apart, and this one's values
    jobs: list[Job]
    # Against the best configuration on each COMPARED metric, in accuracy points; empty for the best itself.
    vs_best: dict[str, Difference | None] = field(default_factory=dict)

    @property
    def done(self) -> list[Job]:
        return [job for job in self.jobs if job.metrics]

    @property
    def seeds(self) -> list[str]:
        """The seeds of the jobs that finished, those pooled."""
        return sorted({job.seed for job in self.done} - {""}, key=lambda seed: (_or(_number(seed), math.inf), seed))

    def values(self, name: str) -> list[float]:
        return [job.metrics[name] for job in self.done if name in job.metrics]

    def by_seed(self, name: str) -> dict[str, float]:
        """The values by seed; jobs without a seed of their own, or repeating one, by their name (never paired)."""
        values = {}
        for job in self.done:
            if name in job.metrics:
                values[job.seed if job.seed and job.seed not in values else f"job {job.name}"] = job.metrics[name]
        return values

    def mean(self, name: str) -> float | None:
        values = self.values(name)
        return statistics.fmean(values) if values else None

    def std(self, name: str) -> float | None:
        """The sample standard deviation over the seeds: None for fewer than two."""
        values = self.values(name)
        return statistics.stdev(values) if len(values) > 1 else None

    def describe(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.label.items()) or "all jobs"

    def command(self) -> str:
        """The best job's command line; with several seeds, a multirun over them all. A UserError when its overrides
        hold what lenet would not run (lenet.frame.safe_read.trusted)."""
        job = self.done[0]
        return over_seeds(job, self.seeds) if len(self.seeds) > 1 else job.command()


def configurations(jobs: list[Job]) -> list[Configuration]:
    """The jobs grouped by all that tells them apart but their seed, best mean first, each compared with the best."""
    keys = [key for key in swept(jobs) if key != SEED]
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.setting.get(key, "") for key in keys), []).append(job)
    configs = [Configuration(dict(zip(keys, values, strict=True)), group) for values, group in groups.items()]
    configs.sort(key=lambda c: -_or(c.mean(METRIC), -math.inf))
    best = {name: configs[0].by_seed(name) for name in COMPARED} if configs else {}
    for config in configs[1:]:
        config.vs_best = {name: _points(difference(config.by_seed(name), best[name])) for name in COMPARED}
    return configs


def _points(found: Difference | None) -> Difference | None:
    return found.scaled(POINTS) if found else None


def _or(value, default):
    return default if value is None else value


def rows(jobs: list[Job]) -> list[dict]:
    params = swept(jobs)
    return [
        {"job": job.name, "status": job.state}
        | {key: job.setting.get(key, "") for key in params}
        | {name: job.metrics.get(name, "") for name in COLUMNS}
        | {"attempts": job.attempts if job.metrics else ""}
        | {"error": job.error, "overrides": " ".join(job.overrides)}
        for job in jobs
    ]


def config_rows(configs: list[Configuration]) -> list[dict]:
    return [
        config.label
        | {"n": len(config.done), "seeds": " ".join(config.seeds)}
        | {f"{name}_{stat}": getattr(config, stat)(name) for name in POOLED for stat in ("mean", "std")}
        | dict(pair for name, prefix in COMPARED.items() for pair in _compared(prefix, config.vs_best.get(name)))
        | {"compared": _how(config.vs_best.get(METRIC)), "command": _or_why(config.command) if config.done else ""}
        for config in configs
    ]


def _or_why(command) -> str:
    """`command()`, or why it is not printed."""
    try:
        return command()
    except UserError as error:
        return f"not printed: {error}"


def _compared(prefix: str, found: Difference | None) -> list[tuple[str, float | int | None]]:
    """The CSV's comparison columns: the difference in points, its 95% interval, the seeds that would resolve it."""
    values = (found.delta, found.low, found.high, found.seeds_needed) if found else (None,) * 4
    names = ("delta_vs_best", "ci95_low", "ci95_high", "seeds_needed")
    return [(prefix + name, round(v, 4) if isinstance(v, float) else v) for name, v in zip(names, values, strict=True)]


def _how(found: Difference | None) -> str:
    if found is None:
        return ""
    if found.paired:
        return f"paired, {found.seeds[0]} seeds"
    return f"unpaired, {found.seeds[0]} vs {found.seeds[1]} seeds"


def write_csv(table: list[dict], path: Path) -> None:
    with atomic.replacing(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[_csv_cell(name) for name in table[0]])
        writer.writeheader()
        writer.writerows({_csv_cell(k): _csv_cell(v) for k, v in row.items()} for row in table)  # None: an empty cell


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _csv_cell(value):
    """Text from the run dirs as a spreadsheet shows it, never a formula; a number written as text (a setting's
    value, `-0.5`) stays a number."""
    return spreadsheet_cell(value) if isinstance(value, str) and not NUMBER.fullmatch(value) else value


def markdown(
    title: str, jobs: list[Job], configs: list[Configuration], continued_by=None, planned: int | None = None
) -> str:
    """report.md. `continued_by`: for a sweep, what returns the command that continues it (a UserError: why not);
    `planned`: how many jobs the sweep runs, when its record says (lenet.runs.jobs.planned_jobs)."""
    lines = [f"# {title}", "", _counts(jobs, planned), ""]  # the folders as the user named them
    pooled = any(len(config.done) > 1 for config in configs)
    if pooled:
        lines += ["## Pooled over seeds", "", *_pooled_table(configs), ""]
        best = configs[0]
        if best.mean(METRIC) is not None:
            which = f"Best: {_md(best.describe())}" if len(configs) > 1 else "All jobs"
            result = f"{METRIC} {_mean_std(best, METRIC)} over seeds {_md(', '.join(best.seeds))}"
            lines += [*_command(f"{which}, {result}. Rerun it", best.command), ""]
        lines += _confidence(configs)
    lines += ["## Jobs", "", *_jobs_table(jobs)]
    best_job = next((job for job in jobs if METRIC in job.metrics), None)
    if best_job and not pooled:  # with seeds, the luckiest one is no recipe
        best = f"Best: job {_md(best_job.name)}, {METRIC} {best_job.metrics[METRIC]:.4f}. Rerun it"
        lines += ["", *_command(best, best_job.command)]
        if confidence := _confidence(configs):  # after the best job's command: what one seed cannot tell
            lines += ["", *confidence[:-1]]  # its closing blank line: the end, or the next section's own
    problems = [job for job in jobs if job.status != "done"]
    waiting = not_started(jobs, planned)
    if problems or waiting:
        lines += ["", "Not finished:", ""]
        lines += [f"- job {_md(job.name)} {job.state}: {_md(job.error or WHY.get(job.status, ''))}" for job in problems]
        if waiting:
            lines.append(f"- {_counted(len(waiting), 'job')} not started: {_md(_spans(waiting))}")
        stopped = [job for job in problems if job.status not in (liveness.QUEUED, liveness.RUNNING)]
        if continued_by and (stopped or waiting):  # its finished jobs are kept, the interrupted resume, the failed
            # run again; those still queued or running are left alone
            lines += ["", *_command("Continue the sweep", continued_by)]
    return terminal("\n".join(lines) + "\n")  # control characters shown as escapes, in the commands too


def _command(saying: str, command) -> list[str]:
    """`saying`, then the command `command()` returns in a code block; or, when it is not printed, why."""
    try:
        text = command()
    except UserError as error:
        return [f"{saying}: not printed, for {_md(str(error))}."]
    fence = "`" * max([3, *(len(run) + 1 for run in re.findall("`+", text))])  # a run of ` as long would close it
    return [f"{saying}:", "", f"{fence}bash", text, fence]


def _md(text: str) -> str:
    """Text from the run dirs, as itself in markdown."""
    return markdown_cell(text)


def _confidence(configs: list[Configuration]) -> list[str]:
    """In words: which configurations are resolved as worse than the best, and which differences are noise."""
    measured = [config for config in configs if config.mean(METRIC) is not None]
    if len(measured) < 2:
        return []
    lines = ["## Is it really better?", ""]
    if all(len(config.values(METRIC)) < 2 for config in measured):
        saying = (
            f"One seed per configuration: no difference here is resolved, for a seed alone moves {METRIC} by tenths"
            f" of a point and more, so this ranking may be noise. Run {SUGGESTED_SEEDS} seeds of each configuration"
            " to compare them with 95% intervals, e.g. the best"
        )
        seeds = [str(seed) for seed in range(1, SUGGESTED_SEEDS + 1)]
        return [*lines, *_command(saying, lambda: over_seeds(measured[0].done[0], seeds)), ""]
    best = _md(measured[0].describe())
    lines += [
        f"Each configuration against the best ({best}), in accuracy points, with the 95% interval"
        " of the difference (a t-interval: paired by seed where both ran the same seeds, Welch's otherwise). Resolved:"
        " the interval excludes 0. Not resolved: noise at this many seeds.",
        "",
    ]
    for config in measured[1:]:
        said = [_said(name, found) for name in COMPARED if (found := config.vs_best.get(name))]
        lines.append(f"- {_md(config.describe())}: " + "; ".join(said) + ".")
    return [*lines, ""]


def _said(name: str, found: Difference) -> str:
    text = f"{name} {found.delta:+.2f}"
    if found.low is None:
        return f"{text} (one seed on a side: no interval), not resolved"
    text += f" ({found.low:+.2f} to {found.high:+.2f})"
    if found.resolved:
        return f"{text}, resolved: {'worse' if found.delta < 0 else 'better'}"
    if found.seeds_needed:
        needed = f"about {found.seeds_needed} seeds per configuration would resolve a difference this size"
        return f"{text}, not resolved: {needed}"
    if found.delta == found.low == found.high:
        return f"{text}, not resolved: the same results on every seed"
    return f"{text}, not resolved: a difference this small needs more than {MOST_SEEDS} seeds per configuration"


def over_seeds(job: Job, seeds: list[str]) -> str:
    """The job's command as a multirun over `seeds`; a UserError when lenet would not run it (the seeds too are
    read from the run dirs)."""
    kept = [o for o in job.overrides if keys.overridden(o) != SEED]
    overrides = trusted([*kept, f"{SEED}={','.join(seeds)}"], job.path)
    return command_line(job.task, ["-m", *overrides])  # -m up front, as users type


def _jobs_table(jobs: list[Job]) -> list[str]:
    params = swept(jobs)
    lines = [_row(["job", "status", *map(_md, params), *COLUMNS]), "|" + "---|" * (2 + len(params) + len(COLUMNS))]
    for job in jobs:
        values = [_cell(job.metrics.get(name), spec) for name, spec in COLUMNS.items()]
        if job.attempts > 1:  # its wall_s and images/s are those of every attempt
            values[list(COLUMNS).index("epochs")] += f" in {job.attempts} attempts"
        settings = [_md(job.setting.get(key, "")) for key in params]
        lines.append(_row([_md(job.name), job.state, *settings, *values]))
    return lines


def _pooled_table(configs: list[Configuration]) -> list[str]:
    header = [*map(_md, configs[0].label), "n", "seeds", *POOLED]
    lines = [_row(header), "|" + "---|" * len(header)]
    for config in configs:
        pooled = [_mean_std(config, name) for name in POOLED]
        label = [_md(value) for value in config.label.values()]
        lines.append(_row([*label, str(len(config.done)), _md(" ".join(config.seeds)), *pooled]))
    return lines


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _mean_std(config: Configuration, name: str) -> str:
    mean, std = config.mean(name), config.std(name)
    if mean is None:
        return ""
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _counts(jobs: list[Job], planned: int | None = None) -> str:
    """`3 jobs: 2 done, 1 failed, 0 unfinished.`, how many are unreadable when any are, and, of a sweep stopped
    before every job started (`planned` jobs in all), how many are not started: `4 jobs: 1 done, 0 failed,
    1 unfinished, 2 not started.`"""
    counts = {status: sum(job.status == status for job in jobs) for status in ("done", "failed", "unfinished")}
    for status in (liveness.QUEUED, liveness.RUNNING, liveness.LOST, "unreadable"):  # said when there are any
        if count := sum(job.status == status for job in jobs):
            counts[status] = count
    if waiting := len(not_started(jobs, planned)):
        counts["not started"] = waiting
    total = len(jobs) + waiting
    return f"{_counted(total, 'job')}: {', '.join(f'{n} {status}' for status, n in counts.items())}."


def not_started(jobs: list[Job], planned: int | None) -> list[int]:
    """The numbers of a sweep's jobs that have no job dir yet (a sweep runs jobs 0 to `planned` - 1, each in the dir
    of its number)."""
    if not planned:
        return []
    started = {job.name for job in jobs}
    return [number for number in range(planned) if str(number) not in started][: max(planned - len(jobs), 0)]


def _spans(numbers: list[int]) -> str:
    """`2-3, 7`: runs of consecutive numbers."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][-1] + 1:
            spans[-1].append(number)
        else:
            spans.append([number])
    return ", ".join(f"{span[0]}-{span[-1]}" if len(span) > 1 else str(span[0]) for span in spans)


def _counted(number: int, noun: str) -> str:
    """`1 job`, `2 jobs`."""
    return f"{number} {noun}{'s' * (number != 1)}"


def _cell(value, spec: str) -> str:
    return "" if value is None else spec.format(value)


def plot(jobs: list[Job], configs: list[Configuration], path: Path) -> bool:
    """The metric per configuration against each key that tells them apart, with its seeds' standard deviation,
    and every job's validation curve, coloured by configuration; False when there is nothing to plot."""
    figure = report_figure(jobs, configs)
    if figure is None:
        return False
    with atomic.replacing(path, "wb") as file:
        figure.savefig(file, format="png", dpi=100)
    return True


def report_figure(jobs: list[Job], configs: list[Configuration]):
    """report.png's matplotlib Figure, or None when there is nothing to plot."""
    measured = [config for config in configs if config.mean(METRIC) is not None]
    keys = list(configs[0].label) or [""] * (len(jobs) > 1)  # "": seeds only, one configuration
    keys = keys if measured else []
    curves = {job.name: curve(job.path) for job in jobs}
    compared = [(c, d) for c in measured if (d := c.vs_best.get(METRIC)) and d.low is not None]
    panels = len(keys) + bool(compared) + any(curves.values())
    if not panels:
        return None
    figure = Figure(figsize=(4 * panels, 3.2), layout="constrained")
    axes = list(figure.subplots(1, panels, squeeze=False)[0])
    for key in keys:
        _metric_panel(axes.pop(0), key, measured)
    if compared:
        _differences_panel(axes.pop(0), compared)
    if any(curves.values()):
        _curves_panel(axes.pop(0), configs, curves)
    return figure


def _metric_panel(axes, key: str, configs: list[Configuration]) -> None:
    """Each configuration's mean, with one standard deviation either way; its seeds' own results as grey dots."""
    labels = [config.label[key] if key else config.describe() for config in configs]
    seeds = [(label, value) for label, config in zip(labels, configs, strict=True) for value in config.values(METRIC)]
    xs = _positions(axes, labels + [label for label, _ in seeds])
    stds = [_or(config.std(METRIC), 0.0) for config in configs]
    if any(len(config.done) > 1 for config in configs):
        axes.scatter(xs[len(configs) :], [value for _, value in seeds], s=10, color="0.6", zorder=1)
    means = [config.mean(METRIC) for config in configs]
    axes.errorbar(xs[: len(configs)], means, yerr=stds if any(stds) else None, fmt="o", capsize=4, zorder=2)
    axes.set_xlabel(_tex_free(key) or "configuration")
    axes.set_ylabel(METRIC)


def _differences_panel(axes, compared: list[tuple[Configuration, Difference]]) -> None:
    """Each configuration's difference from the best, with its 95% interval: an interval across 0 is noise."""
    for resolved, color in ((True, "C3"), (False, "0.5")):  # red: resolved; grey: noise
        rows = [(y, found) for y, (_, found) in enumerate(compared) if found.resolved == resolved]
        if rows:  # one call for each colour: a call per configuration costs seconds at a hundred of them
            ys, differences = zip(*rows, strict=True)
            error = [[d.delta - d.low for d in differences], [d.high - d.delta for d in differences]]
            axes.errorbar([d.delta for d in differences], ys, xerr=error, fmt="o", color=color, capsize=4)
    axes.axvline(0, color="0.3", linewidth=0.8)
    every = math.ceil(len(compared) / MOST_LABELS)  # more labels than this overlap into one black band
    labels = [_tex_free(_short(config.describe())) for config, _ in compared[::every]]
    axes.set_yticks(range(0, len(compared), every), labels, fontsize="small")
    axes.set_ylim(len(compared) - 0.5, -0.5)  # best first, as in the tables
    axes.set_xlabel(f"{METRIC} vs best (points, 95% CI)")


def _short(label: str, most: int = 32) -> str:
    """A label that leaves the panel room: its end, where folders and values differ."""
    return label if len(label) <= most else "…" + label[-(most - 1) :]


def _tex_free(label: str) -> str:
    """Text from the run dirs as a matplotlib label shows it as written: `$...$` would be read as TeX (and `$\\x$`
    fail to draw; an escaped dollar is drawn as a dollar), a control character has no glyph (shown escaped)."""
    return terminal(label).replace("$", r"\$")


def _positions(axes, values: list[str]) -> list[float]:
    """Where each value goes on the x axis: numbers as numbers (log scale across decades), else categories."""
    numbers = [_number(v) for v in values]
    if None in numbers:  # categories (optimizer=adam): one position each, in first-seen order
        categories = list(dict.fromkeys(values))
        axes.set_xticks(range(len(categories)), [_tex_free(_short(category, 24)) for category in categories])
        return [categories.index(v) for v in values]
    if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:  # learning rates, weight decays
        axes.set_xscale("log")
    return numbers


def _curves_panel(axes, configs: list[Configuration], curves: dict[str, list[tuple[int, float]]]) -> None:
    """Every job's curve, one line per configuration: its jobs' curves as pieces of it, parted by NaN (a line
    per job costs seconds at 1,000 jobs)."""
    for index, config in enumerate(configs):
        if pieces := [points for job in config.jobs if (points := curves[job.name])]:
            joined = [point for piece in pieces for point in [(math.nan, math.nan), *piece]][1:]  # NaN: a gap
            epochs, values = zip(*joined, strict=True)
            # A marker on every point: a one-epoch run's curve is a single point, which a line alone never draws.
            label = _tex_free(config.describe())  # one legend entry per configuration
            axes.plot(epochs, values, marker="o", markersize=3, color=f"C{index % 10}", alpha=0.7, label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(CURVE)
    if len(configs) <= 10:
        axes.legend(fontsize="small")


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def report(folders: list[Path], out: Path, by_folder: bool = False) -> list[Job]:
    """Write report.csv, report_by_config.csv, report.md and report.png into `out`; return the jobs (none: nothing
    written)."""
    title, jobs = read_runs(folders, by_folder)
    sweep = sweep_of(folders)
    jobs = best_first(liveness.with_states(jobs, sweep) if sweep else jobs)
    if jobs:
        configs = configurations(jobs)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows(jobs), out / "report.csv")
        write_csv(config_rows(configs), out / "report_by_config.csv")
        continued_by = (lambda: continue_command(sweep)) if sweep else None
        planned = planned_jobs(sweep) if sweep else None
        atomic.write_text(out / "report.md", markdown(title, jobs, configs, continued_by, planned))
        plot(jobs, configs, out / "report.png")
    return jobs


def sweep_of(folders: list[Path]) -> Path | None:
    """The sweep dir a report is of: one folder, holding a sweep's record."""
    return folders[0] if len(folders) == 1 and os.path.lexists(folders[0] / MULTIRUN) else None


def default_out(folders: list[Path]) -> Path:
    """The folder itself; for several, the folder that holds them all."""
    return folders[0] if len(folders) == 1 else Path(os.path.commonpath([f.absolute() for f in folders]))


def sweep_report(sweep_dir: Path) -> list[Job]:
    """The report of a multirun that has ended, said in the log; its jobs (none when it could not be written)."""
    try:
        jobs = report([sweep_dir], sweep_dir)
    except Exception as error:  # a broken report must not hide how the sweep itself went
        log.warning("no sweep report: %s: %s", type(error).__name__, error)
        return []
    if jobs:
        planned = planned_jobs(sweep_dir) if sweep_of([sweep_dir]) else None
        log.info("%s\nSweep report: %s", _counts(jobs, planned), sweep_dir / "report.md")
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lenet.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "folders",
        type=Path,
        nargs="+",
        metavar="folder",
        help="a sweep dir (outputs/multirun/<date>/<time>), a run dir, or a folder above runs (outputs/)",
    )
    parser.add_argument("--out", type=Path, help="where to write it (default: the folder; for several, their parent)")
    parser.add_argument(
        "--by-folder",
        action="store_true",
        help="tell runs apart by the folder given that holds them too (two code versions or machines, same config)",
    )
    args = parser.parse_args(argv)
    if missing := [folder for folder in args.folders if not folder.is_dir()]:
        sys.exit(f"error: no such folder: {missing[0]}")
    out = args.out or default_out(args.folders)
    try:
        jobs = report(args.folders, out, args.by_folder)
    except OSError as error:
        sys.exit(f"error: cannot write the report into {out} ({error.strerror}): pass --out FOLDER")
    if not jobs:
        folders = ", ".join(map(str, args.folders))
        holds = "holds" if len(args.folders) == 1 else "hold"
        sys.exit(f"error: {folders} {holds} no job dirs (<job>/.hydra/overrides.yaml): pass a sweep or run dir")
    print((out / "report.md").read_text(encoding="utf-8"), end="")  # as written: its text shown as itself
    print(terminal(f"Written: {', '.join(str(p) for p in sorted(out.glob('report*.*')))}"))


if __name__ == "__main__":
    main()
