"""The data in memory: an MNIST-family data set's IDX files, or a folder of the user's own images prepared as predict
prepares an image (data=images), decoded once into uint8 tensors, split, placed on the run's device, batched by
slicing, normalized (and augmented) per batch where they live."""

import hashlib
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from lenet.frame.errors import DataError
from lenet.frame.mnist_family import DATASETS, OWN_IMAGES, normalize
from lenet.training import datasets
from lenet.training.batches import InMemoryLoader
from lenet.training.idx import FIX, read_idx
from lenet.training.image_folder import listing
from lenet.training.prepared_images import count_of, prepared_splits

AUGMENT_SEED_OFFSET = 1_000_003  # the augmentation's generator starts from seed + this, apart from the shuffling's


def pixel_mean_and_std(images: torch.Tensor) -> tuple[float, float]:
    """The mean and standard deviation of uint8 pixels as values in [0, 1], as the records give theirs, to 4 places.

    From a histogram of the 256 levels: the pixels as floats would take four times the images' memory."""
    counts = torch.bincount(images.reshape(-1), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * levels).sum() / counts.sum())
    variance = float((counts * (levels - mean) ** 2).sum() / (counts.sum() - 1))
    return round(mean, 4), round(math.sqrt(variance), 4)


class MNISTDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST from `root`, or the user's own images (dataset=images).

    For the MNIST family, `root` is either torchvision's layout (`root/MNIST/raw/...`, downloaded there when missing)
    or a plain folder holding the four IDX files; the official test set is only ever used for testing. For images,
    `root` is a folder of class folders or a CSV (lenet.training.image_folder); what the user did not split is split by
    `split_seed`, `test_size` of it for testing. Validation is carved from the training images with a fixed
    `split_seed`: `val_size` is a share of them (0 <= f < 1; 0: no validation, as in the original script) or a count.

    What is null is the data's own, filled in by `load` (and so saved in checkpoints): `classes` (the record's names,
    or the folders'), `num_classes` (their count), `mean` and `std` (of the training images' pixels).
    """

    def __init__(  # no defaults: conf/data/ holds them
        self,
        *,
        dataset: str,
        root: str,
        batch_size: int,
        eval_batch_size: int,
        val_size: float,
        mean: float | None,
        std: float | None,
        split_seed: int,
        seed: int,
        num_classes: int | None,
        classes: list[str] | None,
        layout: str,
        test_size: float,
        augment: bool,
        augment_degrees: float,
        augment_shift: float,
        augment_scale: float,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.hparams.classes = list(classes) if classes is not None else None  # a plain list: checkpoints hold those
        self.shuffle = torch.Generator().manual_seed(seed)
        self.augmenter: torch.Generator | None = None  # made in setup, on the run's device, when augment is on
        self.loaded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the files' train and test sets (and val)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # train, val, test: on the run's device

    @property
    def root(self) -> Path:
        return Path(self.hparams.root).expanduser()

    @property
    def own_images(self) -> bool:
        return self.hparams.dataset == OWN_IMAGES

    def idx_files(self) -> dict[str, tuple[Path, Path]] | None:
        return datasets.idx_files(self.root, self.hparams.dataset)

    def prepare_data(self):
        if not self.own_images:
            datasets.download_if_missing(self.root, self.hparams.dataset)

    def load(self, training: bool = True) -> None:
        """Read and check the data into memory, on the CPU, and fill in what is the data's own (classes, num_classes,
        mean, std).

        The entry points call this before the run starts, so every data error comes before anything is written;
        Lightning's `setup` then only splits and places the tensors. `training=False` (lenet.eval) needs test images
        only.
        """
        if self.loaded or self.splits:
            return
        self.loaded = self._read_images() if self.own_images else self._read_idx()
        train_images, train_labels = self.loaded["train"]
        if training and "val" not in self.loaded:
            self.val_count(len(train_labels))
        if training and not len(train_labels):  # data=images: what its test and validation splits left
            hp = self.hparams
            raise DataError(
                f"data.test_size={hp.test_size} and data.val_size={hp.val_size} leave no training images in "
                f"{self.root}: use smaller shares, e.g. 0.1"
            )
        self._check_labels()
        if self.hparams.mean is None or self.hparams.std is None:
            mean, std = pixel_mean_and_std(train_images)
            self.hparams.mean = mean if self.hparams.mean is None else self.hparams.mean
            self.hparams.std = std if self.hparams.std is None else self.hparams.std

    def test_images(self) -> tuple[torch.Tensor, str]:
        """The test images alone (N x 28 x 28 uint8, as the model sees them before normalizing) and where they are:
        lenet.export's parity check."""
        if self.own_images:
            self.load(training=False)
            return self.loaded["test"][0][:, 0], str(self.root)
        files = self._found_idx_files()
        return read_idx(files["test"][0], "images"), str(files["test"][0])

    def _read_images(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The user's own images, prepared with data.layout, and their class names."""
        found = listing(self.root, self.hparams.classes)
        self.hparams.classes = found.classes
        hp = self.hparams
        return prepared_splits(found, hp.layout, hp.val_size, hp.test_size, hp.split_seed)

    def _read_idx(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """An MNIST-family data set's IDX files; its class names are its record's."""
        record = DATASETS[self.hparams.dataset]
        if self.hparams.classes is None:
            self.hparams.classes = list(record.classes)
        files = self._found_idx_files()
        loaded = {split: self._read(*files[split]) for split in ("train", "test")}
        found = datasets.known_test_set(*loaded["test"])
        if found and found != self.hparams.dataset:
            raise DataError(
                f"data.root={self.root} holds {found}'s files, not {self.hparams.dataset}'s: pass data={found} "
                f"(or a data.root holding {self.hparams.dataset})"
            )
        return loaded

    def _found_idx_files(self) -> dict[str, tuple[Path, Path]]:
        if files := self.idx_files():
            return files
        raw = datasets.raw_folder(self.root, self.hparams.dataset)
        raise DataError(f"no IDX files in {self.root} or {raw}: pass data.root=FOLDER")

    def _check_labels(self) -> None:
        """Labels within the model's outputs; num_classes, when null, the data's class count."""
        found = len(self.hparams.classes)
        if self.hparams.num_classes is None:
            self.hparams.num_classes = found
        elif self.own_images and self.hparams.num_classes != found:
            raise DataError(
                f"{self.root} holds {found} classes, but model.num_classes={self.hparams.num_classes}: leave "
                f"model.num_classes out (null: the data's) or set it to {found}"
            )

    def setup(self, stage: str | None = None):
        if self.splits:
            return  # `setup` runs once per stage; the tensors are already in memory
        self.load()
        splits = self.loaded if "val" in self.loaded else self._with_val(self.loaded)
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in splits.items()}
        self.loaded = {}  # the splits hold the images now
        if self.hparams.augment:  # a stream of its own: the shuffling order stays what it is without augmentation
            self.augmenter = torch.Generator(device).manual_seed(self.hparams.seed + AUGMENT_SEED_OFFSET)

    def _with_val(self, loaded: dict) -> dict:
        """Validation carved from the official training set, by split_seed."""
        (train_x, train_y), test = loaded["train"], loaded["test"]
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val_count = self.val_count(len(train_y)) if len(train_y) else 0
        val, train = order[:val_count], order[val_count:]
        return {"train": (train_x[train], train_y[train]), "val": (train_x[val], train_y[val]), "test": test}

    def val_count(self, n: int) -> int:
        """`val_size` as a number of the `n` training images: a share (at least one image), or a count."""
        size = self.hparams.val_size
        count = count_of(size, n)
        if count >= n:
            raise DataError(f"data.val_size={size} leaves no training images of {n}: use a share, e.g. 0.1")
        return count

    def _read(self, images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = read_idx(images_path, "images"), read_idx(labels_path, "labels")
        if len(images) != len(labels):
            raise DataError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels; {FIX}")
        classes = self.hparams.num_classes or len(self.hparams.classes)
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
        dtype = self.trainer.lightning_module.dtype if self.trainer else torch.float32
        images = images.float()
        if self.augmenter is not None and self.trainer and self.trainer.training:
            images = self.random_affine(images)  # before normalizing: what moves in from outside is black
        return normalize(images, self.hparams.mean, self.hparams.std).to(dtype), labels

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
        state = {"shuffle": self.shuffle.get_state()}
        if self.augmenter is not None:
            state["augment"] = {"device": self.augmenter.device.type, "state": self.augmenter.get_state()}
        return state

    def load_state_dict(self, state):
        self.shuffle.set_state(state["shuffle"])
        saved = state.get("augment")
        # A generator's state only fits a generator of its device type: a resume on another one draws afresh.
        if self.augmenter is not None and saved and saved["device"] == self.augmenter.device.type:
            self.augmenter.set_state(saved["state"])
