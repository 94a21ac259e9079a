"""Classify your own images: `python -m lenet.predict ckpt_path=MODEL inputs=IMAGE|FOLDER|'PATTERN'`.

MODEL is a checkpoint of lenet.train or a file of lenet.export (.onnx, .pt2). Each image is prepared the way the
model's dataset was made (`lenet.classifier.prepare`), then classified in batches. Writes a CSV (path, prediction,
confidence, the top-k classes with their probabilities, error) batch by batch, so that Ctrl-C, a kill or a crash keeps
the rows so far; with `preview=true`, also a grid of images as the model saw them. An image that cannot be read, or an
entry named like an image that is not a file (a folder, a FIFO, a broken symlink), gets an error in its row; the
others are still classified, and the exit status is 1.
"""

import contextlib
import csv
import errno
import functools
import glob
import heapq
import io
import logging
import math
import os
import signal
import stat
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm import tqdm

from lenet import CONFIG_DIR
from lenet.classifier import IMAGE_SUFFIXES, Classifier, ImageError, load, open_image, resize  # numpy, Pillow only
from lenet.console import UserError, report_user_errors

log = logging.getLogger(__name__)

TABLE_ROWS = 20  # printed; the CSV has them all
PREVIEW_MAX = 100
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): the six OWASP lists.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
NOT_FILES = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}

Reader = Callable[[BinaryIO], np.ndarray]  # an open image file -> the 28x28 image the model sees


class InputError(UserError):
    """Nothing to classify (a missing path, an empty folder, a pattern that matches nothing), or nowhere to write."""


class UnreadableImages(UserError):
    """Some images could not be classified; their rows say why."""


class Interrupted(UserError):
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
    # The paths first: a mistyped one fails at once, not after the seconds that importing torch takes.
    paths = None if OmegaConf.is_missing(cfg, "inputs") else image_paths(cfg.inputs)
    from lenet.checkpoint import checkpoint_file  # imports torch: here, so that --help stays instant
    from lenet.config import validate

    validate(cfg)  # a missing `inputs` among the required values, top_k, batch_size, device
    classifier = load(checkpoint_file(cfg.ckpt_path, Path(cfg.outputs_dir)), device=cfg.device)
    if cfg.top_k > len(classifier.classes):
        raise InputError(f"top_k={cfg.top_k} is more than the model's {len(classifier.classes)} classes")
    log.info("%s (%s): %s", classifier.source, classifier.dataset, plural(len(paths), "image"))
    read = image_reader(classifier, cfg.prepare, max_pixels=round(cfg.max_megapixels * 1e6))
    batches = classified_batches(classifier, paths, cfg.batch_size, cfg.top_k, read)
    output = Path(cfg.output)
    picks = PreviewPicks(cfg.preview_order) if cfg.preview else None
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
    """Each batch's rows go into the CSV as soon as they are classified. Ctrl-C and SIGTERM end with `Interrupted`."""
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
            interrupted = Interrupted(
                f"interrupted by {'Ctrl-C' if ctrl_c else 'SIGTERM'}: {table.rows} of {plural(total, 'row')} "
                f"written to {output.resolve()}"
            )
            interrupted.exit_status = 130 if ctrl_c else 143
            raise interrupted from None
    return predictions


def classified_batches(
    classifier: Classifier, paths: list[Path], batch_size: int, top_k: int, read: Reader
) -> Iterator[Batch]:
    """`paths`, read and classified batch by batch."""
    with tqdm(total=len(paths), unit="img", disable=len(paths) <= batch_size or None) as bar:
        for start in range(0, len(paths), batch_size):
            batch = [read_one(path, read) for path in paths[start : start + batch_size]]
            readable = [(prediction, image) for prediction, image in batch if image is not None]
            if readable:
                rows = classifier.probabilities(np.stack([image for _, image in readable]))
                for (prediction, _), row in zip(readable, rows, strict=True):
                    best = row.argsort()[::-1][:top_k]
                    prediction.top = [(classifier.classes[i], float(row[i])) for i in best]
            bar.update(len(batch))
            yield batch


def classify(classifier: Classifier, paths: list[Path], batch_size: int, top_k: int) -> list[Prediction]:
    """All predictions at once, nothing written (benchmarks/predict.py times this)."""
    read = image_reader(classifier, prepare=True)
    return [p for batch in classified_batches(classifier, paths, batch_size, top_k, read) for p, _ in batch]


def image_reader(classifier: Classifier, prepare: bool, max_pixels: int | None = None) -> Reader:
    """An open file -> the 28x28 image; one of more than `max_pixels` pixels is refused from its header."""
    if prepare:
        return functools.partial(classifier.prepare, max_pixels=max_pixels)
    return lambda file: resize(open_image(file, max_pixels))  # resize has no limit of its own: opened (checked) first


def read_one(path: Path, read: Reader) -> tuple[Prediction, np.ndarray | None]:
    prediction = Prediction(path_text(path))
    try:
        return prediction, read_image(path, read)
    except ImageError as error:
        prediction.error = " ".join(str(error).split())  # one line, in the CSV and on the console
        return prediction, None


def read_image(path: Path, read: Reader) -> np.ndarray:
    """The image at `path` as the model sees it; an ImageError when it is not a regular file or cannot be read."""
    try:
        if kind := not_a_file(path):
            raise ImageError(kind)  # never opened: reading a FIFO waits forever, a device (/dev/zero) never ends
        with open_file(path) as file:
            return read(file)
    except ImageError:
        raise
    except Exception as error:  # a case prepare() does not foresee ends this image only, not the 5,000 others
        raise ImageError(f"cannot read it ({type(error).__name__}: {error})") from error


def not_a_file(path: Path) -> str | None:
    """What `path` is, in a few words, when it is not a regular file (a symlink to one is fine); None when it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"a broken symlink (to {path_text(os.readlink(path))})" if os.path.islink(path) else "no such file"
    except OSError as error:
        return "a symlink loop" if error.errno == errno.ELOOP else f"cannot read it ({error.strerror})"
    return None if stat.S_ISREG(mode) else f"{NOT_FILES.get(stat.S_IFMT(mode), 'something else')}, not a file"


@contextlib.contextmanager
def open_file(path: Path) -> Iterator[BinaryIO]:
    """Opened without blocking and checked again: the path may have turned into a FIFO or a device since its check."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # no O_NONBLOCK on Windows
    except OSError as error:
        raise ImageError(f"cannot open it ({error.strerror})") from None
    with open(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ImageError("not a regular file")
        yield file


def path_text(path: str | Path) -> str:
    """A path as text that prints and writes anywhere: bytes that are not UTF-8 and characters that do not print
    (a newline, a terminal escape in a file name) as backslash escapes, so that no name breaks a row or a terminal."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def image_paths(inputs) -> list[Path]:
    """The entries `inputs` names: an image, a folder's images (by extension), a glob pattern, or a list of these.

    An entry named like an image that is not a regular file (a folder x.png, a FIFO, a broken symlink) is kept: its
    row says what it is.
    """
    if isinstance(inputs, ListConfig | list):
        return [path for item in inputs for path in image_paths(item)]
    text = str(inputs)
    if glob.has_magic(text):
        matches = glob_matches(text)
        if not matches:
            raise InputError(f"inputs='{text}' matches no file")
        return matches
    path = Path(text).expanduser()
    if path.is_dir():
        return folder_images(path, text)
    if os.path.lexists(path):  # a file, or something else its row names (a FIFO, a broken symlink)
        return [path]
    raise InputError(f"inputs={text}: no such file or folder")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def folder_images(folder: Path, text: str) -> list[Path]:
    try:
        images = sorted(path for path in folder.iterdir() if is_image_name(path))
    except OSError as error:
        raise InputError(f"inputs={text}: cannot list the folder ({error.strerror})") from None
    if not images:
        raise InputError(f"inputs={text}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def glob_matches(pattern: str) -> list[Path]:
    """The files `pattern` matches, and the entries named like images that are not files; sorted, each once.

    Once: an entry reached through two linked folders is one entry (its folder's real path and its name), and the
    first path found is kept. Two names of one file (link.png -> a.png) stay two rows, as in a folder's listing.
    """
    firsts, real_folder = {}, functools.cache(os.path.realpath)
    for path in map(Path, sorted(expand_glob(pattern))):
        if is_image_name(path) or not_a_file(path) is None:
            firsts.setdefault((real_folder(path.parent), path.name), path)
    return list(firsts.values())


def expand_glob(pattern: str) -> list[str]:
    """`glob.glob(pattern, recursive=True)`, except that each `**` enters each folder once.

    Python 3.11's `**` follows symlinked folders, loops included: a link back up matches every file ~40 times (until
    the path grows too long), two such links never end. Not following symlinks at all (bash, pathlib in 3.13) would
    lose the folders people link in from another disk. So `**` follows them but enters a folder (device, inode) once.
    """
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    at = parts.index("**")
    if at == 0:  # `**/*.png`: from here, and the paths stay relative as glob's are
        here = os.curdir + os.sep
        return [match.removeprefix(here) for match in expand_glob(here + pattern)]
    top, rest = os.sep.join(parts[:at]) or os.sep, os.sep.join(parts[at + 1 :]) or "*"
    return [
        match
        for start in glob.glob(top)
        for folder in folders_below(start)
        for match in expand_glob(os.path.join(glob.escape(folder), rest))
    ]


def folders_below(top: str) -> Iterator[str]:
    """`top` and the folders under it, symlinked ones included, each entered once; hidden ones left out, as in glob."""
    entered = set()
    for folder, subfolders, _ in os.walk(top, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:  # gone since its parent was listed
            info = None
        if info is None or (info.st_dev, info.st_ino) in entered:  # or a link back to a folder already walked
            subfolders.clear()
            continue
        entered.add((info.st_dev, info.st_ino))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        yield folder


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
        top = [value for name, probability in p.top for value in (as_text(name), f"{probability:.4f}")]
        return [as_text(p.path), *(top[:2] or ["", ""]), *(top or [""] * 2 * self.top_k), as_text(p.error)]

    def _write(self, rows: list[list[str]]) -> None:
        text = io.StringIO()  # one write of whole rows: the file's own buffer would flush at any byte, mid-row
        csv.writer(text).writerows(rows)
        self.file.write(text.getvalue())
        self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def as_text(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that starts like a formula gets a leading single quote (OWASP)."""
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = picks.picks()
    if not shown:
        return
    columns = min(10, len(shown))
    rows = math.ceil(len(shown) / columns)
    size = (1.3 * columns, 1.6 * rows + 0.4)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, layout="constrained")  # room for suptitle
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
    plt.close(figure)
    log.info("Preview (%s): %s", picks.title(), path.resolve())


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
