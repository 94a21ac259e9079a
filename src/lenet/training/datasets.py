"""The MNIST family's files: where a data set's IDX files are, its download into place (by its torchvision class),
and its published test set recognised by its contents. What each data set is: its record, lenet.frame.mnist_family."""

import http.client
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from torchvision import datasets

from lenet.frame.errors import DataError
from lenet.frame.mnist_family import DATASETS
from lenet.training.idx import ALL_FILES, idx_folders, split_files

# A data.root holding one published test set while data= names another is refused: the model would be named for the
# wrong data. Test sets are told apart by their class counts and mean grey level (DataSet.test_counts, test_grey).
MEAN_TOLERANCE = 0.03  # the three means lie 0.06 and more apart

log = logging.getLogger(__name__)


def torchvision_class(dataset: str) -> type[datasets.MNIST]:
    """The torchvision class that downloads `dataset` (FashionMNIST and KMNIST are MNIST's subclasses)."""
    return getattr(datasets, DATASETS[dataset].torchvision)


def raw_folder(root: Path, dataset: str) -> Path:
    """Where torchvision's layout keeps the IDX files: root/MNIST/raw."""
    return root / DATASETS[dataset].torchvision / "raw"


def idx_files(root: Path, dataset: str) -> dict[str, tuple[Path, Path]] | None:
    """The IDX files (gzipped or not) in root itself, else in torchvision's root/<Dataset>/raw; None: neither."""
    if root.is_file():
        raise DataError(f"data.root={root} is a file; it must be a folder")
    return split_files(root) or split_files(raw_folder(root, dataset))


def download_if_missing(root: Path, dataset: str) -> None:
    """Download the data set into `root` unless its files are there; parallel jobs and DDP ranks share one download:
    the first takes a lock file beside the files, the others wait for it, then find the files.

    A folder that holds the files is only read, never written (no lock either): a read-only shared folder works.
    """
    if idx_files(root, dataset):
        return
    created = not root.exists()  # only a download may create data.root, and only for good
    _writable(root, dataset)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / ".download.lock"
    try:
        with FileLock(lock):  # parallel jobs: one downloads, the others wait for it
            if not idx_files(root, dataset):  # unless another process downloaded it while this one waited
                _download(root, dataset, created)
    except DataError:
        # A failed download leaves the user's folder as it found it (and removes one it made).
        shutil.rmtree(root, ignore_errors=True) if created else lock.unlink(missing_ok=True)
        raise


def _writable(root: Path, dataset: str) -> None:
    """Refused in one line: a download into a folder this process cannot write (a read-only mount, another user's
    folder), or cannot create."""
    existing = next(folder for folder in (root, *root.parents) if folder.exists())
    if os.access(existing, os.W_OK):
        return
    files = ", ".join(f"{file}.gz" for file in ALL_FILES)
    name, raw = DATASETS[dataset].torchvision, raw_folder(root, dataset)
    missing = f"holds no {name} files (nor {raw}), and it" if existing == root else f"does not exist, and {existing}"
    raise DataError(
        f"data.root={root} {missing} is not writable (read-only), so nothing can be downloaded there. "
        f"Put {files} in a folder and pass data.root=FOLDER"
    )


def _download(root: Path, dataset: str, created: bool) -> None:
    """Download into a temporary folder inside root, then move it into place.

    An interrupted or failed download leaves nothing that a later run could take for good files.
    """
    name, raw = DATASETS[dataset].torchvision, raw_folder(root, dataset)
    log.info("Downloading %s into %s%s", name, raw.parent, " (data.root did not exist: created it)" * created)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        try:
            for train in (True, False):
                torchvision_class(dataset)(tmp, train=train, download=True)
        except (RuntimeError, OSError, http.client.HTTPException) as error:  # md5, network, cut off
            reason = str(error).strip().splitlines()[-1]  # torchvision ends with the last mirror's error
            files = ", ".join(f"{file}.gz" for file in ALL_FILES)
            raise DataError(
                f"could not download {name} into {root} ({reason}). {_where_looked(root, raw, created)}. "
                f"Without network, put {files} in a folder and pass data.root=FOLDER"
            ) from None
        shutil.rmtree(raw.parent, ignore_errors=True)  # an incomplete earlier copy
        os.replace(Path(tmp) / name, raw.parent)


def _where_looked(root: Path, raw: Path, created: bool) -> str:
    """Where the IDX files were looked for, what is there instead, and where such files are nearby."""
    if created:
        found = f"data.root={root} does not exist (the download made it, then removed it again)"
    else:
        entries = sorted(p.name + "/" * p.is_dir() for p in root.iterdir() if not p.name.startswith("."))
        found = f"{root} holds " + (", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "") or "nothing")
    near = idx_folders(root.parent if created else root)
    hint = f"; IDX files are in {', '.join(map(str, near[:3]))}: pass that as data.root" if near else ""
    return f"Looked for the IDX files in {root} and in {raw}: {found}{hint}"


def known_test_set(images: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Which published data set these test images and labels are (its record's test_counts, test_grey), or None."""
    counts = tuple(torch.bincount(labels).tolist())
    # From a histogram of the 256 levels, not a float copy (31 MB for 10,000 images): freeing that copy would raise
    # glibc's mmap threshold to its size, so the run's later blocks up to that size come from the heap, which keeps
    # tens of MB it cannot give back (issue 23).
    levels = torch.bincount(images.reshape(-1), minlength=256).double()
    mean = float(levels @ torch.arange(256, dtype=torch.float64) / levels.sum()) / 255 if len(images) else 0.0
    return next(
        (name for name, data in DATASETS.items()
         if counts == data.test_counts and abs(mean - data.test_grey) <= MEAN_TOLERANCE),
        None,
    )  # fmt: skip
