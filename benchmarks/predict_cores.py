"""What preparing on every CPU buys `lenet.predict` (issue 23's goal: at least 1.7x on 2 cores from 1,000 files).

    python benchmarks/predict_cores.py --ckpt RUN_OR_CKPT --data-root FOLDER [--n 2000]

Writes --n "photos" of the data set's test images (benchmarks/predict.py's: larger, off-centre, dark ink on tinted
paper, JPEG-compressed, saved as PNG) and runs `python -m lenet.predict` on them in pairs: on every CPU, and pinned
to one (sched_setaffinity, as `taskset -c 0` would: it then prepares in one process). Each run's whole process, and
its prediction alone: from its start line ("<model> (<data set>): N images", logged once the model is loaded) to
its end. bench.py runs this too.
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from predict import photo, run, test_split
from processes import logged_at

GOAL = 1.7
PAIRS = 3
START = re.compile(r"^\[(?P<at>[\d-]+ [\d:]+,\d{3})\]\[lenet\.inference\.classify\]\[INFO\] - .*: [\d,]+ images?$")


def write_photos(data_root: Path, dataset: str, folder: Path, n: int) -> None:
    images, _ = test_split(data_root, dataset)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index, image in enumerate(images[:n]):
        photo(image, rng).save(folder / f"{index:05d}.png")


def timed_predict(command: list[str], one_cpu: bool) -> tuple[float, float]:
    """(whole process s, prediction s: from its start line to its end)."""
    started = time.time()
    wall, output = run(command, one_cpu=one_cpu)
    stamp = next(match["at"] for line in output.splitlines() if (match := START.match(line)))
    begun = logged_at(stamp) - started
    return wall, wall - begun


def measure(ckpt: Path, data_root: Path, dataset: str, n: int = 2000, pairs: int = PAIRS) -> dict:
    with tempfile.TemporaryDirectory(prefix="lenet-predict-") as tmp:
        folder = Path(tmp) / "photos"
        print(f"predict: {n} photos, on every CPU and on one, {pairs} pairs", flush=True)
        write_photos(data_root, dataset, folder, n)
        every, one = [], []
        for pair in range(pairs):
            for one_cpu, runs in ((False, every), (True, one)):
                run_dir = Path(tmp) / f"run-{pair}-{'one' if one_cpu else 'every'}"
                command = [sys.executable, "-m", "lenet.predict", f"ckpt_path={ckpt}", f"inputs={folder}",
                           f"hydra.run.dir={run_dir}"]  # fmt: skip
                runs.append(timed_predict(command, one_cpu))
    median = {name: [statistics.median(run[i] for run in runs) for i in (0, 1)] for name, runs in
              (("every", every), ("one", one))}  # fmt: skip
    return {"n": n, "cpus": len(os.sched_getaffinity(0)), "every": median["every"], "one": median["one"]}


def check_lines(result: dict) -> list[str]:
    (whole_every, every), (whole_one, one) = result["every"], result["one"]
    ratio = one / every
    return [
        f"{'met' if ratio >= GOAL else 'gap'}: lenet.predict on {result['cpus']} CPUs >= {GOAL}x one CPU over"
        f" {result['n']:,} files: {ratio:.2f}x once started ({result['n'] / every:,.0f} vs {result['n'] / one:,.0f}"
        f" images/s); whole process {whole_every:.1f} s vs {whole_one:.1f} s ({whole_one / whole_every:.2f}x)"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    print("\n".join(check_lines(measure(args.ckpt, args.data_root, args.dataset, args.n))))


if __name__ == "__main__":
    main()
