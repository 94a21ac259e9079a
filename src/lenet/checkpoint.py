"""Checkpoints: one reader of lenet.train's checkpoints, `ckpt_path` resolved to a file, what a resume may change,
and the best epoch kept across a resume."""

import logging
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lenet.classifier import ModelError
from lenet.config import ConfigError
from lenet.data import DATASETS, MNISTDataModule
from lenet.module import RUN_LENGTH_ARGUMENT, LeNetModule

log = logging.getLogger(__name__)

# What a resume may change: how it runs, where the data now lives, what it logs. Everything else in the config
# (model, optimizer, schedule, data, seed) is the run's identity: Lightning restores the optimizer's own state, so
# a changed optimizer.lr would silently not take effect.
CHANGEABLE = ("trainer.", "callbacks.", "logger.", "data.root", "data.eval_batch_size", "model.compile",
              "model.channels_last", "ckpt_path", "run_dir", "outputs_dir", "threads", "hparams_search")  # fmt: skip
# ... except what sets the length of a schedule that spans the run (one-cycle, cosine).
RUN_LENGTH = ("trainer.max_epochs", "trainer.limit_train_batches", "trainer.accumulate_grad_batches",
              "trainer.devices", "trainer.num_nodes")  # fmt: skip
# ... and the weight average (callbacks=ema): the checkpoint holds the average of the run so far and the trained
# weights beside it. Without it a resume would train on from the average; added, it would average half a run.
AVERAGE = "callbacks.ema"


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
        if not zipfile.is_zipfile(path):  # torch.save's format: anything else is no checkpoint (an image, a text)
            raise ModelError(not_ours)
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True)
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
    def classes(self) -> list[str]:
        # torchvision names MNIST's classes "0 - zero", ...: the digit is the name people expect.
        return [name.split(" - ")[0] for name in DATASETS[self.data_settings["dataset"]].classes]

    @property
    def trained_on(self) -> dict:
        """What the data module loaded when it was saved (MNISTDataModule.describe); {} for older checkpoints."""
        return self.contents.get(MNISTDataModule.__qualname__, {}).get("data") or {}

    def module(self) -> LeNetModule:
        """The LightningModule with its weights, built directly: load_from_checkpoint's hook would reset torch's
        random state. Not compiled, which would only delay the first use."""
        hparams = self.contents["hyper_parameters"]
        module = LeNetModule(**{**hparams, "model": {**hparams["model"], "compile": False}})
        module.load_state_dict(self.contents["state_dict"])
        return module

    def datamodule(self, settings: dict) -> MNISTDataModule:
        """The data module it was trained with, `settings` (data.root, data.eval_batch_size) replacing its own.

        Checkpoints from before the data module saved num_classes get their model's.
        """
        classes = self.contents["hyper_parameters"]["model"].get("num_classes", 10)
        return MNISTDataModule(**{"num_classes": classes, **self.data_settings, **settings})


def checkpoint_file(ckpt_path: str | None, outputs_dir: Path, prefer: str = "best") -> Path | None:
    """`ckpt_path` as a file: `last` means the newest last.ckpt of any run under `outputs_dir`; a run dir (or its
    checkpoints/ folder) means its `prefer`red checkpoint, best.ckpt to use a model, last.ckpt to resume training,
    else the other one."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        runs = sorted(outputs_dir.glob("**/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
        if not runs:
            raise ConfigError(f"ckpt_path=last: no run under {outputs_dir}/ has a last.ckpt; give a checkpoint path")
        return runs[-1]
    path = Path(ckpt_path)
    if path.is_dir():
        return _in_run_dir(path, prefer)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return path


def _in_run_dir(folder: Path, prefer: str) -> Path:
    names = [f"{prefer}.ckpt", *({"best.ckpt", "last.ckpt"} - {f"{prefer}.ckpt"})]
    found = next((f / name for name in names for f in (folder / "checkpoints", folder) if (f / name).is_file()), None)
    if found is None:
        raise ConfigError(
            f"ckpt_path={folder} is a folder without checkpoints/best.ckpt or checkpoints/last.ckpt: "
            "give a run dir of lenet.train or a checkpoint file"
        )
    return found


def check_resume(path: Path, config: dict) -> int:
    """Refuse a resume that would not continue the saved run; return the number of epochs it already trained."""
    saved = Checkpoint.open(path)
    before, now = flat(saved.config), flat(config)  # checkpoints older than this check carry no config
    run_length = now.get("scheduler._target_") in RUN_LENGTH_ARGUMENT
    for key in sorted(before.keys() | now.keys() if before else ()):
        fixed = not key.startswith(CHANGEABLE) or key.startswith(AVERAGE) or (run_length and key.startswith(RUN_LENGTH))
        if fixed and before.get(key) != now.get(key):
            because = f": {now['scheduler._target_'].rsplit('.', 1)[-1]} spans the run" if key in RUN_LENGTH else ""
            because = ": it averages the weights of the whole run" if key.startswith(AVERAGE) else because
            raise ConfigError(
                f"ckpt_path={path}: a resume continues its run, so {key} cannot change ({before.get(key)} in the "
                f"checkpoint, {now.get(key)} now{because}). A resume may change only trainer, callbacks and logger "
                "settings, data.root and data.eval_batch_size; start a new run to change the rest"
            )
    done, max_epochs = saved.epochs, now["trainer.max_epochs"]
    if done >= max_epochs:
        more = "start a new run to train longer" if run_length else "pass a larger trainer.max_epochs to train longer"
        raise ConfigError(f"ckpt_path={path} has trained all {done} epochs of trainer.max_epochs={max_epochs}: {more}")
    return done


def given_settings(node) -> dict:
    """The settings of lenet.eval's or lenet.export's `data` that replace the checkpoint's: null keeps its own."""
    return {key: value for key, value in node.items() if value is not None}


def flat(config: dict, prefix: str = "") -> dict:
    """{"optimizer.lr": 0.1, ...}: nested dicts as dotted keys."""
    items = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            items |= flat(value, f"{prefix}{key}.")
        else:
            items[f"{prefix}{key}"] = value
    return items


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
