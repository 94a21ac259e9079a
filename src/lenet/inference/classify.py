"""A user's own images classified: what `python -m lenet.predict` runs.

Each image is prepared the way the model's dataset was made (`lenet.images.preparation.prepare`), on every core for
a thousand images or more (lenet.images.pool), then classified in batches, in the order of the inputs.
Writes a CSV (path, prediction, confidence, the top-k classes with their probabilities, error) batch by batch, so
that Ctrl-C, a kill or a crash keeps the rows so far; with `preview=true`, also a grid of images as the model saw
them. An image that cannot be read, or an entry named like an image that is not a file (a folder, a FIFO, a broken
symlink), gets an error in its row (lenet.inference.input_files); the others are still classified, and the exit status
is 1.
"""

import contextlib
import csv
import functools
import heapq
import io
import itertools
import logging
import math
import signal
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any process
from omegaconf import DictConfig
from tqdm import tqdm

from lenet.frame.errors import UserError
from lenet.frame.quoting import spreadsheet_cell
from lenet.images.pool import in_order
from lenet.inference.input_files import InputError, Reader, image_or_error, image_paths, path_text, resized
from lenet.inference.model_files import load
from lenet.inference.trained_model import Predictor
from lenet.runs.rundir import model_file

log = logging.getLogger(__name__)

TABLE_ROWS = 20  # printed; the CSV has them all
PREVIEW_MAX = 100


class UnreadableImages(UserError):
    """Some images could not be classified; their rows say why."""


class PredictInterrupted(UserError):
    """Ctrl-C or SIGTERM stopped predict; the CSV holds the rows written until then."""

    exit_status = 130  # 128 + the signal, as shells report it: 130 for SIGINT, 143 for SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised where predict is. A BaseException, as KeyboardInterrupt is, so no per-image handler takes it."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # the k most probable classes, most probable first
    error: str = ""


Batch = list[tuple[Prediction, np.ndarray | None]]  # each image's Prediction and what the model saw (None: unreadable)


def predict(cfg: DictConfig) -> list[Prediction]:
    """Classify every image of `cfg.inputs`; write the CSV (and the preview); return one Prediction per image."""
    paths = image_paths(cfg.inputs)  # first: a mistyped path fails at once, not after a model has loaded
    classifier = load(model_file(cfg.ckpt_path, Path(cfg.outputs_dir)), device=cfg.device)
    if cfg.top_k > len(classifier.classes):
        raise InputError(f"top_k={cfg.top_k} is more than the model's {len(classifier.classes)} classes")
    log.info("%s (%s): %s", classifier.source, classifier.dataset, plural(len(paths), "image"))
    read = image_reader(classifier, cfg.prepare, max_pixels=round(cfg.max_megapixels * 1e6))
    output = Path(cfg.output)
    picks = PreviewPicks(cfg.preview_order) if cfg.preview else None
    # closed when predict stops, Ctrl-C included: the pool's workers end then, not when the process does
    with contextlib.closing(classified_batches(classifier, paths, cfg.batch_size, cfg.top_k, read)) as batches:
        predictions = write_predictions(batches, output, cfg.top_k, len(paths), picks)

    print_table(predictions, output)
    if picks:
        write_preview(picks, output.with_name(f"{output.stem}_preview.png"))
    failed = [p for p in predictions if p.error]
    if failed:
        named = "; ".join(f"{p.path}: {p.error}" for p in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        raise UnreadableImages(
            f"{len(failed)} of {plural(len(predictions), 'image')} could not be read ({named}); see {output}"
        )
    return predictions


def write_predictions(
    batches: Iterator[Batch], output: Path, top_k: int, total: int, picks: "PreviewPicks | None" = None
) -> list[Prediction]:
    """Each batch's rows go into the CSV as soon as they are classified. Ctrl-C and SIGTERM end with
    `PredictInterrupted`."""
    predictions = []
    with PredictionsCsv(output, top_k) as table, sigterm_raises():
        try:
            for batch in batches:
                rows = [prediction for prediction, _ in batch]
                table.write(rows)
                predictions += rows
                if picks:
                    picks.offer(batch)
        except (KeyboardInterrupt, Terminated) as stop:
            ctrl_c = isinstance(stop, KeyboardInterrupt)
            interrupted = PredictInterrupted(
                f"interrupted by {'Ctrl-C' if ctrl_c else 'SIGTERM'}: {table.rows} of {plural(total, 'row')} "
                f"written to {output.resolve()}"
            )
            interrupted.exit_status = 130 if ctrl_c else 143
            raise interrupted from None
    return predictions


def classified_batches(
    classifier: Predictor, paths: list[Path], batch_size: int, top_k: int, read: Reader
) -> Iterator[Batch]:
    """`paths`, read and classified batch by batch; read on every core (lenet.images.pool) when there are many."""
    images = in_order(functools.partial(image_or_error, read=read), paths)
    with (
        tqdm(total=len(paths), unit="img", disable=len(paths) <= batch_size or None) as bar,
        contextlib.closing(images),
    ):
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = [(Prediction(path_text(path), error=error), image) for path, (image, error) in
                     zip(chunk, itertools.islice(images, len(chunk)), strict=True)]  # fmt: skip
            readable = [(prediction, image) for prediction, image in batch if image is not None]
            if readable:
                rows = classifier.probabilities(np.stack([image for _, image in readable]))
                for (prediction, _), row in zip(readable, rows, strict=True):
                    best = row.argsort()[::-1][:top_k]
                    prediction.top = [(classifier.classes[i], float(row[i])) for i in best]
            bar.update(len(batch))
            yield batch


def classify(classifier: Predictor, paths: list[Path], batch_size: int, top_k: int) -> list[Prediction]:
    """All predictions at once, nothing written (benchmarks/predict.py times this)."""
    read = image_reader(classifier, prepared=True)
    return [p for batch in classified_batches(classifier, paths, batch_size, top_k, read) for p, _ in batch]


def image_reader(classifier: Predictor, prepared: bool, max_pixels: int | None = None) -> Reader:
    """An open file -> the 28x28 image, as `classifier.prepare` makes it (or resized); one of more than `max_pixels`
    pixels is refused from its header. A partial of a module's function: the pool's workers run it, without the model.
    """
    if prepared:
        return classifier.preparer(max_pixels)
    return functools.partial(resized, max_pixels=max_pixels)


class PredictionsCsv:
    """The CSV, written as predict goes: the header at once, then each batch's rows in one write, flushed. A crash,
    Ctrl-C or kill keeps every row classified until then, each row whole."""

    def __init__(self, path: Path, top_k: int):
        self.top_k, self.rows = top_k, 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a class name the model file spells with a lone surrogate must not cost the run
            self.file = open(path, "w", newline="", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 (__exit__)
        except OSError as error:
            raise InputError(f"output={path}: cannot write it ({error.strerror})") from None
        columns = [f"{column}{i}" for i in range(1, top_k + 1) for column in ("top", "p")]
        self._write([["path", "prediction", "confidence", *columns, "error"]])

    def write(self, predictions: list[Prediction]) -> None:
        self._write([self._row(p) for p in predictions])
        self.rows += len(predictions)

    def _row(self, p: Prediction) -> list[str]:
        top = [value for name, probability in p.top for value in (spreadsheet_cell(name), f"{probability:.4f}")]
        cells = [*(top[:2] or ["", ""]), *(top or [""] * 2 * self.top_k)]
        return [spreadsheet_cell(p.path), *cells, spreadsheet_cell(p.error)]

    def _write(self, rows: list[list[str]]) -> None:
        text = io.StringIO()  # one write of whole rows: the file's own buffer would flush at any byte, mid-row
        csv.writer(text).writerows(rows)
        self.file.write(text.getvalue())
        self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises Terminated, as SIGINT raises KeyboardInterrupt: both then end with one line on what was written.

    Only the main thread may set a handler; predict() called from another keeps SIGTERM's default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)  # None: a handler set outside Python


def _raise_terminated(number, frame):
    raise Terminated


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
    print(f"{plural(len(predictions), 'image')}, {failed} unreadable. Predictions: {output.resolve()}")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


class PreviewPicks:
    """The rows a preview shows, picked as they stream by: the first PREVIEW_MAX (order=input), or the PREVIEW_MAX
    least confident (order=confidence), the unreadable first. Holds those images only, however many there are."""

    def __init__(self, order: str):
        self.order, self.total = order, 0
        self._kept = []  # input: (prediction, image); confidence: a heap of (negated rank, prediction, image)

    def offer(self, batch: Batch) -> None:
        for prediction, image in batch:
            self.total += 1
            if self.order == "input":
                if len(self._kept) < PREVIEW_MAX:
                    self._kept.append((prediction, image))
                continue
            confidence = prediction.top[0][1] if prediction.top else -1.0  # unreadable: below any confidence
            # Negated, the heap's top is the most confident (and latest) kept: the one to drop for a less confident.
            heapq.heappush(self._kept, ((-confidence, -self.total), prediction, image))
            if len(self._kept) > PREVIEW_MAX:
                heapq.heappop(self._kept)

    def picks(self) -> Batch:
        if self.order == "input":
            return self._kept
        return [(prediction, image) for _, prediction, image in sorted(self._kept, reverse=True)]  # ranks are unique

    def title(self) -> str:
        shown, images = len(self._kept), plural(self.total, "image")
        if self.order == "input":
            return f"first {shown} of {images}" if shown < self.total else images
        if shown < self.total:
            return f"{shown} least confident of {images}, unreadable first"
        return f"{images}, unreadable and least confident first"


def write_preview(picks: PreviewPicks, path: Path) -> None:
    """A grid of the 28x28 images the model saw, each titled with its prediction, confidence and file name; an
    unreadable one as its error."""
    shown = picks.picks()
    if not shown:
        return
    columns = min(10, len(shown))
    rows = math.ceil(len(shown) / columns)
    size = (1.3 * columns, 1.6 * rows + 0.4)
    figure = Figure(figsize=size, layout="constrained")  # constrained: room for the suptitle
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    plain = {"parse_math": False}  # a file name like a$^$.png is not TeX to render (and fail on)
    for axis, (prediction, image) in zip(axes.flat, shown, strict=False):
        name = Path(prediction.path).name[:16]
        if image is None:
            error = textwrap.fill(prediction.error, 20, max_lines=6, placeholder=" ...")
            axis.text(0.5, 0.5, error, fontsize=6, ha="center", va="center", transform=axis.transAxes, **plain)
            axis.set_title(f"unreadable\n{name}", fontsize=7, color="firebrick", **plain)
            continue
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        label, probability = prediction.top[0]
        axis.set_title(f"{label} {probability:.0%}\n{name}", fontsize=7, **plain)
    figure.suptitle(picks.title(), fontsize=9)
    figure.savefig(path, dpi=100)
    log.info("Preview (%s): %s", picks.title(), path.resolve())
