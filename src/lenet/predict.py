"""Classify your own images: `python -m lenet.predict ckpt_path=MODEL inputs=IMAGE|FOLDER|'PATTERN'`.

MODEL is a checkpoint of lenet.train or a file of lenet.export (.onnx, .pt2). Each image is prepared the way the
model's dataset was made (`lenet.classifier.prepare`), then classified in batches. Writes a CSV (path, prediction,
confidence, the top-k classes with their probabilities, error) and, with `preview=true`, a grid of the images as
the model saw them. An image that cannot be read gets an error in its row; the others are still classified, and
the exit status is 1.
"""

import csv
import glob
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from lenet import CONFIG_DIR
from lenet.classifier import IMAGE_SUFFIXES, Classifier, ImageError, load, resize  # numpy and Pillow only
from lenet.console import UserError, report_user_errors

log = logging.getLogger(__name__)

TABLE_ROWS = 20  # printed; the CSV has them all
PREVIEW_MAX = 100


class InputError(UserError):
    """Nothing to classify: a missing path, an empty folder, a pattern that matches nothing."""


class UnreadableImages(UserError):
    """Some images could not be classified; their rows say why."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # the k most probable classes, most probable first
    error: str = ""


def predict(cfg: DictConfig) -> list[Prediction]:
    """Classify every image of `cfg.inputs`; write the CSV (and the preview); return one Prediction per image."""
    # The paths first: a mistyped one fails at once, not after the seconds that importing torch takes.
    paths = None if OmegaConf.is_missing(cfg, "inputs") else image_paths(cfg.inputs)
    from lenet.checkpoint import checkpoint_file  # imports torch: here, so that --help stays instant
    from lenet.config import validate

    validate(cfg)  # a missing `inputs` among the required values, top_k, batch_size, device
    classifier = load(checkpoint_file(cfg.ckpt_path, Path(cfg.outputs_dir)), device=cfg.device)
    if cfg.top_k > len(classifier.classes):
        raise InputError(f"top_k={cfg.top_k} is more than the model's {len(classifier.classes)} classes")
    log.info("%s (%s): %d images", classifier.source, classifier.dataset, len(paths))
    predictions, seen = classify(classifier, paths, cfg.batch_size, cfg.top_k, cfg.prepare)

    output = Path(cfg.output)
    write_csv(predictions, output, cfg.top_k)
    print_table(predictions, output)
    if cfg.preview:
        write_preview(seen, output.with_name(f"{output.stem}_preview.png"))
    failed = [p for p in predictions if p.error]
    if failed:
        named = "; ".join(f"{p.path}: {p.error}" for p in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        raise UnreadableImages(f"{len(failed)} of {len(predictions)} images could not be read ({named}); see {output}")
    return predictions


def classify(classifier: Classifier, paths: list[Path], batch_size: int, top_k: int, prepare: bool = True):
    """Predictions for `paths`, batch by batch; and the first PREVIEW_MAX readable ones with their 28x28 image."""
    to_28x28 = classifier.prepare if prepare else resize
    predictions, seen = [], []
    with tqdm(total=len(paths), unit="img", disable=len(paths) <= batch_size or None) as bar:
        for start in range(0, len(paths), batch_size):
            batch, images = [Prediction(str(path)) for path in paths[start : start + batch_size]], []
            for prediction in batch:
                try:
                    images.append(to_28x28(Path(prediction.path)))
                except ImageError as error:
                    prediction.error = str(error)
            readable = [prediction for prediction in batch if not prediction.error]
            if readable:
                for prediction, row in zip(readable, classifier.probabilities(np.stack(images)), strict=True):
                    best = row.argsort()[::-1][:top_k]
                    prediction.top = [(classifier.classes[i], float(row[i])) for i in best]
                seen += list(zip(readable, images, strict=True))[: PREVIEW_MAX - len(seen)]
            predictions += batch
            bar.update(len(batch))
    return predictions, seen


def image_paths(inputs) -> list[Path]:
    """The files `inputs` names: an image, a folder's images (by extension), a glob pattern, or a list of these."""
    if isinstance(inputs, ListConfig | list):
        return [path for item in inputs for path in image_paths(item)]
    text = str(inputs)
    if glob.has_magic(text):
        matches = sorted(Path(match) for match in glob.glob(text, recursive=True) if Path(match).is_file())
        if not matches:
            raise InputError(f"inputs='{text}' matches no file")
        return matches
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"inputs={text}: no such file or folder")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise InputError(f"inputs={text}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def write_csv(predictions: list[Prediction], path: Path, top_k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "prediction", "confidence"]
            + [f"{c}{i}" for i in range(1, top_k + 1) for c in ("top", "p")]
            + ["error"]
        )
        for p in predictions:
            top = [value for name, probability in p.top for value in (name, f"{probability:.4f}")]
            first = [p.top[0][0], f"{p.top[0][1]:.4f}"] if p.top else ["", ""]
            writer.writerow([p.path, *first, *(top or [""] * 2 * top_k), p.error])


def print_table(predictions: list[Prediction], output: Path) -> None:
    shown = predictions[:TABLE_ROWS]
    width = min(max(len(p.path) for p in shown), 60)
    print(f"{'path':<{width}}  {'prediction':<12}  confidence")
    for p in shown:
        result = f"{p.top[0][0]:<12}  {p.top[0][1]:.3f}" if p.top else f"error: {p.error}"
        print(f"{p.path[-width:]:<{width}}  {result}")
    if len(predictions) > len(shown):
        print(f"... {len(predictions) - len(shown)} more")
    failed = sum(bool(p.error) for p in predictions)
    print(f"{len(predictions)} images, {failed} unreadable. Predictions: {output.resolve()}")


def write_preview(seen: list, path: Path) -> None:
    """A grid of the 28x28 images the model saw, each titled with its prediction, confidence and file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not seen:
        return
    columns = min(10, len(seen))
    rows = math.ceil(len(seen) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (prediction, image) in zip(axes.flat, seen, strict=False):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        name, probability = prediction.top[0]
        axis.set_title(f"{name} {probability:.0%}\n{Path(prediction.path).name[:16]}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    log.info("Preview: %s", path.resolve())


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
