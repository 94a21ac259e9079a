"""How long `python -m lenet.report` takes over a big sweep: the whole process, at 100 and 1,000 jobs.

    python benchmarks/report.py [--jobs 100 1000] [--repeats 3] [--template SWEEP_DIR] [--keep DIR]

It runs a real sweep of two small jobs (`lenet.train -m seed=1,2`, three epochs on synthetic IDX data, about 30 s),
or takes --template's, then copies its first job dir into sweep dirs of N jobs each, as a sweep of
optimizer.lr x optimizer.weight_decay x 10 seeds would have made them: each copy's overrides.yaml, config.yaml and
hydra.yaml say its own values, its metrics.json its own accuracies, and the sweep's multirun.yaml says the overrides
that expand to N jobs. The files a report does not change (checkpoints, events, logs) are hard links: the same files
and bytes to read, without the disk. It times `python -m lenet.report SWEEP_DIR` at each N (the median of --repeats,
after one run that is not timed), with its peak RSS, and prints a table, the time per further job and the fixed
start (linear: a fixed start plus the same time for each job), and a line for the target: `met: ...` or `gap: ...`.

`measure()` returns the same as a dict, for benchmarks/bench.py.
"""

import argparse
import itertools
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from processes import timed_child

TARGET_JOBS, TARGET_S = 1000, 10.0  # a report over 1,000 jobs within 10 s, whole process
SEEDS = 10  # per configuration
SWEPT_SEEDS = f"range(1,{SEEDS + 1})"
LEARNING_RATES = [f"{0.005 * 2**i:g}" for i in range(10)]
WEIGHT_DECAYS = ["0", "1e-05", "3e-05", "0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03", "0.1"]
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
TIMEOUT_S = 600  # one report, on the busiest machine


WRITE_DATA = """
import sys
from pathlib import Path
import numpy as np
from lenet.training.idx import SPLIT_FILES, write_idx
data, rng = Path(sys.argv[1]), np.random.default_rng(0)
data.mkdir(parents=True, exist_ok=True)
for split, (images, labels) in SPLIT_FILES.items():
    n = 600 if split == "train" else 200
    write_idx(data / images, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(data / labels, rng.integers(0, 10, n, dtype=np.uint8))
"""


def tiny_sweep(folder: Path) -> Path:
    """A real sweep of two jobs on synthetic data, in `folder`/template."""
    data = folder / "data"
    # In a process of its own: this one stays small, for the peak RSS of each report it starts is at least its own
    # (Linux counts the parent's pages a child is forked with).
    subprocess.run([sys.executable, "-c", WRITE_DATA, str(data)], check=True)
    sweep = folder / "template"
    overrides = [f"data.root={data}", "data.val_size=100", "data.batch_size=32", "data.eval_batch_size=200",
                 "trainer.max_epochs=3", "callbacks.progress_bar.refresh_rate=0", "optimizer.lr=0.05",
                 "optimizer.weight_decay=0", "seed=1,2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    subprocess.run([sys.executable, "-m", "lenet.train", "-m", *overrides], check=True, capture_output=True,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    return sweep


def _yaml(path: Path):
    return yaml.load(path.read_text(encoding="utf-8"), Loader=LOADER)


def _write(path: Path, text: str) -> None:
    """Replace `path` (maybe a hard link into the template: never written through)."""
    path.unlink(missing_ok=True)
    path.write_text(text, encoding="utf-8")


def _dump(value) -> str:
    return yaml.dump(value, Dumper=DUMPER, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _set(overrides: list[str], values: dict[str, str]) -> list[str]:
    """`overrides` with each key of `values` set to its value (added at the end when missing)."""
    kept = [o for o in overrides if o.split("=", 1)[0] not in values]
    return kept + [f"{key}={value}" for key, value in values.items()]


def grid(jobs: int) -> tuple[list[str], list[str]]:
    """The learning rates and weight decays of a sweep of `jobs` jobs (SEEDS each)."""
    configs = jobs // SEEDS
    decays = next(n for n in range(min(math.isqrt(configs), len(WEIGHT_DECAYS)), 0, -1) if configs % n == 0)
    if configs // decays > len(LEARNING_RATES) or configs * SEEDS != jobs:
        raise SystemExit(f"error: {jobs} jobs is no sweep of up to 100 configurations x {SEEDS} seeds")
    return LEARNING_RATES[: configs // decays], WEIGHT_DECAYS[:decays]


def copy_sweep(template: Path, sweep: Path, jobs: int) -> Path:
    """A sweep dir of `jobs` jobs made from `template`'s job 0 (see the module's docstring)."""
    source = template / "0"
    rates, decays = grid(jobs)
    record = _yaml(template / "multirun.yaml")
    swept = {"optimizer.lr": ",".join(rates), "optimizer.weight_decay": ",".join(decays)}
    record["hydra"]["overrides"]["task"] = _set(record["hydra"]["overrides"]["task"], swept | {"seed": SWEPT_SEEDS})
    record["hydra"]["sweep"]["dir"] = str(sweep)
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(_dump(record), encoding="utf-8")
    config, hydra = _yaml(source / ".hydra/config.yaml"), _yaml(source / ".hydra/hydra.yaml")
    metrics = json.loads((source / "metrics.json").read_text(encoding="utf-8"))
    overrides = _yaml(source / ".hydra/overrides.yaml")
    for number, (rate, decay, seed) in enumerate(itertools.product(rates, decays, range(1, SEEDS + 1))):
        job = sweep / str(number)
        shutil.copytree(source, job, copy_function=os.link)
        values = {"optimizer.lr": rate, "optimizer.weight_decay": decay, "seed": str(seed)}
        config |= {"seed": seed}
        config["optimizer"] |= {"lr": float(rate), "weight_decay": float(decay)}
        hydra["hydra"]["overrides"]["task"] = _set(overrides, values)
        hydra["hydra"]["job"]["num"] = number
        _write(job / ".hydra/overrides.yaml", _dump(_set(overrides, values)))
        _write(job / ".hydra/config.yaml", _dump(config))
        _write(job / ".hydra/hydra.yaml", _dump(hydra))
        _write(job / "metrics.json", json.dumps(_results(metrics, rate, decay, seed), indent=2, sort_keys=True))
    return sweep


def _results(metrics: dict, rate: str, decay: str, seed: int) -> dict:
    """Accuracies a configuration's seeds spread around: better near lr 0.04 and small decays."""
    noise = random.Random(f"{rate} {decay} {seed}")
    quality = 0.97 - 0.01 * abs(math.log2(float(rate) / 0.04)) - 0.2 * float(decay)
    val = min(quality + noise.gauss(0, 0.003), 1.0)
    return metrics | {"val/acc": val, "val/acc_best": val, "test/acc": min(val + noise.gauss(0, 0.002), 1.0)}


def time_report(sweep: Path) -> tuple[float, float, float]:
    """Seconds, CPU seconds and peak RSS (MB, 10^6 bytes, as bench.py's) of `python -m lenet.report sweep` as a
    whole process."""
    log = sweep.parent / f"{sweep.name}.log"
    child = timed_child([sys.executable, "-m", "lenet.report", str(sweep)], log, TIMEOUT_S)
    if child["returncode"]:
        raise SystemExit(f"error: lenet.report {sweep} failed: {log.read_text()[-2000:]}")
    return child["wall_s"], child["cpu_s"], child["peak_rss_mb"]


def measure(jobs_counts=(100, 1000), repeats: int = 3, template: Path | None = None, keep: Path | None = None) -> dict:
    """{"sizes": {jobs: {"s", "ms_per_job", "peak_rss_mb", "runs"}}, "met": bool, "load": ...}: each size's median
    whole-process time of `repeats` (after one untimed run), over copies of `template` (a real tiny sweep made here
    when None), made in `keep` (kept) or a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="lenet-report-bench-") as scratch:
        folder = keep or Path(scratch)
        template = template or tiny_sweep(folder)
        sweeps = {n: copy_sweep(template, folder / f"sweep-{n}", n) for n in jobs_counts}
        load_before = os.getloadavg()
        times, cpu = {n: [] for n in jobs_counts}, {n: [] for n in jobs_counts}
        rss = dict.fromkeys(jobs_counts, 0.0)
        time_report(sweeps[jobs_counts[0]])  # not timed: bytecode compiled, files in the page cache
        for _ in range(repeats):  # the sizes in turn: a busy moment slows each alike
            for n in jobs_counts:
                seconds, cpu_seconds, peak = time_report(sweeps[n])
                times[n].append(seconds)
                cpu[n].append(cpu_seconds)
                rss[n] = max(rss[n], peak)
    sizes = {
        n: {"s": statistics.median(times[n]), "cpu_s": statistics.median(cpu[n]),
            "ms_per_job": 1000 * statistics.median(times[n]) / n, "peak_rss_mb": rss[n], "runs": times[n]}
        for n in jobs_counts
    }  # fmt: skip
    met = sizes[TARGET_JOBS]["s"] <= TARGET_S if TARGET_JOBS in sizes else None
    return {"sizes": sizes, "met": met, "load": [load_before, os.getloadavg()]}


def report_rows(result: dict) -> list[str]:
    """The table and the target's line, as printed."""
    lines = ["| jobs | median s | runs s | CPU s | ms/job | peak RSS MB |", "|---|---|---|---|---|---|"]
    for n, size in result["sizes"].items():
        runs = " ".join(f"{s:.2f}" for s in size["runs"])
        cells = [f"{n:,}", f"{size['s']:.2f}", runs, f"{size['cpu_s']:.2f}", f"{size['ms_per_job']:.1f}"]
        lines.append(f"| {' | '.join(cells)} | {size['peak_rss_mb']:.0f} |")
    if result["met"] is not None:
        seconds = result["sizes"][TARGET_JOBS]["s"]
        word = "met" if result["met"] else "gap"
        lines.append(f"{word}: report over {TARGET_JOBS:,} jobs <= {TARGET_S:g} s: {seconds:.2f} s")
    (small, first), (large, last) = next(iter(result["sizes"].items())), list(result["sizes"].items())[-1]
    if large > small:  # linear: a fixed start (imports) and the same time for each further job
        marginal = (last["s"] - first["s"]) / (large - small)
        fixed = first["s"] - small * marginal
        lines.append(f"per further job: {1000 * marginal:.1f} ms ({small:,} to {large:,} jobs); fixed: {fixed:.1f} s")
    before, after = result["load"]
    lines.append(f"load average before/after: {before[0]:.2f} / {after[0]:.2f}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, TARGET_JOBS], help="sweep sizes (jobs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--template", type=Path, help="a finished sweep dir to copy (default: a tiny one made here)")
    parser.add_argument("--keep", type=Path, help="make the sweeps here and keep them (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.keep and args.keep.exists():
        sys.exit(f"error: --keep {args.keep} exists: give a new folder")
    if args.template and not (args.template / "0" / "metrics.json").is_file():
        sys.exit(f"error: --template {args.template} holds no finished job 0 (0/metrics.json)")
    result = measure(tuple(args.jobs), args.repeats, args.template, args.keep)
    print("\n".join(report_rows(result)))
    return result


if __name__ == "__main__":
    main()
