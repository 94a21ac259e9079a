"""MNIST-family data: decode the IDX files once into uint8 tensors, batch and normalize from memory."""

import gzip
import math
import shutil
import tempfile
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


class DataError(UserError):
    """The data cannot be found, downloaded or read."""


def flat_files(root: Path) -> dict[str, tuple[Path, Path]] | None:
    """The IDX files of a plain folder (e.g. Debian's dataset-fashion-mnist), gzipped or not; None if incomplete."""
    found = {}
    for split, names in SPLIT_FILES.items():
        paths = [next((p for p in (root / n, root / f"{n}.gz") if p.is_file()), None) for n in names]
        if None in paths:
            return None
        found[split] = tuple(paths)
    return found


def read_idx(path: Path, reader) -> torch.Tensor:
    """Read one IDX file with torchvision's reader, which only takes uncompressed files."""
    if path.suffix != ".gz":
        return reader(str(path))
    with tempfile.TemporaryDirectory() as tmp, gzip.open(path) as src:
        plain = Path(tmp) / path.stem
        with open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return reader(str(plain))


class InMemoryLoader:
    """Batches by slicing tensors that hold the whole split: no per-sample work, no collate.

    With a generator it reshuffles every epoch; the images stay on whatever device they live on.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator=None):
        self.images, self.labels, self.batch_size, self.generator = images, labels, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n, size = len(self.labels), self.batch_size
        if self.generator is None:
            for start in range(0, n, size):
                yield self.images[start : start + size], self.labels[start : start + size]
            return
        order = torch.randperm(n, generator=self.generator).to(self.images.device)
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

    def prepare_data(self):
        if self.root.is_file():
            raise DataError(f"data.root={self.root} is a file; it must be a folder")
        if flat_files(self.root):
            return
        dataset = DATASETS[self.hparams.dataset]
        for train in (True, False):
            try:
                dataset(self.root, train=train, download=True)
            except (RuntimeError, OSError) as e:
                reason = str(e).strip().splitlines()[-1]  # torchvision ends with the last mirror's error
                files = ", ".join(f"{name}.gz" for names in SPLIT_FILES.values() for name in names)
                raise DataError(
                    f"could not download {dataset.__name__} into {self.root} ({reason}). "
                    f"Without network, put {files} in a folder and pass data.root=FOLDER"
                ) from None

    def setup(self, stage: str | None = None):
        if self.splits:
            return  # `setup` runs once per stage; the tensors are already in memory
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        train_x, train_y = self._load("train", device)
        val_size = self.hparams.val_size
        if not 0 <= val_size < len(train_y):
            raise DataError(f"data.val_size={val_size} must be between 0 (no validation) and {len(train_y) - 1}")
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val, train = order[:val_size].to(device), order[val_size:].to(device)
        self.splits = {
            "train": (train_x[train], train_y[train]),
            "val": (train_x[val], train_y[val]),
            "test": self._load("test", device),
        }

    def _load(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        files = flat_files(self.root)
        if files:
            images, labels = read_idx(files[split][0], read_image_file), read_idx(files[split][1], read_label_file)
        else:
            dataset = DATASETS[self.hparams.dataset](self.root, train=split == "train", download=False)
            images, labels = dataset.data, dataset.targets
        return images.unsqueeze(1).to(device), labels.to(device)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Normalize each batch where it lives: the splits stay uint8, a quarter of the memory of floats."""
        images, labels = batch
        mean, std = 255 * self.hparams.mean, 255 * self.hparams.std  # pixels are 0..255, not 0..1
        return images.float().sub_(mean).div_(std), labels

    def train_dataloader(self):
        return InMemoryLoader(*self.splits["train"], self.hparams.batch_size, generator=self.shuffle)

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
