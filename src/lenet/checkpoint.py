"""Checkpoints of lenet.train: the one reader (Checkpoint), the one writer of what lenet adds to them
(CheckpointContents), what a resume may change, and the best epoch kept across a resume."""

import io
import logging
import pickle
import shutil
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lenet import keys, rundir
from lenet.data import MNISTDataModule
from lenet.datasets import class_names
from lenet.errors import ConfigError, ModelError
from lenet.lightning_module import RUN_LENGTH_ARGUMENT, LeNetModule
from lenet.predictor import Predictor, read_model_file
from lenet.torch_device import device_of, forward_numpy

log = logging.getLogger(__name__)


class Checkpoint:
    """A checkpoint of lenet.train, read once, as tensors and plain values only, and what callers ask of it.

    `weights_only=True` is passed explicitly: torch's default would give way to TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1,
    and an unrestricted unpickler runs whatever code a file holds.
    """

    KEYS = ("epoch", "state_dict", "hyper_parameters", "datamodule_hyper_parameters")

    def __init__(self, path: Path, contents: dict):
        self.path, self.contents = path, contents

    @classmethod
    def open(cls, path: Path) -> "Checkpoint":
        not_ours = f"{path} is not a checkpoint of lenet.train"
        data = read_model_file(path)
        if not zipfile.is_zipfile(io.BytesIO(data)):  # torch.save's format: anything else is no checkpoint
            raise ModelError(not_ours)
        try:
            contents = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # the safe unpickler met an object it does not allow
            raise ModelError(
                f"{path} holds Python objects beyond tensors and plain values, which could run code when loaded: "
                "lenet loads only its own checkpoints"
            ) from None
        except Exception as error:  # torch.load fails in many ways on other files: zip, tensor, EOF errors
            raise ModelError(f"{not_ours} ({type(error).__name__})") from None
        if not isinstance(contents, dict) or not set(cls.KEYS) <= contents.keys():
            raise ModelError(not_ours)
        return cls(path, contents)

    @property
    def epochs(self) -> int:
        """The epochs it has trained."""
        return self.contents["epoch"] + 1

    @property
    def config(self) -> dict:
        """The whole config of the run that wrote it ({} for checkpoints older than that record)."""
        return self.contents.get("config") or {}

    @property
    def data_settings(self) -> dict:
        """The data module's settings: dataset, root, batch sizes, mean, std, ..."""
        return self.contents["datamodule_hyper_parameters"]

    @property
    def trained_on(self) -> dict:
        """What the data module loaded when it was saved (MNISTDataModule.describe); {} for older checkpoints."""
        older = self.contents.get(MNISTDataModule.__qualname__, {}).get("data")  # where earlier versions kept it
        return self.contents.get("data") or older or {}

    @property
    def metrics(self) -> dict[str, float]:
        """Its epoch's metrics (train, val, the learning rate), as lenet.summary reports a fit's; {} for older
        checkpoints."""
        return self.contents.get("metrics", {})

    @property
    def threads(self) -> int | None:
        """torch's thread count in the run that wrote it (a resume reuses it); None for older checkpoints."""
        return self.contents.get("threads")

    def predictor(self, device: str = "auto") -> Predictor:
        """The model as a Predictor (lenet.predictor), on `device`."""
        torch_device = device_of(device)
        net = self.module().net.eval().to(torch_device)
        data = self.data_settings
        return Predictor(
            class_names(data["dataset"]), data["mean"], data["std"], data["dataset"], self.path, str(self.path),
            net, forward_numpy(net, torch_device),
        )  # fmt: skip

    def module(self) -> LeNetModule:
        """The LightningModule with its weights, built directly: load_from_checkpoint's hook would reset torch's
        random state. Not compiled, which would only delay the first use."""
        hparams = self.contents["hyper_parameters"]
        module = LeNetModule(**{**hparams, "model": {**hparams["model"], "compile": False}})
        module.load_state_dict(self.contents["state_dict"])
        return module

    def datamodule(self, settings: dict) -> MNISTDataModule:
        """The data module it was trained with, `settings` (data.root, data.eval_batch_size) replacing its own; a
        setting left null keeps the checkpoint's.

        Checkpoints from before the data module saved num_classes get their model's.
        """
        classes = self.contents["hyper_parameters"]["model"].get("num_classes", 10)
        given = {key: value for key, value in settings.items() if value is not None}
        return MNISTDataModule(**{"num_classes": classes, **self.data_settings, **given})


def read(path: Path, device: str = "auto") -> Predictor:
    """A checkpoint as a Predictor: lenet.predictor's reader for .ckpt files."""
    return Checkpoint.open(path).predictor(device)


class CheckpointContents(L.Callback):
    """What lenet adds to every checkpoint, and takes back on a resume: the run's whole config (what a resume is
    checked against), the data it was trained on (what lenet.eval compares), torch's random state (dropout
    draws from it, so a resume continues it), its thread count (results are identical only with the same count,
    so a resume reuses it: lenet.cpus) and its epoch's metrics (what a run resumed after its last epoch reports).
    Checkpoint reads them."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["config"] = self.config
        checkpoint["data"] = trainer.datamodule.describe()
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        checkpoint["threads"] = torch.get_num_threads()
        checkpoint["metrics"] = {name: float(value) for name, value in trainer.callback_metrics.items()}

    def on_load_checkpoint(self, trainer, module, checkpoint):
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
            module.seed_this_rank()  # the checkpoint holds rank 0's state


def check_resume(checkpoint: Checkpoint, config: dict) -> int:
    """Refuse a resume that would not continue the saved run; return the number of epochs it already trained.
    A run stopped between its last epoch and its test resumes to be tested: all its epochs are no refusal."""
    run_length = check_same_run(checkpoint, config)
    done, max_epochs = checkpoint.epochs, keys.flatten(config)["trainer.max_epochs"]
    if done >= max_epochs and not rundir.untested(checkpoint.path):
        more = "start a new run to train longer" if run_length else "pass a larger trainer.max_epochs to train longer"
        raise ConfigError(
            f"ckpt_path={checkpoint.path} has trained all {done} epochs of trainer.max_epochs={max_epochs}: {more}"
        )
    return done


def check_same_run(checkpoint: Checkpoint, config: dict) -> bool:
    """Refuse a config that changes what the saved run is (lenet.keys: what a resume may change); return whether
    its schedule spans the whole run."""
    before, now = keys.flatten(checkpoint.config), keys.flatten(config)  # older checkpoints carry no config
    run_length = now.get("scheduler._target_") in RUN_LENGTH_ARGUMENT
    for key in sorted(before.keys() | now.keys() if before else ()):
        role = keys.role(key)
        fixed = role.resume == keys.FIXED or (role.resume == keys.RUN_LENGTH and run_length)
        if fixed and before.get(key) != now.get(key):
            because = f": {now['scheduler._target_'].rsplit('.', 1)[-1]} spans the run" if run_length else ""
            because = f": {role.why_fixed}" if role.why_fixed else because if role.resume == keys.RUN_LENGTH else ""
            raise ConfigError(
                f"ckpt_path={checkpoint.path}: a resume continues its run, so {key} cannot change ({before.get(key)} "
                f"in the checkpoint, {now.get(key)} now{because}). A resume may change only trainer, callbacks and "
                "logger settings, data.root and data.eval_batch_size; start a new run to change the rest"
            )
    return run_length


class ResumableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose state, the best epoch above all, survives a resume into a new run dir.

    Lightning keeps the best score only while the checkpoint folder stays the same, and a resumed run writes into
    a run dir of its own: its first epoch would become "best" whatever its score. Here the resumed run copies the
    best checkpoint into its own folder and goes on comparing with its score.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            return super().load_state_dict(state_dict)
        best, score = Path(state_dict.get("best_model_path") or ""), state_dict.get("best_model_score")
        carried = {"dirpath": self.dirpath, "best_model_path": "", "best_model_score": None, "best_k_models": {},
                   "kth_best_model_path": "", "kth_value": self.kth_value, "last_model_path": ""}  # fmt: skip
        if self.monitor and score is not None:
            if best.is_file():
                copy = Path(self.dirpath) / best.name
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(best, copy)
                kept = str(copy)
                carried |= {"best_model_path": kept, "best_model_score": score, "best_k_models": {kept: score},
                            "kth_best_model_path": kept, "kth_value": score}  # fmt: skip
            else:
                log.warning("The best checkpoint of the resumed run, %s, is gone: %s will be the best epoch "
                            "after the resume", best, best.name)  # fmt: skip
        super().load_state_dict({**state_dict, **carried})
