"""MNIST-family data: decode the IDX files once into uint8 tensors, batch and normalize from memory."""

import gzip
import http.client
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import lightning as L
import torch
from torchvision import datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from lenet.console import UserError

DATASETS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}
# The four standard IDX files, as every MNIST-family dataset names them.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = [name for names in SPLIT_FILES.values() for name in names]
READERS = {"images": read_image_file, "labels": read_label_file}
IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}  # unsigned bytes; 3 dimensions for images, 1 for labels
FIX = "delete it and download again, or replace it with a good copy"


class DataError(UserError):
    """The data cannot be found, downloaded or read."""


def flat_files(root: Path) -> dict[str, tuple[Path, Path]] | None:
    """The IDX files of a plain folder (e.g. Debian's dataset-fashion-mnist), gzipped or not.

    None when the folder has none of them; an error naming the missing ones when it has only some.
    """
    found = {name: next((p for p in (root / name, root / f"{name}.gz") if p.is_file()), None) for name in ALL_FILES}
    missing = [name for name, path in found.items() if path is None]
    if len(missing) == len(ALL_FILES):
        return None
    if missing:
        raise DataError(f"data.root={root} lacks {', '.join(missing)} (or .gz): put all four IDX files there")
    return {split: (found[images], found[labels]) for split, (images, labels) in SPLIT_FILES.items()}


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """Check one IDX file, then read it with torchvision's reader (which takes only uncompressed files)."""
    if path.suffix != ".gz":
        check_idx(path, kind, shown=path)
        return READERS[kind](str(path))
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / path.stem
        try:
            with gzip.open(path) as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError, zlib.error) as error:  # gzip checks its own CRC and length
            raise DataError(f"{path}: damaged gzip file ({error}); {FIX}") from None
        check_idx(plain, kind, shown=path)
        return READERS[kind](str(plain))


def check_idx(path: Path, kind: str, shown: Path) -> None:
    """The magic number, shape and length torchvision's reader assumes but does not check."""
    with open(path, "rb") as f:
        header = f.read(4)
        magic = int.from_bytes(header, "big") if len(header) == 4 else None
        if magic != IDX_MAGIC[kind]:
            found = f"0x{magic:08x}" if magic is not None else "an empty file"
            raise DataError(f"{shown}: not an IDX {kind} file (found {found}, expected 0x{IDX_MAGIC[kind]:08x}); {FIX}")
        dims = struct.unpack(f">{magic & 0xFF}I", f.read(4 * (magic & 0xFF)))
    if kind == "images" and dims[1:] != (28, 28):
        raise DataError(f"{shown}: images are {dims[1]}x{dims[2]}, not 28x28; {FIX}")
    expected, size = 4 + 4 * len(dims) + math.prod(dims), path.stat().st_size
    if size != expected:
        raise DataError(f"{shown}: {size} bytes where its header ({dims[0]} {kind}) needs {expected}; {FIX}")


class InMemoryLoader:
    """Batches by slicing tensors that hold the whole split: no per-sample work, no collate.

    With a generator it reshuffles every epoch; the images stay on whatever device they live on. Under DDP
    (Lightning shards only DataLoaders), rank `rank` of `world_size` takes every world_size-th image of the
    epoch's order, which every rank draws alike from the same seed; the tail is trimmed so all ranks run the
    same number of steps, as DDP synchronizes every step.
    """

    def __init__(self, images, labels, batch_size: int, generator=None, rank: int = 0, world_size: int = 1):
        self.images, self.labels, self.batch_size, self.generator = images, labels, batch_size, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return math.ceil(len(self.labels) // self.world_size / self.batch_size)

    def __iter__(self):
        n, size = len(self.labels), self.batch_size
        if self.generator is None:
            for start in range(0, n, size):
                yield self.images[start : start + size], self.labels[start : start + size]
            return
        order = torch.randperm(n, generator=self.generator).to(self.images.device)
        order = order[self.rank : n - n % self.world_size : self.world_size]
        n = len(order)
        for start in range(0, n, size):
            index = order[start : start + size]
            yield self.images[index], self.labels[index]


class MNISTDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST from `root`.

    `root` is either torchvision's layout (`root/MNIST/raw/...`, downloaded there when missing) or a
    plain folder holding the four IDX files. Validation is `val_size` images carved from the official
    training set with a fixed `split_seed` (0: no validation, as in the seed script); the official test
    set is only ever used for testing.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        mean: float = 0.1307,
        std: float = 0.3081,
        split_seed: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise DataError(f"data.dataset={dataset!r} is not one of {sorted(DATASETS)}")
        self.save_hyperparameters(logger=False)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def root(self) -> Path:
        return Path(self.hparams.root).expanduser()

    @property
    def dataset_class(self):
        return DATASETS[self.hparams.dataset]

    def idx_files(self) -> dict[str, tuple[Path, Path]]:
        """The flat folder's files, else torchvision's extracted files under root/<Dataset>/raw."""
        if self.root.is_file():
            raise DataError(f"data.root={self.root} is a file; it must be a folder")
        flat = flat_files(self.root)
        if flat:
            return flat
        raw = self.root / self.dataset_class.__name__ / "raw"
        return {split: (raw / images, raw / labels) for split, (images, labels) in SPLIT_FILES.items()}

    def prepare_data(self):
        files = [path for pair in self.idx_files().values() for path in pair]
        if not all(path.is_file() for path in files):
            self._download()

    def _download(self):
        """Download into a temporary folder inside root, then move it into place.

        An interrupted or failed download leaves nothing that a later run could take for good files.
        """
        name = self.dataset_class.__name__
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".download-") as tmp:
            try:
                for train in (True, False):
                    self.dataset_class(tmp, train=train, download=True)
            except (RuntimeError, OSError, http.client.HTTPException) as error:  # md5, network, cut off
                reason = str(error).strip().splitlines()[-1]  # torchvision ends with the last mirror's error
                files = ", ".join(f"{file}.gz" for file in ALL_FILES)
                raise DataError(
                    f"could not download {name} into {self.root} ({reason}). "
                    f"Without network, put {files} in a folder and pass data.root=FOLDER"
                ) from None
            shutil.rmtree(self.root / name, ignore_errors=True)  # an incomplete earlier copy
            os.replace(Path(tmp) / name, self.root / name)

    def setup(self, stage: str | None = None):
        if self.splits:
            return  # `setup` runs once per stage; the tensors are already in memory
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        files = self.idx_files()
        train_x, train_y = self._load(*files["train"], device)
        val_size = self.hparams.val_size
        if not 0 <= val_size < len(train_y):
            raise DataError(f"data.val_size={val_size} must be between 0 (no validation) and {len(train_y) - 1}")
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val, train = order[:val_size].to(device), order[val_size:].to(device)
        self.splits = {
            "train": (train_x[train], train_y[train]),
            "val": (train_x[val], train_y[val]),
            "test": self._load(*files["test"], device),
        }

    def _load(self, images_path: Path, labels_path: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        for path in (images_path, labels_path):
            if not path.is_file():
                raise DataError(f"{path} is missing: run again with network to download it, or pass data.root=FOLDER")
        images, labels = read_idx(images_path, "images"), read_idx(labels_path, "labels")
        if len(images) != len(labels):
            raise DataError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels; {FIX}")
        return images.unsqueeze(1).to(device), labels.to(device)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Normalize each batch where it lives: the splits stay uint8, a quarter of the memory of floats."""
        images, labels = batch
        mean, std = 255 * self.hparams.mean, 255 * self.hparams.std  # pixels are 0..255, not 0..1
        return images.float().sub_(mean).div_(std), labels

    def train_dataloader(self):
        shard = dict(rank=self.trainer.global_rank, world_size=self.trainer.world_size) if self.trainer else {}
        return InMemoryLoader(*self.splits["train"], self.hparams.batch_size, generator=self.shuffle, **shard)

    def val_dataloader(self):
        if not self.hparams.val_size:
            return []  # Lightning skips validation
        return InMemoryLoader(*self.splits["val"], self.hparams.eval_batch_size)

    def test_dataloader(self):
        return InMemoryLoader(*self.splits["test"], self.hparams.eval_batch_size)

    def state_dict(self):
        # Saved in checkpoints so a resumed run shuffles as the uninterrupted run would have.
        return {"shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state):
        self.shuffle.set_state(state["shuffle"])
