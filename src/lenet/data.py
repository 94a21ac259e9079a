"""MNIST-family data: decode the IDX files once into uint8 tensors, batch and normalize from memory."""

import gzip
import hashlib
import http.client
import logging
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from filelock import FileLock
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
AUGMENT_SEED_OFFSET = 1_000_003  # the augmentation's generator starts from seed + this, apart from the shuffling's
# The published test sets, told apart by their labels' class counts and their images' mean grey level (0..1):
# MNIST's as published, Fashion-MNIST's measured on Debian's copy, KMNIST's near its training set's 0.1918.
# A data.root holding one of them while data= names another is refused: the model would be named for the wrong data.
KNOWN_TEST_SETS = {
    "mnist": ((980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009), 0.1325),
    "fashion_mnist": ((1000,) * 10, 0.2868),
    "kmnist": ((1000,) * 10, 0.19),
}
MEAN_TOLERANCE = 0.03  # the three means lie 0.06 and more apart

log = logging.getLogger(__name__)


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
        raise DataError(f"{root} lacks {', '.join(missing)} (or .gz): put all four IDX files there")
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
    ndim = IDX_MAGIC[kind] & 0xFF
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 or int.from_bytes(header[:4], "big") != IDX_MAGIC[kind]:
        found = f"0x{int.from_bytes(header[:4], 'big'):08x}" if len(header) >= 4 else f"a {len(header)}-byte file"
        raise DataError(f"{shown}: not an IDX {kind} file (found {found}, expected 0x{IDX_MAGIC[kind]:08x}); {FIX}")
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{shown}: its header is cut short ({len(header)} of {4 + 4 * ndim} bytes); {FIX}")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if kind == "images" and dims[1:] != (28, 28):
        raise DataError(f"{shown}: images are {dims[1]}x{dims[2]}, not 28x28; {FIX}")
    expected, size = 4 + 4 * ndim + math.prod(dims), path.stat().st_size
    if size != expected:
        raise DataError(f"{shown}: {size} bytes where its header ({dims[0]} {kind}) needs {expected}; {FIX}")


def idx_folders(top: Path, depth: int = 3) -> list[Path]:
    """`top` and the folders up to `depth` levels below it that hold a training-images IDX file."""
    files = (file for level in range(depth + 1) for file in top.glob("*/" * level + "train-images-idx3-ubyte*"))
    return sorted({file.parent for file in files if not any(part.startswith(".download-") for part in file.parts)})


def known_test_set(images: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Which published data set these test images and labels are (KNOWN_TEST_SETS), or None."""
    counts = tuple(torch.bincount(labels).tolist())
    mean = float(images.float().mean()) / 255 if len(images) else 0.0
    return next(
        (name for name, (known, known_mean) in KNOWN_TEST_SETS.items()
         if counts == known and abs(mean - known_mean) <= MEAN_TOLERANCE),
        None,
    )  # fmt: skip


class InMemoryLoader:
    """Batches by slicing tensors that hold the whole split: no per-sample work, no collate.

    With a generator it reshuffles every epoch; without one it keeps the split's order. The images stay on
    whatever device they live on. Under DDP (Lightning shards only DataLoaders) rank `rank` of `world_size` takes
    every world_size-th image. For training every rank draws the same order from the same seed and the tail is
    trimmed, so all ranks run the same number of steps (DDP synchronizes every step); for evaluation every image
    is kept, so metrics summed over the ranks count each image once. A last training batch of a single image
    joins the batch before it: batch norm cannot train on one image.
    """

    def __init__(self, images, labels, batch_size: int, generator=None, rank=0, world_size=1, train=False):
        self.images, self.labels, self.batch_size, self.generator = images, labels, batch_size, generator
        self.rank, self.world_size, self.train = rank, world_size, train

    def __len__(self) -> int:
        return len(self._bounds())

    def __iter__(self):
        share = self._share()
        if self.generator is None:  # the split's own order: every batch is a view, not a copy
            images, labels = self.images[share], self.labels[share]
            for start, end in self._bounds():
                yield images[start:end], labels[start:end]
            return
        order = torch.randperm(len(self.labels), generator=self.generator).to(self.images.device)[share]
        for start, end in self._bounds():
            index = order[start:end]  # index_select: 5x faster here than indexing with [index]
            yield self.images.index_select(0, index), self.labels.index_select(0, index)

    def _share(self) -> slice:
        """This rank's positions in the epoch's order."""
        n = len(self.labels)
        return slice(self.rank, n - n % self.world_size if self.train else n, self.world_size)

    def _bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each batch in this rank's share."""
        size = len(range(len(self.labels))[self._share()])
        starts = list(range(0, size, self.batch_size))
        if self.train and len(starts) > 1 and size - starts[-1] == 1:
            starts.pop()
        return list(zip(starts, [*starts[1:], size], strict=True))


class MNISTDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST from `root`.

    `root` is either torchvision's layout (`root/MNIST/raw/...`, downloaded there when missing) or a plain folder
    holding the four IDX files. Validation is carved from the official training set with a fixed `split_seed`:
    `val_size` is a share of it (0 <= f < 1; 0: no validation, as in the seed script) or a count of images. The
    official test set is only ever used for testing. Labels must lie in 0..num_classes-1.
    """

    def __init__(  # no defaults: conf/data/ holds them
        self,
        *,
        dataset: str,
        root: str,
        batch_size: int,
        eval_batch_size: int,
        val_size: float,
        mean: float,
        std: float,
        split_seed: int,
        seed: int,
        num_classes: int,
        augment: bool,
        augment_degrees: float,
        augment_shift: float,
        augment_scale: float,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.augmenter: torch.Generator | None = None  # made in setup, on the run's device, when augment is on
        self.loaded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the files' train and test sets
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # train, val, test: on the run's device

    @property
    def root(self) -> Path:
        return Path(self.hparams.root).expanduser()

    @property
    def dataset_class(self):
        return DATASETS[self.hparams.dataset]

    @property
    def raw(self) -> Path:
        """Where torchvision's layout keeps the IDX files."""
        return self.root / self.dataset_class.__name__ / "raw"

    def idx_files(self) -> dict[str, tuple[Path, Path]] | None:
        """The IDX files (gzipped or not) in root itself, else in torchvision's root/<Dataset>/raw; None: neither."""
        if self.root.is_file():
            raise DataError(f"data.root={self.root} is a file; it must be a folder")
        return flat_files(self.root) or flat_files(self.raw)

    def prepare_data(self):
        if self.idx_files():
            return
        created = not self.root.exists()  # only a download may create data.root, and only for good
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / ".download.lock"
        try:
            with FileLock(lock):  # parallel jobs: one downloads, the others wait for it
                if not self.idx_files():  # unless another process downloaded it while this one waited
                    self._download(created)
        except DataError:
            # A failed download leaves the user's folder as it found it (and removes one it made).
            shutil.rmtree(self.root, ignore_errors=True) if created else lock.unlink(missing_ok=True)
            raise

    def _download(self, created: bool):
        """Download into a temporary folder inside root, then move it into place.

        An interrupted or failed download leaves nothing that a later run could take for good files.
        """
        name = self.dataset_class.__name__
        log.info("Downloading %s into %s%s", name, self.raw.parent, " (data.root did not exist: created it)" * created)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".download-") as tmp:
            try:
                for train in (True, False):
                    self.dataset_class(tmp, train=train, download=True)
            except (RuntimeError, OSError, http.client.HTTPException) as error:  # md5, network, cut off
                reason = str(error).strip().splitlines()[-1]  # torchvision ends with the last mirror's error
                files = ", ".join(f"{file}.gz" for file in ALL_FILES)
                raise DataError(
                    f"could not download {name} into {self.root} ({reason}). {self._where_looked(created)}. "
                    f"Without network, put {files} in a folder and pass data.root=FOLDER"
                ) from None
            shutil.rmtree(self.raw.parent, ignore_errors=True)  # an incomplete earlier copy
            os.replace(Path(tmp) / name, self.raw.parent)

    def _where_looked(self, created: bool) -> str:
        """Where the IDX files were looked for, what is there instead, and where such files are nearby."""
        if created:
            found = f"data.root={self.root} does not exist (the download made it, then removed it again)"
        else:
            entries = sorted(p.name + "/" * p.is_dir() for p in self.root.iterdir() if not p.name.startswith("."))
            found = f"{self.root} holds " + (
                ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "") or "nothing"
            )
        near = idx_folders(self.root.parent if created else self.root)
        hint = f"; IDX files are in {', '.join(map(str, near[:3]))}: pass that as data.root" if near else ""
        return f"Looked for the IDX files in {self.root} and in {self.raw}: {found}{hint}"

    def load(self) -> None:
        """Read and check the IDX files into memory, on the CPU.

        The entry points call this before the run starts, so every data error comes before anything is written;
        Lightning's `setup` then only splits and places the tensors.
        """
        if self.loaded or self.splits:
            return
        files = self.idx_files()
        if not files:
            raise DataError(f"no IDX files in {self.root} or {self.raw}: pass data.root=FOLDER")
        self.loaded = {split: self._read(*files[split]) for split in ("train", "test")}
        self.val_count(len(self.loaded["train"][1]))
        found = known_test_set(*self.loaded["test"])
        if found and found != self.hparams.dataset:
            raise DataError(
                f"data.root={self.root} holds {found}'s files, not {self.hparams.dataset}'s: pass data={found} "
                f"(or a data.root holding {self.hparams.dataset})"
            )

    def setup(self, stage: str | None = None):
        if self.splits:
            return  # `setup` runs once per stage; the tensors are already in memory
        self.load()
        (train_x, train_y), test = self.loaded["train"], self.loaded["test"]
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val_count = self.val_count(len(train_y))
        val, train = order[:val_count], order[val_count:]
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        splits = {"train": (train_x[train], train_y[train]), "val": (train_x[val], train_y[val]), "test": test}
        self.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in splits.items()}
        self.loaded = {}  # the splits hold the images now
        if self.hparams.augment:  # a stream of its own: the shuffling order stays what it is without augmentation
            self.augmenter = torch.Generator(device).manual_seed(self.hparams.seed + AUGMENT_SEED_OFFSET)

    def val_count(self, n: int) -> int:
        """`val_size` as a number of the `n` training images: a share (at least one image), or a count."""
        size = self.hparams.val_size
        count = max(1, round(size * n)) if 0 < size < 1 else int(size)
        if count >= n:
            raise DataError(f"data.val_size={size} leaves no training images of {n}: use a share, e.g. 0.1")
        return count

    def _read(self, images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = read_idx(images_path, "images"), read_idx(labels_path, "labels")
        if len(images) != len(labels):
            raise DataError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels; {FIX}")
        classes = self.hparams.num_classes
        if len(labels) and labels.max() >= classes:
            raise DataError(
                f"{labels_path} has label {labels.max()}, but model.num_classes={classes} allows 0..{classes - 1}: "
                f"set model.num_classes={labels.max() + 1}"
            )
        return images.unsqueeze(1), labels

    def describe(self) -> dict:
        """What was loaded: recorded in metrics.json and checkpoints, compared when a checkpoint meets other data."""
        sizes = {f"{split}_images": len(labels) for split, (_, labels) in self.splits.items()}
        test_labels = self.splits["test"][1].cpu().numpy().tobytes()
        return {
            "dataset": self.hparams.dataset,
            "root": str(self.root.resolve()),
            **sizes,
            "test_labels_sha256": hashlib.sha256(test_labels).hexdigest()[:16],
        }

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # the splits already live on the run's device (setup): Lightning would walk every batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """Normalize each batch where it lives: the splits stay uint8, a quarter of the memory of floats.

        Into the model's own dtype: Lightning's `*-true` precisions convert batches before this hook runs.
        """
        images, labels = batch
        scale, shift = 1 / (255 * self.hparams.std), self.hparams.mean / self.hparams.std  # pixels are 0..255
        dtype = self.trainer.lightning_module.dtype if self.trainer else torch.float32
        if self.augmenter is not None and self.trainer and self.trainer.training:
            images = self.random_affine(images.float())  # before normalizing: what moves in from outside is black
        return (images * scale).sub_(shift).to(dtype), labels  # uint8 or float times a float: float32

    def random_affine(self, images: torch.Tensor) -> torch.Tensor:
        """Each image rotated, scaled and shifted at random, in one batched resampling where the images live.

        Under DDP every rank draws the transforms of the whole global batch and keeps its own share, as the loader
        gives it its share of the images: N ranks see the images transformed as one process would.
        """
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        draws = torch.rand(len(images) * world, 4, generator=self.augmenter, device=images.device)
        u = draws[rank::world] * 2 - 1  # uniform in [-1, 1)
        angle = u[:, 0] * math.radians(self.hparams.augment_degrees)
        scale = 1 + u[:, 1] * self.hparams.augment_scale
        shift = u[:, 2:] * 2 * self.hparams.augment_shift  # affine_grid spans an image side with [-1, 1]
        cos, sin = angle.cos() / scale, angle.sin() / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _shard(self) -> dict:
        return dict(rank=self.trainer.global_rank, world_size=self.trainer.world_size) if self.trainer else {}

    def train_dataloader(self):
        # overfit_batches must see the same batches every epoch; Lightning unshuffles only DataLoaders.
        shuffle = None if self.trainer and self.trainer.overfit_batches else self.shuffle
        return InMemoryLoader(*self.splits["train"], self.hparams.batch_size, shuffle, train=True, **self._shard())

    def val_dataloader(self):
        if not len(self.splits["val"][1]):
            return []  # Lightning skips validation
        return InMemoryLoader(*self.splits["val"], self.hparams.eval_batch_size, **self._shard())

    def test_dataloader(self):
        return InMemoryLoader(*self.splits["test"], self.hparams.eval_batch_size, **self._shard())

    def state_dict(self):
        # Saved in checkpoints so a resumed run shuffles and augments as the uninterrupted run would have.
        state = {"shuffle": self.shuffle.get_state(), "data": self.describe() if self.splits else {}}
        if self.augmenter is not None:
            state["augment"] = {"device": self.augmenter.device.type, "state": self.augmenter.get_state()}
        return state

    def load_state_dict(self, state):
        self.shuffle.set_state(state["shuffle"])
        saved = state.get("augment")
        # A generator's state only fits a generator of its device type: a resume on another one draws afresh.
        if self.augmenter is not None and saved and saved["device"] == self.augmenter.device.type:
            self.augmenter.set_state(saved["state"])
