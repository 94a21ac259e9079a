"""Training on a folder of one's own images (data=images): what it costs and what it is worth.

    python benchmarks/own_images.py --fashion /usr/share/datasets/fashion-mnist --mnist FOLDER --work DIR
        [--epochs 3] [--seeds 1 2] [--tune-epochs 10] [--tune-seeds 1 2 3 4 5]

1. Fashion-MNIST written out as PNG class folders (DIR/fashion_png/{train,test}/<class>/<index>.png), then the same
   recipe and seed trained on the IDX files (data=fashion_mnist) and on the folders (data=images data.layout=object):
   test accuracy, whole-process time of the IDX run, of the first folder run (prepares the images, writes the cache)
   and of a second one (reads the cache), the time from launch to its first training step, and the preparation time
   its log reports. The folder's classes are sorted by name, so the two runs' labels differ in order: compare
   accuracy only. A control tells the preparation's effect from the folder pipeline's: the prepared images written
   back as IDX files (original order and labels) and trained as data=fashion_mnist.
2. "Your own images": a few MNIST digits (--mnist: the four IDX files), 50 per class to train and 100 per class to
   test, as 40x40 PNG scans (dark ink on light paper, layout strokes), trained --tune-epochs from scratch and from
   the Fashion-MNIST IDX run's weights (init_from).

Prints a markdown table and writes it, with the numbers as JSON, to DIR/own_images.{md,json}.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from lenet.frame.mnist_family import DATASETS
from lenet.training.idx import read_idx, split_files, write_idx
from lenet.training.image_folder import listing
from lenet.training.prepared_images import prepared

PREPARED = re.compile(r"Prepared (\d+) images in ([\d.]+) s")
TRAINING = re.compile(r"^\[([\d-]+ [\d:]+,\d+)\]\S* - Training on ", re.MULTILINE)  # the log's time format
IDX_NAMES = {"train": "train", "test": "t10k"}
SCAN_SIDE = 40
PAPER, INK = 240, 20  # grey levels of a scan: light paper, dark ink
# A CPU run's numbers depend on its thread count (docs/faults-and-resume.md), which lenet picks from the machine's
# load: fixed, so that the same seed gives the same run, and the timings compare.
THREADS = ["threads=1"]
TUNE_RECIPE = ["data.batch_size=32"]  # 500 training images: 128 a batch would be 4 steps an epoch


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = split_files(folder)[split]
    return read_idx(images, "images").numpy(), read_idx(labels, "labels").numpy()


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def write_folders(out: Path, splits: dict, classes: list[str], as_scan: bool = False) -> None:
    """{split: (images, labels)} as out/<split>/<class>/<index>.png; kept when a finished copy is there."""
    done = out / ".written"
    if done.exists():
        return
    shutil.rmtree(out, ignore_errors=True)
    for split, (images, labels) in splits.items():
        for name in classes:
            (out / split / safe_name(name)).mkdir(parents=True)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            picture = Image.fromarray(image)
            if as_scan:  # light-on-black digit -> dark ink on paper, larger, as a scanner gives it
                picture = Image.fromarray((PAPER - image.astype(np.float32) * (PAPER - INK) / 255).astype(np.uint8))
                picture = picture.resize((SCAN_SIDE, SCAN_SIDE), Image.Resampling.BICUBIC)
            picture.save(out / split / safe_name(classes[label]) / f"{index}.png")
    done.touch()


def first_per_class(images: np.ndarray, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.concatenate([np.flatnonzero(labels == label)[:count] for label in np.unique(labels)])
    return images[chosen], labels[chosen]


def train(run_dir: Path, overrides: list[str]) -> dict:
    """One `python -m lenet.train` process: its test accuracy, wall time and reported preparation time."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "lenet.train", *overrides, *THREADS, f"hydra.run.dir={run_dir}"]
    launched, start = time.time(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "console.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        print(f"FAILED ({done.returncode}): {' '.join(command)}\n{(done.stdout + done.stderr)[-3000:]}")
        return {"overrides": overrides, "failed": done.returncode, "wall_s": round(wall, 1)}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    prepared, training = PREPARED.search(done.stdout + done.stderr), TRAINING.search(done.stdout + done.stderr)
    row = {"overrides": overrides, "test_acc": metrics["test/acc"], "wall_s": round(wall, 1)}
    if training:  # everything before the first step: start-up, reading or preparing the data
        started = datetime.strptime(training[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        row["to_training_s"] = round(started - launched, 1)
    if prepared:
        row["prepared"], row["prepare_s"] = int(prepared[1]), float(prepared[2])
    print(f"  {run_dir.name}: test/acc {row['test_acc']:.4f}, {row['wall_s']} s", flush=True)
    return row


def fashion_runs(args, png: Path) -> dict:
    recipe = [f"trainer.max_epochs={args.epochs}"]
    idx = ["data=fashion_mnist", f"data.root={args.fashion}", *recipe]
    folder = ["data=images", f"data.root={png}", "data.layout=object", *recipe]
    shutil.rmtree(png / ".lenet-cache", ignore_errors=True)  # the first folder run prepares
    runs = {}
    for seed in args.seeds:
        runs[f"idx seed {seed}"] = train(args.work / "runs" / f"idx-{seed}", [*idx, f"seed={seed}"])
        runs[f"folder seed {seed}"] = train(args.work / "runs" / f"folder-{seed}", [*folder, f"seed={seed}"])
    first = args.seeds[0]  # the same run again: it reads the cache, and should give the same accuracy
    again = args.work / "runs" / f"folder-{first}-cached"
    runs[f"folder seed {first}, cached"] = train(again, [*folder, f"seed={first}"])
    return runs


def write_prepared_as_idx(png: Path, fashion: dict, out: Path) -> None:
    """The folder run's prepared images (read from its cache) as IDX files, each in its original place."""
    files = listing(png)
    images, _ = prepared(files, "object")
    out.mkdir(parents=True, exist_ok=True)
    for split, (originals, labels) in fashion.items():
        ours = np.zeros_like(originals)
        for image, path, in_split in zip(images, files.files, files.splits, strict=True):
            if in_split == split:
                ours[int(path.stem)] = image
        write_idx(out / f"{IDX_NAMES[split]}-images-idx3-ubyte", ours)
        write_idx(out / f"{IDX_NAMES[split]}-labels-idx1-ubyte", labels)


def control_runs(args, prepared_idx: Path) -> dict:
    idx = ["data=fashion_mnist", f"data.root={prepared_idx}", f"trainer.max_epochs={args.epochs}"]
    return {
        f"prepared as IDX seed {seed}": train(args.work / "runs" / f"prepared-idx-{seed}", [*idx, f"seed={seed}"])
        for seed in args.seeds
    }


def tune_runs(args, digits: Path, init_from: Path) -> dict:
    recipe = ["data=images", f"data.root={digits}", "data.layout=strokes", f"trainer.max_epochs={args.tune_epochs}"]
    runs = {}
    for seed in args.tune_seeds:
        overrides = [*recipe, *TUNE_RECIPE, f"seed={seed}"]
        runs[f"digits scratch seed {seed}"] = train(args.work / "runs" / f"scratch-{seed}", overrides)
        runs[f"digits init_from seed {seed}"] = train(
            args.work / "runs" / f"init-{seed}", [*overrides, f"init_from={init_from}"]
        )
    return runs


def table(runs: dict) -> str:
    lines = [
        "| run | test acc | process s | launch to training s | prepared | prepare s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in runs.items():
        acc = f"{row['test_acc']:.4f}" if "test_acc" in row else f"FAILED ({row['failed']})"
        cells = [row["wall_s"], row.get("to_training_s", ""), row.get("prepared", ""), row.get("prepare_s", "")]
        lines.append(f"| {name} | {acc} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", type=Path, required=True, help="Fashion-MNIST's four IDX files (.gz or not)")
    parser.add_argument("--mnist", type=Path, required=True, help="MNIST's four IDX files: the 'own' digits")
    parser.add_argument("--work", type=Path, required=True, help="where the folders and runs go")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tune-epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="of the Fashion-MNIST runs")
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="of the digits runs")
    args = parser.parse_args()
    args.work = args.work.resolve()

    start = time.perf_counter()
    png = args.work / "fashion_png"
    fashion = {split: read_split(args.fashion, split) for split in ("train", "test")}
    write_folders(png, fashion, list(DATASETS["fashion_mnist"].classes))
    digits = args.work / "digits_png"
    mnist = {split: read_split(args.mnist, split) for split in ("train", "test")}
    mnist = {"train": first_per_class(*mnist["train"], 50), "test": first_per_class(*mnist["test"], 100)}
    write_folders(digits, mnist, list(DATASETS["mnist"].classes), as_scan=True)
    print(f"PNG folders written in {time.perf_counter() - start:.0f} s", flush=True)

    runs = fashion_runs(args, png)
    write_prepared_as_idx(png, fashion, args.work / "prepared_idx")
    runs |= control_runs(args, args.work / "prepared_idx")
    runs |= tune_runs(args, digits, init_from=args.work / "runs" / f"idx-{args.seeds[0]}")
    text = table(runs)
    print(text)
    (args.work / "own_images.md").write_text(text + "\n")
    (args.work / "own_images.json").write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
