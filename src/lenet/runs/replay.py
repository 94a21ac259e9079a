"""Rerun a finished run and say whether its metrics came out identical: `python -m lenet.reproduce RUN_DIR`.

The answer to "same seed, different results". A run dir (a run's, or a sweep's job dir) says what the run was given
and what it ran on; the rerun is `python -m lenet.train` with its overrides in a process of its own, the run a user
would start by typing them, in a new run dir: `outputs/reproduce/<date>/<time>` (as lenet.eval's go to
`outputs/eval/`), or `--out`. Overrides after RUN_DIR (`data.root=/moved/data`) replace the run's, for what
legitimately moved. What decides bitwise equality but the overrides may not say is pinned:

- `threads`, from env.json: on a CPU the metrics are identical only with the same thread count, and an automatic
  choice depends on the load of the moment;
- `seed`, from the saved config: a seed left at its default would change when the default does;
- `data.root`, the folder the run read (metrics.json): the override may be relative to the run's working directory,
  or absent and resolved from LENET_DATA.

Left out: the keys lenet.frame.keys declares `not_rerun`, with why: `ckpt_path`, so a resumed run is rerun from its
start (a resume that kept its thread count ends exactly as the uninterrupted run would; the checkpoint may be gone),
and `run_dir`, which would write into the run's folder; and a search's own settings.

Then every value of metrics.json is compared but the timings; then the environment (env.json: git commit,
uncommitted changes, versions, device, threads) and the recipes of the two saved configs (the rerun takes today's
defaults), said in both cases; when the metrics differ, the differences found are named as the likely cause.

Exit status as `cmp` and `diff` give it, so a script can tell a difference from a refusal: 0 identical, 1 different,
2 nothing compared (not a finished lenet.train run, or the rerun failed), each refusal in one line. The run's own
folder is only read.

A run dir is data from whoever made it, never code. The rerun takes from it only overrides lenet would run
(lenet.frame.safe_read.distrust): keys lenet declares, with values their rules accept, and options that conf/ holds;
a folder whose overrides (or pinned values) hold anything else (a `_target_`, an interpolation, a `+`/`~` override,
a setting of Hydra's) is refused in one line naming it, before anything runs. What it prints from the folder's files
is shown as text (no terminal sequences).
"""

import argparse
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from lenet.frame import keys
from lenet.frame.errors import UserError
from lenet.frame.hydra_job import command_line
from lenet.frame.quoting import terminal
from lenet.frame.safe_read import mapping, read_json, trusted
from lenet.runs import rundir
from lenet.runs.jobs import CONFIG, OVERRIDES, Job, read_job
from lenet.runs.multirun import MULTIRUN

IDENTICAL, DIFFERENT, NOT_COMPARED = 0, 1, 2
TIMINGS = ("wall_s", "train_images_per_s")  # differ from run to run: never compared (nor rundir.ATTEMPTS: a rerun
# is one attempt, whatever the original's)
SEARCH = "a search's own setting: the rerun is this job alone"
NOT_ENVIRONMENT = ("command", "threads_chosen")  # env.json keys that say how, not what it ran on
CAUSES = {  # an environment difference, as a likely cause of different metrics
    "threads": "the thread count (on a CPU, sums split between threads round differently, and training carries it)",
    "versions.torch": "torch's version (its kernels change between releases)",
    "device": "the device (another CPU or GPU computes with other kernels)",
    "git_commit": "lenet's code (another commit)",
    "git_dirty": "lenet's code (uncommitted changes)",
    "python": "Python's version",
    "platform": "the platform (kernel, C library)",
}
UNRECORDED = (
    "nothing recorded differs; what is not recorded: the training images (metrics.json hashes the test labels), "
    "uncommitted code, and on a GPU nondeterministic kernels (trainer.deterministic=true)"
)


def finished_run(folder: Path) -> Job:
    """The run in `folder`; a UserError saying why when it is not a finished lenet.train run."""
    if not folder.is_dir():
        raise UserError(f"no such folder: {folder}")
    if (folder / MULTIRUN).is_file():
        jobs = rundir.job_dirs(folder)
        named = f" ({', '.join(str(d) for d in jobs[:3])}{', ...' * (len(jobs) > 3)})" if jobs else ""
        raise UserError(f"{folder} is a sweep dir: pass one of its job dirs{named}")
    if not all((folder / ".hydra" / name).is_file() for name in ("overrides.yaml", "hydra.yaml")):
        raise UserError(f"{folder} is not a lenet run dir (no .hydra/overrides.yaml): pass outputs/<date>/<time>")
    job = read_job(folder)
    if job.damaged:  # nothing to rerun from, whichever way it is damaged
        raise UserError(f"cannot read the run in {folder}: {job.error}")
    if job.task != "train":
        raise UserError(f"{folder} is not a lenet.train run (Hydra job {job.task!r}): only training runs are rerun")
    if job.status == "failed":
        raise UserError(f"{folder} did not finish, it failed: {job.error.removeprefix('error: ')}")
    if job.status == "unfinished":
        resume = " (interrupted: resume it first, ckpt_path=<it>)" if rundir.last_checkpoint(folder).is_file() else ""
        raise UserError(f"{folder} did not finish: no {rundir.METRICS}{resume}")
    return job


def environment(folder: Path) -> dict:
    """env.json as dotted keys (`versions.torch`); empty for a run from before lenet wrote it."""
    path = folder / rundir.ENVIRONMENT
    if not os.path.lexists(path):
        return {}
    try:
        return keys.flatten(mapping(read_json(path, rundir.ENVIRONMENT), rundir.ENVIRONMENT))
    except UserError as error:
        raise UserError(f"cannot read the run in {folder}: {error}") from None


def rerun_overrides(job: Job, env: dict, given: list[str]) -> tuple[list[str], list[str]]:
    """The rerun's overrides (the run's, those pinned, those `given`), and lines that say what was done to them.
    A UserError when what comes from the run's files is not what lenet runs (lenet.frame.safe_read.trusted)."""
    mine = {keys.overridden(override) for override in given}
    pins = {  # key: (value, where it comes from, the file that says it)
        "threads": (env.get("threads"), f"env.json: {env.get('threads_chosen')}", rundir.ENVIRONMENT),
        "seed": (job.config.get("seed"), "the saved config", CONFIG),
        "data.root": (job.metrics.get("data", {}).get("root"), f"what it read, {rundir.METRICS}", rundir.METRICS),
    }
    pinned = {key: value for key, (value, *_) in pins.items() if value is not None and key not in mine}
    for key, value in pinned.items():
        trusted([f"{key}={value}"], job.path / pins[key][2])
    said = ", ".join(f"{key}={value} ({pins[key][1]})" for key, value in pinned.items())
    notes = [f"pinned as the run had them: {said}"] if pinned else []
    kept = []
    for override in job.overrides:
        key = keys.overridden(override)
        if key in {*mine, *pinned}:
            continue
        if why := left_out(key):
            notes.append(f"left out: {override} ({why})")
        else:
            kept.append(override)
    if given:
        notes.append(f"given by you, replacing the run's: {' '.join(given)}")
    trusted(kept, job.path / OVERRIDES)
    return [*kept, *(f"{key}={value}" for key, value in pinned.items()), *given], notes


def left_out(key: str) -> str:
    """Why the rerun leaves out the run's override of `key` (lenet.frame.keys: its `not_rerun` role, or a search's
    own setting), or "": the rerun repeats it."""
    role = keys.role(key)
    return role.not_rerun or (SEARCH if role.search else "")


def check_data(overrides: list[str]) -> None:
    """The data the rerun is to read is there: otherwise lenet.train would try to download it into that path."""
    root = next((o.split("=", 1)[1] for o in reversed(overrides) if keys.overridden(o) == "data.root"), None)
    if root and not Path(root).expanduser().exists():
        raise UserError(f"no data at data.root={root} here: pass data.root=FOLDER after the run dir")


def rerun(overrides: list[str]) -> int:
    """lenet.train in a process of its own, its output the user's; its exit status."""
    with subprocess.Popen([sys.executable, "-m", "lenet.train", *overrides]) as child:
        try:
            return child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the rerun too: let it stop as it does (last.ckpt, its line)
            return child.wait()


def metric_differences(original: dict, rerun: dict) -> list[tuple[str, str, str, str]]:
    """(metric, original, rerun, difference) of each metric that differs; the timings and the data's path left out."""
    before, after = keys.flatten(original), keys.flatten(rerun)
    names = [name for name in {**before, **after} if name not in {*TIMINGS, rundir.ATTEMPTS, "data.root"}]
    return [_row(name, before.get(name), after.get(name)) for name in names if before.get(name) != after.get(name)]


def _row(name: str, old, new) -> tuple[str, str, str, str]:
    if isinstance(old, list) and isinstance(new, list):  # the confusion matrix: how many of its counts changed
        pairs = list(zip(_cells(old), _cells(new), strict=False))
        return name, "", "", f"{sum(a != b for a, b in pairs)} of {len(pairs)} counts"
    number = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
    difference = f"{new - old:+.3g}" if number else ""
    return name, _text(old), _text(new), difference


def _cells(matrix) -> list:
    return [cell for row in matrix for cell in _cells(row)] if isinstance(matrix, list) else [matrix]


def _text(value) -> str:
    return "-" if value is None else repr(value) if isinstance(value, float) else str(value)


def environment_differences(original: dict, rerun: dict) -> list[tuple[str, str, str]]:
    names = [name for name in {**original, **rerun} if name not in NOT_ENVIRONMENT]
    return [(n, _text(original.get(n)), _text(rerun.get(n))) for n in names if original.get(n) != rerun.get(n)]


def config_differences(original: Job, rerun: Job, given: list[str]) -> list[tuple[str, str, str]]:
    """The recipe keys whose saved values differ, but those given and the pinned data path."""
    skip = {"data.root", *(keys.overridden(override) for override in given)}
    before, after = original.recipe, rerun.recipe
    names = [name for name in {**before, **after} if not any(name == s or name.startswith(f"{s}.") for s in skip)]
    return [(n, before.get(n, "-"), after.get(n, "-")) for n in names if before.get(n) != after.get(n)]


def likely_causes(metrics: list, env: list, config: list) -> list[str]:
    """What, of the differences found, explains different metrics, most likely first."""
    causes = []
    if config:
        causes.append(f"the config: {', '.join(name for name, *_ in config)} (lenet's defaults changed since the run)")
    if any(name.startswith("data.") for name, *_ in metrics):
        causes.append("the data (another version of the data set)")
    for name, *_ in env:
        cause = CAUSES.get(name) or (f"{name.split('.', 1)[1]}'s version" if name.startswith("versions.") else name)
        if cause not in causes:
            causes.append(cause)
    return causes


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])  # fmt: skip


def compare(original: Job, again: Job, given: list[str]) -> int:
    """Say what differs between the run and its rerun; the exit status."""
    metrics = metric_differences(original.metrics, again.metrics)
    before = environment(original.path)
    env = environment_differences(before, environment(again.path))
    config = config_differences(original, again, given)
    compared = len(set(keys.flatten(original.metrics)) - {*TIMINGS, rundir.ATTEMPTS, "data.root"})
    if metrics:
        say(f"Metrics: {len(metrics)} of {compared} {_differ(metrics)}")
        say(table(metrics, ("metric", "original", "rerun", "difference")))
    else:
        values = f"{compared} value{'s' * (compared != 1)} of {rundir.METRICS}"
        say(f"Metrics: identical ({values}, all but the timings {', '.join(TIMINGS)})")
    if env:
        say(f"Environment: {len(env)} difference{'s' * (len(env) > 1)}")
        say(table(env, ("env.json", "original", "rerun")))
    elif before.get("git_dirty"):
        say("Environment: the same (but uncommitted changes both times, which env.json does not record)")
    else:
        say("Environment: the same")
    if config:
        say(f"Config: {len(config)} recipe value{'s' * (len(config) > 1)} {_differ(config)}")
        say(table(config, (".hydra/config.yaml", "original", "rerun")))
    else:
        say("Config: the same recipe")
    if metrics:
        causes = likely_causes(metrics, env, config) or [UNRECORDED]
        say(f"Likely cause: {'; '.join(causes)}")
    return DIFFERENT if metrics else IDENTICAL


def say(*lines: str) -> None:
    """Lines that hold text from the run's files (values, paths), their terminal sequences shown, not run."""
    print(*map(terminal, lines), sep="\n")


def _differ(rows: list) -> str:
    return "differs" if len(rows) == 1 else "differ"


def reproduce(folder: Path, given: list[str], out: Path | None) -> int:
    original = finished_run(folder)
    overrides, notes = rerun_overrides(original, environment(folder), given)
    check_data(overrides)
    out = out or Path("outputs", "reproduce", *datetime.now().strftime("%Y-%m-%d %H-%M-%S.%f").split())
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files: pass a new folder as --out")
    overrides.append(f"hydra.run.dir={out}")
    say(f"Rerunning {folder} in {out}:", f"  {command_line('train', overrides)}", *(f"  {n}" for n in notes))
    sys.stdout.flush()  # before the rerun's own output
    status = rerun(overrides)
    if status < 0 or status >= 128:  # interrupted (Ctrl-C: 130) or killed: the user knows why
        print(f"error: the rerun did not finish; its run dir: {out}", file=sys.stderr)
        return status if status > 0 else 128 - status
    if status or not rundir.finished(out):
        raise UserError("the rerun failed" + (f", as its log in {out} says" if out.is_dir() else ""))
    return compare(original, read_job(out), given)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lenet.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run: outputs/<date>/<time>, or a sweep's job dir")
    parser.add_argument("overrides", nargs="*", help="what changed on purpose, replacing the run's: data.root=FOLDER")
    parser.add_argument("--out", type=Path, help="the rerun's run dir (default: outputs/reproduce/<date>/<time>)")
    args = parser.parse_intermixed_args(argv)  # --out before or after the overrides
    try:
        status = reproduce(args.run_dir, args.overrides, args.out)
    except UserError as error:
        print(f"error: {terminal(str(error))}", file=sys.stderr)
        status = NOT_COMPARED
    sys.exit(status)


if __name__ == "__main__":
    main()
