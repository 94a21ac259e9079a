"""A user's own labelled images (data=images): which files, their classes, and the splits the user put them in.

`data.root` is either a folder with one subfolder per class (`DIR/cat/...`, `DIR/dog/...`; the folder names are the
class names), optionally inside `train/`, `val/` and `test/`; or a CSV file of `path,label` rows, optionally with a
third column `split` (train, val or test), its paths relative to the CSV's folder. Files named like images (any
format lenet.predict reads) are taken, at any depth inside a class folder; other files (notes, .DS_Store) are left
out and counted; hidden files and folders are never looked at.
"""

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lenet.frame.errors import DataError
from lenet.frame.quoting import path_text
from lenet.images.preparation import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")
CSV_HEADERS = (["path", "label"], ["path", "label", "split"])
SHOWN = 3  # files named in a one-line refusal; the rest counted

log = logging.getLogger(__name__)


@dataclass
class Listing:
    """The labelled files of a data.root, in a fixed order (by split, class, path): the same files list the same."""

    root: Path
    files: list[Path]
    labels: list[int]  # indexes into classes
    splits: list[str | None]  # the split the user put each file in; None: split by data.split_seed
    classes: list[str]


def listing(root: Path, classes: list[str] | None = None) -> Listing:
    """The files of `root` (a folder or a CSV), labelled by `classes` when given (the model's, for lenet.eval: the
    data's class names must be among them), else by the data's own class names, sorted (numerically when all are
    numbers)."""
    if root.is_file():
        named = _from_csv(root)
    elif root.is_dir():
        named = _from_folders(root)
    else:
        raise DataError(f"data.root={path_text(root)} does not exist: pass a folder of class folders, or a CSV")
    found = sorted({label for _, label, _ in named}, key=_class_order)
    if classes is None:
        if len(found) < 2:
            raise DataError(
                f"{path_text(root)} holds one class ({path_text(found[0])}): a classifier needs two or more"
            )
        classes = found
    elif unknown := [name for name in found if name not in classes]:
        raise DataError(
            f"{path_text(root)} holds classes the model does not know ({path_text(', '.join(unknown[:12]))}); "
            f"its classes are {path_text(', '.join(classes[:12]))}: test it on images of those"
        )
    index = {name: i for i, name in enumerate(classes)}
    named.sort(key=lambda item: (SPLITS.index(item[2]) if item[2] else -1, index[item[1]], str(item[0])))
    return Listing(
        root, [path for path, _, _ in named], [index[label] for _, label, _ in named], [s for _, _, s in named], classes
    )


def _class_order(name: str):
    """Numbers in numeric order (2 before 10), then names in alphabetical order."""
    return (0, int(name), "") if name.isdecimal() else (1, 0, name)


def _refuse_loose_images(folder: Path) -> None:
    loose = [path for path in _visible(folder, dirs=False) if path.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(
            f"{path_text(folder)} holds images outside class folders ({_named(loose, folder)}): put each class's "
            f"images in a folder named after it ({path_text(folder / 'cat')}/..., {path_text(folder / 'dog')}/...), or "
            "pass a CSV"
        )


def _from_folders(root: Path) -> list[tuple[Path, str, str | None]]:
    folders = _visible(root, dirs=True)
    _refuse_loose_images(root)
    if not folders:
        raise DataError(
            f"{path_text(root)} holds no class folders: put each class's images in a folder named after it "
            f"({path_text(root / 'cat')}/..., {path_text(root / 'dog')}/...), or pass a CSV of path,label"
        )
    split_folders = [folder for folder in folders if folder.name in SPLITS]
    if not split_folders:
        return _classes_in(root, None)
    if len(split_folders) < len(folders) or "train" not in {folder.name for folder in split_folders}:
        others = [folder.name for folder in folders if folder.name not in SPLITS]
        raise DataError(
            f"{path_text(root)} mixes split folders ({', '.join(f.name for f in split_folders)}) with "
            f"{'other folders (' + ', '.join(others[:SHOWN]) + ')' if others else 'no train/'}: either train/ (and "
            "val/, test/) each holding the class folders, or only class folders"
        )
    named = [item for folder in split_folders for item in _classes_in(folder, folder.name)]
    trained = {label for _, label, split in named if split == "train"}
    if untrained := sorted({(label, split) for _, label, split in named if split != "train" and label not in trained}):
        label, split = untrained[0]
        raise DataError(
            f"{path_text(root)}: class {path_text(label)} is in {split}/ but not in train/: a model cannot learn a "
            "class it never sees; add its training images or remove it"
        )
    return named


def _classes_in(folder: Path, split: str | None) -> list[tuple[Path, str, str | None]]:
    if split:
        _refuse_loose_images(folder)
        if not _visible(folder, dirs=True):
            raise DataError(f"{path_text(folder)} holds no class folders: put its images in them, or remove it")
    named, other = [], 0
    for class_folder in _visible(folder, dirs=True):
        files = [path for path in _files_under(class_folder)]
        images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
        other += len(files) - len(images)
        if not images:
            raise DataError(
                f"{path_text(class_folder)} holds no images ({', '.join(IMAGE_SUFFIXES)}): add its images or remove "
                "the folder"
            )
        named += [(path, class_folder.name, split) for path in images]
    if other:
        log.info("%s: left out %d file(s) not named like images", folder, other)
    return named


def _visible(folder: Path, dirs: bool) -> list[Path]:
    """The folders (or the files: not FIFOs, devices, sockets) of `folder` that are not hidden, by name. os.scandir
    knows an entry's kind without a stat of its own: 70,000 files list in a fifth of the time of Path.iterdir."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith(".") and (e.is_dir() if dirs else e.is_file()))
    return [folder / name for name in names]


def _files_under(folder: Path) -> list[Path]:
    """Every file at any depth, hidden files and folders left out."""
    found, here = [], folder.resolve()
    for entry in _visible(folder, dirs=True):
        if not here.is_relative_to(entry.resolve()):  # a link to a folder above: a loop
            found += _files_under(entry)
    return found + _visible(folder, dirs=False)


def _from_csv(table: Path) -> list[tuple[Path, str, str | None]]:
    try:
        with open(table, newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's byte order mark
            rows = [
                (number, row) for number, row in enumerate(csv.reader(file), 1) if any(cell.strip() for cell in row)
            ]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path_text(table)} is not a CSV of path,label ({error})") from None
    if rows and [cell.strip().lower() for cell in rows[0][1]] in CSV_HEADERS:
        rows = rows[1:]
    named, missing = [], []
    for number, row in rows:
        cells = [cell.strip() for cell in row]
        if len(cells) not in (2, 3) or not all(cells[:2]) or (len(cells) == 3 and cells[2] not in SPLITS):
            raise DataError(
                f"{path_text(table)}, line {number}: {','.join(row)[:80]!r} is not path,label or path,label,split "
                f"(split: {', '.join(SPLITS)})"
            )
        path = (table.parent / cells[0]).resolve()
        if not path.is_file():
            missing.append(path)
        named.append((path, cells[1], cells[2] if len(cells) == 3 else None))
    if missing:
        raise DataError(f"{path_text(table)} names {len(missing)} file(s) that do not exist: {_named(missing, None)}")
    if not named:
        raise DataError(f"{path_text(table)} lists no images: one row per image, path,label")
    if any(split for _, _, split in named) and not all(split for _, _, split in named):
        raise DataError(f"{path_text(table)}: give every row a split (train, val, test), or none")
    if named[0][2] and "train" not in {split for _, _, split in named}:
        raise DataError(f"{path_text(table)} puts no image in the train split")
    return named


def _named(paths: list[Path], root: Path | None) -> str:
    shown = [path_text(path.relative_to(root) if root else path) for path in paths[:SHOWN]]
    return ", ".join(shown) + (f", ... ({len(paths)} in all)" if len(paths) > SHOWN else "")
