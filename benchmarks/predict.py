"""What lenet.predict's preparation is worth, and how fast predict runs, on images made as users' photos are.

    python benchmarks/predict.py --ckpt outputs/<run>/checkpoints/best.ckpt [--data-root FOLDER] [--n 1000]
    python benchmarks/predict.py --make-digits FOLDER    # an MNIST-format set of real handwritten digits

From the checkpoint's test images (its own data root, or --data-root) it makes "photos": each image drawn 3-8
times larger, off-centre on a larger page, as dark ink on tinted paper with uneven light and noise, RGB, JPEG
quality 70-92; in three lights: even (brighter at one end), a shadow across half the page, a flash's fall-off.
It reports the accuracy on the 28x28 originals, on the photos with a plain resize to 28x28, and on the photos
prepared (lenet.images.preparation.prepare) with each dataset's layout. Then it exports the checkpoint to
ONNX and .pt2 (the parity figures) and times `python -m lenet.predict` on a folder of --n PNG photos with the
checkpoint and with the ONNX file: whole process, and images/s once started on one CPU. Then what preparing on
every CPU (lenet.images.pool, from a thousand images) buys: the checkpoint's whole process on every CPU against one
(pinned with sched_setaffinity, as `taskset -c 0` would: it then prepares in one process), in pairs.

--make-digits writes scikit-learn's 1,797 handwritten digits (UCI, 8x8, 16 grey levels; needs `pip install
scikit-learn`) as MNIST's four IDX files (1,300 to train, 497 to test), made by MNIST's published recipe: each
bitmap blown up, cropped to its ink, fitted to 20x20 keeping the aspect ratio, centred by centre of mass in
28x28. That recipe is written out here on purpose, apart from lenet.images.preparation: the set stands in for MNIST,
which cannot be downloaded here, and must not borrow the code it is used to check. Train on it with
`python -m lenet.train data.root=FOLDER data.val_size=200 data.batch_size=32 trainer.max_epochs=60 optimizer.lr=0.05`.
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lenet.frame.mnist_family import LAYOUTS
from lenet.images import preparation as lc
from lenet.inference.model_files import load
from lenet.inference.trained_model import Predictor
from lenet.training.checkpoints import Checkpoint
from lenet.training.datasets import idx_files
from lenet.training.idx import read_idx, write_idx

REPEATS = 3


def photo(image: np.ndarray, rng: np.random.Generator, light: str = "even") -> Image.Image:
    """A 28x28 light-on-dark image as a user's photo of it: larger, off-centre, dark ink on paper, RGB, JPEG.

    `light`: "even" (brighter at one end of the page), "shadow" (a shadow with a soft edge across half the page,
    the paper there at 30-55% of the light) or "flash" (bright in the middle, falling to 25-50% in the corners).
    """
    side = round(28 * rng.uniform(3, 8))
    ink_alpha = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    height, width = round(side * rng.uniform(1.3, 2.0)), round(side * rng.uniform(1.3, 2.0))
    alpha = np.zeros((height, width), np.float32)
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    alpha[top : top + side, left : left + side] = ink_alpha
    paper = rng.uniform(185, 245) + rng.uniform(-10, 10, 3)
    ink = rng.uniform(0, 70) + rng.uniform(-20, 20, 3)
    gradient = np.linspace(0, 1, height)[:, None, None] * rng.uniform(-25, 25)  # brighter at one end of the page
    rgb = paper + gradient + (ink - paper) * alpha[..., None]
    rgb = rgb * LIGHTS[light](height, width, rng)[..., None] + rng.normal(0, 3, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(70, 93)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def _shadow(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A straight shadow edge through the middle of the page at a random angle, soft over 2-6% of the page."""
    y, x = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    distance = (x - width / 2) * np.cos(angle) + (y - height / 2) * np.sin(angle) + rng.uniform(-0.1, 0.1) * width
    soft = rng.uniform(0.02, 0.06) * max(height, width)
    depth = rng.uniform(0.30, 0.55)
    return 1 - (1 - depth) / (1 + np.exp(-distance / soft))


def _flash(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A flash's fall-off: full light near a point close to the middle, 25-50% in the farthest corner."""
    y, x = np.mgrid[0:height, 0:width]
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    r = np.hypot(y - cy, x - cx) / np.hypot(max(cy, height - cy), max(cx, width - cx))
    return 1 - (1 - rng.uniform(0.25, 0.5)) * r**2


LIGHTS = {"even": lambda h, w, rng: np.ones((h, w)), "shadow": _shadow, "flash": _flash}


def test_split(root: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = idx_files(root, dataset)["test"]
    return read_idx(images, "images").numpy(), read_idx(labels, "labels").numpy()


def accuracy(model: Predictor, images: list[np.ndarray], labels: np.ndarray) -> float:
    return float((model.probabilities(np.stack(images)).argmax(axis=1) == labels).mean())


def run(command: list[str], one_cpu: bool = False) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, preexec_fn=_one_cpu if one_cpu else None)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return time.perf_counter() - start, result.stdout + result.stderr


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def measure(args) -> None:
    model = load(args.ckpt, device="cpu")
    root = Path(args.data_root or Checkpoint.open(Path(args.ckpt)).data_settings["root"])
    images, labels = test_split(root, model.dataset)
    images, labels = images[: args.n], labels[: args.n]
    rng = np.random.default_rng(0)
    photos = {light: [photo(image, rng, light) for image in images] for light in LIGHTS}
    print(f"{model.dataset} ({len(images)} test images of {root}), checkpoint {args.ckpt}")
    print(f"| input | {' | '.join(f'{light} light' for light in LIGHTS)} |\n|---|{'---|' * len(LIGHTS)}")
    print(f"| the 28x28 originals | {accuracy(model, list(images), labels):.2%} |")
    resized = [accuracy(model, [lc.resize(p) for p in kind], labels) for kind in photos.values()]
    print(f"| photos, plain resize to 28x28 | {' | '.join(f'{a:.2%}' for a in resized)} |")
    for name, layout in LAYOUTS.items():
        if name == "kmnist":
            continue  # laid out as MNIST
        cells = []
        for kind in photos.values():
            start = time.perf_counter()
            prepared = [lc.prepare(p, layout) for p in kind]
            per_image = (time.perf_counter() - start) / len(kind) * 1000
            cells.append(f"{accuracy(model, prepared, labels):.2%} ({per_image:.2f} ms/image)")
        mark = " (this model's)" if name == model.layout else ""
        print(f"| photos, prepared, {name} layout{mark} | {' | '.join(cells)} |")
    photos = photos["even"]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in ("onnx", "pt2"):
            run([sys.executable, "-m", "lenet.export", f"ckpt_path={args.ckpt}", f"output={tmp / f'model.{fmt}'}",
                 f"data.root={root}", f"hydra.run.dir={tmp / 'export'}"])  # fmt: skip
            parity = json.loads((tmp / f"model.{fmt}.json").read_text())["parity"]
            print(f"export {fmt}: {parity['inputs']}: max |logit difference| {parity['max_abs_diff']:.2g}, "
                  f"identical classes {parity['identical_class_share']:.2%}")  # fmt: skip
        folder = tmp / "photos"
        folder.mkdir()
        for index, picture in enumerate(photos):
            picture.save(folder / f"{index:04d}.png")
        sizes = [max(p.size) for p in photos]
        print(f"predict on {len(photos)} PNG photos ({min(sizes)}-{max(sizes)} px), median of {REPEATS}:")
        for name, path in [("checkpoint", args.ckpt), ("onnx", tmp / "model.onnx")]:
            command = [sys.executable, "-m", "lenet.predict", f"ckpt_path={path}", f"inputs={folder}",
                       f"hydra.run.dir={tmp / 'predict'}", *args.predict_args]  # fmt: skip
            wall = statistics.median(run(command)[0] for _ in range(REPEATS))
            in_process = _in_process_rate(path, folder)
            print(f"  {name}: whole process {wall:.1f} s ({len(photos) / wall:.0f} images/s); "
                  f"once started, one CPU {in_process:.0f} images/s")  # fmt: skip
            if name == "checkpoint":
                pairs = [(run(command)[0], run(command, one_cpu=True)[0]) for _ in range(REPEATS)]
                every, one = (statistics.median(walls) for walls in zip(*pairs, strict=True))
                print(f"  checkpoint on {len(os.sched_getaffinity(0))} CPUs against one: whole process {every:.1f} s "
                      f"against {one:.1f} s, {statistics.median(b / a for a, b in pairs):.2f}x (median of "
                      f"{REPEATS} pairs)")  # fmt: skip


def _in_process_rate(model_path, folder: Path) -> float:
    from lenet.inference.classify import classify

    model = load(model_path, device="cpu")
    paths = sorted(folder.iterdir())
    rates, cpus = [], os.sched_getaffinity(0)
    _one_cpu()  # a pool's workers would import this script, torch and all, each time: see the pairs for every CPU
    try:
        for _ in range(REPEATS):
            start = time.perf_counter()
            classify(model, paths, batch_size=256, top_k=3)
            rates.append(len(paths) / (time.perf_counter() - start))
    finally:
        os.sched_setaffinity(0, cpus)
    return statistics.median(rates)


def make_digits(folder: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([_mnist_recipe(image * (255 / 16)) for image in digits.images])
    labels = digits.target.astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    split = 1300
    for name, array in [
        ("train-images-idx3-ubyte", images[:split]),
        ("train-labels-idx1-ubyte", labels[:split]),
        ("t10k-images-idx3-ubyte", images[split:]),
        ("t10k-labels-idx1-ubyte", labels[split:]),
    ]:
        write_idx(folder / f"{name}.gz", array)
    print(f"{len(images)} digits in MNIST's format in {folder}")


def _mnist_recipe(bitmap: np.ndarray) -> np.ndarray:
    """LeCun et al.'s recipe, from an 8x8 count bitmap: the ink fitted to 20x20, centre of mass at (14, 14)."""
    big = np.asarray(Image.fromarray(bitmap.astype(np.float32)).resize((32, 32), Image.Resampling.BILINEAR))
    rows, cols = np.nonzero(big > 0)
    ink = big[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20 / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    ink = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BILINEAR))
    height, width = ink.shape
    centre_y = (ink.sum(axis=1) * np.arange(height)).sum() / ink.sum()
    centre_x = (ink.sum(axis=0) * np.arange(width)).sum() / ink.sum()
    top, left = int(np.clip(round(14 - centre_y), 0, 28 - height)), int(np.clip(round(14 - centre_x), 0, 28 - width))
    out = np.zeros((28, 28), np.float32)
    out[top : top + height, left : left + width] = ink
    return np.clip(out * 255 / out.max(), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="a checkpoint of lenet.train")
    parser.add_argument("--data-root", help="the folder of its IDX files (default: the checkpoint's data.root)")
    parser.add_argument("--n", type=int, default=1000, help="test images to use (default 1000)")
    parser.add_argument("--make-digits", type=Path, metavar="FOLDER", help="write the handwritten-digits set")
    parser.add_argument("predict_args", nargs="*", help="extra overrides for lenet.predict, e.g. batch_size=512")
    args = parser.parse_args()
    if args.make_digits:
        make_digits(args.make_digits)
    elif args.ckpt:
        measure(args)
    else:
        parser.error("give --ckpt or --make-digits")


if __name__ == "__main__":
    main()
