"""Checkpoints of lenet.train: the one reader (Checkpoint), the one writer of what lenet adds to them
(CheckpointContents), what a resume may change, the weights a new run starts from (InitialWeights, init_from), and
the best epoch kept across a resume."""

import inspect
import io
import logging
import math
import pickle
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lenet.frame import atomic, keys, quoting
from lenet.frame.errors import ConfigError, ModelError
from lenet.frame.mnist_family import DATASETS
from lenet.frame.model_bytes import read_model_file
from lenet.runs import rundir
from lenet.training.datamodule import MNISTDataModule
from lenet.training.module import LENET, RUN_LENGTH_ARGUMENT, LeNetModule
from lenet.training.network import LeNet

log = logging.getLogger(__name__)


class Checkpoint:
    """A checkpoint of lenet.train, read once, as tensors and plain values only, and what callers ask of it.

    `weights_only=True` is passed explicitly: torch's default would give way to TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1,
    and an unrestricted unpickler runs whatever code a file holds. What the file says is data: before anything is
    built from it, every part lenet uses is checked (`refusal`): the model's settings, plain values that
    lenet.frame.keys'
    rules allow, from which lenet builds its own LeNet; the data settings; weights of the shapes those settings
    build, all finite; and the records lenet adds (CheckpointContents).
    """

    KEYS = ("epoch", "state_dict", "hyper_parameters", "datamodule_hyper_parameters")

    def __init__(self, path: Path, contents: dict):
        self.path, self.contents = path, contents

    @classmethod
    def open(cls, path: Path) -> "Checkpoint":
        checkpoint = cls(path, _load(path, read_model_file(path)))
        if refusal := checkpoint.refusal():
            raise ModelError(f"{path} {refusal}")
        return checkpoint

    def refusal(self) -> str | None:
        """What in it lenet will not use, as the rest of a line that starts with its path; None if nothing."""
        hparams, data = self.contents["hyper_parameters"], self.data_settings
        if not isinstance(hparams, dict) or "model" not in hparams:
            return "holds no model settings: it is not a checkpoint of lenet.train"
        return (
            _settings_refusal("model", hparams["model"], MODEL_SETTINGS)
            or _settings_refusal("data", data, DATA_SETTINGS, needed=PREDICTOR_NEEDS)
            or _classes_refusal(hparams["model"], data)
            or _weights_refusal(self.contents["state_dict"], hparams["model"])
            or _data_refusal(hparams["model"], data)
            or _records_refusal(self.contents)
        )

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
        """Its model's class names, one per output, as its data module recorded them; its data set's record's for
        checkpoints from before they were recorded."""
        return list(self.data_settings.get("classes") or DATASETS[self.data_settings["dataset"]].classes)

    @property
    def layout(self) -> str:
        """How its data's images are laid out (lenet.frame.mnist_family.LAYOUTS): how a user's image is prepared."""
        return self.data_settings.get("layout") or DATASETS[self.data_settings["dataset"]].layout

    @property
    def trained_on(self) -> dict:
        """What the data module loaded when it was saved (MNISTDataModule.describe); {} for older checkpoints."""
        return _trained_on(self.contents) or {}

    @property
    def metrics(self) -> dict[str, float]:
        """Its epoch's metrics (train, val, the learning rate), as lenet.training.results reports a fit's; {} for older
        checkpoints."""
        return self.contents.get("metrics", {})

    @property
    def timing(self) -> dict | None:
        """What the run's attempts up to this checkpoint took (TIMING: attempts, wall_s, train_s, train_images), which a
        resume adds its own to; None for older checkpoints."""
        return self.contents.get("timing")

    @property
    def threads(self) -> int | None:
        """torch's thread count in the run that wrote it (a resume reuses it); None for older checkpoints."""
        return self.contents.get("threads")

    def module(self) -> LeNetModule:
        """The LightningModule with its weights, built directly: load_from_checkpoint's hook would reset torch's
        random state. From the model's checked settings alone: no optimizer or scheduler (a file's are never
        instantiated). Not compiled, which would only delay the first use."""
        module = LeNetModule(model={**self.contents["hyper_parameters"]["model"], "compile": False})
        module.load_state_dict(self.contents["state_dict"])
        return module

    def datamodule(self, settings: dict) -> MNISTDataModule:
        """The data module it was trained with, `settings` (data.root, data.eval_batch_size) replacing its own; a
        setting left null keeps the checkpoint's.

        Checkpoints from before the data module saved num_classes get their model's.
        """
        classes = self.contents["hyper_parameters"]["model"].get("num_classes", 10)
        given = {key: value for key, value in settings.items() if value is not None}
        # Older checkpoints lack these; they are of the MNIST family, whose data never reads test_size.
        own = {"classes": self.classes, "layout": self.layout, "test_size": None}
        data = {"num_classes": classes, **own, **self.data_settings, **given}
        if missing := [f"data.{key}" for key in DATA_SETTINGS if key not in data]:
            raise ModelError(f"{self.path} lacks {', '.join(missing)}, which its data module needs")
        return MNISTDataModule(**data)


ZIP_START = b"PK\x03\x04"  # torch.save writes a zip archive: its first bytes
PLAIN = (str, int, float, bool, type(None))
# What a checkpoint's settings may hold: the keyword arguments of what lenet builds from them, and lenet's own keys.
LENET_SETTINGS = inspect.signature(LeNet).parameters
OWN_MODEL_SETTINGS = [
    key.removeprefix("model.") for key in keys.KEYS if key.startswith("model.") and keys.role(key).own
]
MODEL_SETTINGS = (*LENET_SETTINGS, *OWN_MODEL_SETTINGS, "_target_")
DATA_SETTINGS = tuple(inspect.signature(MNISTDataModule).parameters)
BUILT = {"model": LENET, "data": f"{MNISTDataModule.__module__}.{MNISTDataModule.__qualname__}"}  # from each group
PREDICTOR_NEEDS = ("dataset", "mean", "std")  # the data settings every use of a checkpoint reads


def _load(path: Path, data: bytes) -> dict:
    """The file's contents, loaded with the safe unpickler: a dict holding at least Checkpoint.KEYS."""
    not_ours = f"{path} is not a checkpoint of lenet.train"
    if not data:
        raise ModelError(_damaged(path, "it is empty"))
    if not zipfile.is_zipfile(io.BytesIO(data)):  # torch.save's format: anything else is no checkpoint
        if data.startswith(ZIP_START):  # a zip's start without its end: cut short
            raise ModelError(_damaged(path, f"it ends after {len(data):,} bytes, without its archive's end"))
        raise ModelError(not_ours)
    try:
        contents = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the safe unpickler met an object it does not allow
        raise ModelError(
            f"{path} holds Python objects beyond tensors and plain values, which could run code when loaded: "
            "lenet loads only its own checkpoints"
        ) from None
    except Exception as error:  # torch.load fails in many ways on other files: zip, tensor, EOF errors
        if any(name.endswith("/data.pkl") for name in zipfile.ZipFile(io.BytesIO(data)).namelist()):
            raise ModelError(_damaged(path, f"its contents do not read back ({type(error).__name__})")) from None
        raise ModelError(f"{not_ours} ({type(error).__name__})") from None
    if not isinstance(contents, dict) or not set(Checkpoint.KEYS) <= contents.keys():
        raise ModelError(not_ours)
    return _with_todays_names(contents)


# The classes lenet's configs name, where checkpoints written before the modules were grouped into packages name
# them: such a checkpoint names the same network and data, and resumes as the same run.
MOVED = {
    "lenet.model.LeNet": "lenet.training.network.LeNet",
    "lenet.data.MNISTDataModule": "lenet.training.datamodule.MNISTDataModule",
    "lenet.checkpoint.ResumableCheckpoint": "lenet.training.checkpoints.ResumableCheckpoint",
}


def _with_todays_names(tree):
    """`tree` with each `_target_` that MOVED knows renamed; nothing else changed (the values are checked later)."""
    if isinstance(tree, dict):
        return {key: MOVED.get(value, value) if key == "_target_" and isinstance(value, str)
                else _with_todays_names(value) for key, value in tree.items()}  # fmt: skip
    return tree


def _damaged(path: Path, how: str) -> str:
    """A damaged checkpoint, and what to do: a last.ckpt's run resumes from its best epoch if that one is whole."""
    best, advice = path.with_name(rundir.BEST), "use another checkpoint, or train again"
    if path.name == rundir.LAST and best.is_file():
        try:
            Checkpoint.open(best)
            advice = f"resume from the run's best epoch (ckpt_path={best}; it is whole and kept) or start the run over"
        except ModelError:
            advice = f"so is {best}: start the run over"
    return f"{path} is damaged ({how}; a full disk or a kill while it was saved does that): {advice}"


def _settings_refusal(group: str, settings, known: tuple[str, ...], needed: tuple[str, ...] = ()) -> str | None:
    """Why `settings` are not plain values of the keys `known`, each allowed by its rule in lenet.frame.keys."""
    if not isinstance(settings, dict):
        return f"holds {group} settings that are {type(settings).__name__}, not a dict of settings"
    if missing := [key for key in needed if key not in settings]:
        return f"lacks {group}.{missing[0]}: it is not a checkpoint of lenet.train"
    for key, value in settings.items():
        name = f"{group}.{key}"
        if key not in known:
            return f"holds {name}, which is not a setting of {BUILT[group]}"
        if key == "_target_":
            if value != LENET:
                shown = quoting.shown(value, 60)
                return f"holds {name}={shown}, which is not allowed: it must be {LENET}, lenet's own network"
            continue
        rule = keys.FILLED.get(name) or keys.KEYS[name].rule
        if not _plain(value) or not rule.test(value):
            return f"holds {name}={quoting.shown(value, 60)}, which is not allowed: it must be {rule.text}"
    return None


def _plain(value) -> bool:
    """A plain value, or a list of them (data.classes)."""
    return isinstance(value, PLAIN) or (isinstance(value, list) and all(isinstance(item, PLAIN) for item in value))


def _data_refusal(model: dict, data: dict) -> str | None:
    """What a model needs of its data settings beyond their rules: a class name per output, and the class names and
    layout of a data set without a record (data=images)."""
    if data["dataset"] not in DATASETS and not (data.get("classes") and data.get("layout")):
        return f"holds data.dataset={data['dataset']} without its class names and layout (data.classes, data.layout)"
    outputs = model.get("num_classes", 10)
    if data.get("classes") and len(data["classes"]) != outputs:
        return (
            f"holds {len(data['classes'])} class names (data.classes) for model.num_classes={outputs}: they must agree"
        )
    return None


def _classes_refusal(model: dict, data: dict) -> str | None:
    classes = model.get("num_classes", 10)
    if data.get("num_classes", classes) != classes:
        return f"holds data.num_classes={data['num_classes']} but model.num_classes={classes}: they must agree"
    return None


def _weights_refusal(state: dict, model: dict) -> str | None:
    """Weights that are not those of the module its (checked) model settings build, or that are not all finite.

    The shapes expected come from a module built on torch's meta device, which allocates nothing: a file cannot
    make lenet allocate more than the weights it holds."""
    with torch.device("meta"):
        expected = LeNetModule(model={**model, "compile": False}).state_dict()
    built = _lenet(model)
    if not isinstance(state, dict) or not all(isinstance(w, torch.Tensor) for w in state.values()):
        return "holds weights that are not all tensors"
    if missing := [key for key in expected if key not in state]:
        return f"lacks the weight {missing[0]} of {built}: it is not a checkpoint of lenet.train"
    if extra := [key for key in state if key not in expected]:
        shown = quoting.shown(extra[0], 60)
        return f"holds the weight {shown}, which {built} has not: it is not a checkpoint of lenet.train"
    for key, weight in state.items():
        want = expected[key]
        kind = weight.is_floating_point() != want.is_floating_point()
        if weight.shape != want.shape or kind:
            return (
                f"holds weights that do not fit its model settings: {key} is {_size(weight, kind)} in it, "
                f"{_size(want, kind)} in {built}"
            )
    if nonfinite := next(
        (key for key in state if key.startswith("net.") and not torch.isfinite(state[key]).all()), None
    ):
        return (
            f"holds weights that are NaN or infinite ({nonfinite}): the run that saved it diverged; "
            "use a checkpoint from before"
        )
    return None


def _lenet(model: dict) -> str:
    """The LeNet that model settings build, as a call: LeNet(num_classes=12), its defaults left out."""
    given = {key: value for key, value in model.items() if key in LENET_SETTINGS}
    shown = [f"{key}={value!r}" for key, value in given.items() if value != LENET_SETTINGS[key].default]
    return f"LeNet({', '.join(shown)})"


def _size(weight: torch.Tensor, dtype: bool) -> str:
    shape = "x".join(map(str, weight.shape)) or "a scalar"
    return f"{shape} {str(weight.dtype).removeprefix('torch.')}" if dtype else shape


def _trained_on(contents: dict):
    """The record of the data a checkpoint's model was trained on, where its version of lenet kept it."""
    older = contents.get(MNISTDataModule.__qualname__)  # where earlier versions kept it
    return contents.get("data") or (older.get("data") if isinstance(older, dict) else None)


def _records_refusal(contents: dict) -> str | None:
    """Why its epoch, or what lenet adds to it (CheckpointContents), is not what lenet reads there."""
    records = {name: contents.get(name) for name in RECORDS} | {"data": _trained_on(contents)}
    for name, value in records.items():
        if (value is not None or name in Checkpoint.KEYS) and not RECORDS[name].test(value):
            return f"holds {name}={quoting.shown(value, 60)}, which is not allowed: it must be {RECORDS[name].text}"
    return None


def _is_data_record(record) -> bool:
    """MNISTDataModule.describe's record: the strings a warning shows and compares."""
    return isinstance(record, dict) and all(
        isinstance(record.get(key), str) for key in ("dataset", "root", "test_labels_sha256")
    )


def _are_metrics(metrics) -> bool:
    return isinstance(metrics, dict) and all(isinstance(k, str) and isinstance(v, float) for k, v in metrics.items())


# What a run's attempts took, carried from checkpoint to checkpoint across resumes (lenet.training.results.RunSummary).
TIMING = {"attempts": int, "wall_s": float, "train_s": float, "train_images": int}


def _is_timing(record) -> bool:
    return (
        isinstance(record, dict)
        and record.keys() == TIMING.keys()
        and all(type(record[name]) is kind and 0 <= record[name] < math.inf for name, kind in TIMING.items())
        and record["attempts"] >= 1
    )


def _is_random_state(state) -> bool:
    return isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.shape == torch.get_rng_state().shape


# The rest of a checkpoint that lenet reads, each with what it must be (null: older checkpoints lack it).
RECORDS = {
    "epoch": keys.integer(0),
    "config": keys.Rule(lambda config: isinstance(config, dict), "a run's config"),
    "data": keys.Rule(_is_data_record, "a record of the data it was trained on (dataset, root, test_labels_sha256)"),
    "metrics": keys.Rule(_are_metrics, "metrics, names and numbers"),
    "threads": keys.integer(1),
    "timing": keys.Rule(_is_timing, "what its attempts took: attempts >= 1, wall_s, train_s, train_images >= 0"),
    "torch_rng_state": keys.Rule(_is_random_state, "torch's random state"),
}


class CheckpointContents(L.Callback):
    """What lenet adds to every checkpoint, and takes back on a resume: the run's whole config (what a resume is
    checked against), the data it was trained on (what lenet.eval compares), torch's random state (dropout
    draws from it, so a resume continues it), its thread count (results are identical only with the same count,
    so a resume reuses it: lenet.training.cpus), its epoch's metrics (what a run resumed after its last epoch
    reports) and, given `timing` (RunSummary.timing), what the run's attempts took so far (what a resume adds to).
    Checkpoint reads them."""

    def __init__(self, config: dict, timing=None):
        self.config, self.timing = config, timing

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["config"] = self.config
        checkpoint["data"] = trainer.datamodule.describe()
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        checkpoint["threads"] = torch.get_num_threads()
        checkpoint["metrics"] = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if self.timing:
            checkpoint["timing"] = self.timing(trainer, module)

    def on_load_checkpoint(self, trainer, module, checkpoint):
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
            module.seed_this_rank()  # the checkpoint holds rank 0's state


def record_timing(path: Path, timing: dict) -> None:
    """Replace the timing record of the checkpoint at `path`, the rest as it is: an interrupted attempt adds the time
    it spent after its last save. Written whole (lenet.frame.atomic), as every checkpoint is."""
    contents = Checkpoint.open(path).contents
    with atomic.replacing(path, "wb") as file:
        torch.save({**contents, "timing": timing}, file)


def check_resume(checkpoint: Checkpoint, config: dict) -> int:
    """Refuse a resume that would not continue the saved run; return the number of epochs it already trained.
    A run stopped between its last epoch and its test resumes to be tested: all its epochs are no refusal."""
    run_length = check_same_run(checkpoint, config)
    done, max_epochs = checkpoint.epochs, keys.flatten(config)["trainer.max_epochs"]
    if done >= max_epochs and not rundir.untested(checkpoint.path):
        new_run = f"start a new run to train longer: init_from={checkpoint.path} starts one from its weights"
        longer = f"pass a larger trainer.max_epochs to train longer (its run goes on), or {new_run}"
        more = f"{new_run}, with a fresh schedule" if run_length else longer
        raise ConfigError(
            f"ckpt_path={checkpoint.path} has trained all {done} epochs of trainer.max_epochs={max_epochs}: {more}"
        )
    return done


# Keys that older checkpoints' configs lack: their runs had what these give for an MNIST-family data set.
CAME_LATER = ("data.classes", "data.layout", "data.test_size")


def check_same_run(checkpoint: Checkpoint, config: dict) -> bool:
    """Refuse a config that changes what the saved run is, naming every setting that differs; return whether its
    schedule spans the whole run.

    What a resume may change is what lenet.frame.keys declares CHANGEABLE: where the run writes and what it resumes
    (ckpt_path, outputs_dir, run_dir, hparams_search), threads, model.compile, model.channels_last, data.root,
    data.eval_batch_size, and the trainer, callbacks and logger settings; and what it declares RUN_LENGTH
    (trainer.max_epochs, trainer.devices, trainer.num_nodes, trainer.limit_train_batches,
    trainer.accumulate_grad_batches) unless the schedule spans the whole run. The rest is FIXED.
    """
    before, now = keys.flatten(checkpoint.config), keys.flatten(config)  # older checkpoints carry no config
    run_length = now.get("scheduler._target_") in RUN_LENGTH_ARGUMENT
    changed = [
        f"{key} cannot change ({_text(before.get(key))} in the checkpoint, {_text(now.get(key))} now{why})"
        for key in sorted(before.keys() | now.keys() if before else ())
        if before.get(key) != now.get(key)
        and not (key not in before and key in CAME_LATER)
        and not (now.get(key) is None and keys.role(key).from_data)  # null: what the data gave, as recorded
        and (why := _why_fixed(key, run_length, now)) is not None
    ]
    if changed:
        raise ConfigError(
            f"ckpt_path={checkpoint.path}: a resume continues its run, so {'; '.join(changed)}. Resume with the "
            f"checkpoint's values, or start a new run to change them (init_from={checkpoint.path} starts one from its "
            "weights)"
        )
    return run_length


def _why_fixed(key: str, run_length: bool, now: dict) -> str | None:
    """Why a resume cannot change `key`, as the end of the parenthesis naming its values ("" when it goes without
    saying); None when a resume may change it."""
    role = keys.role(key)
    if not (role.resume == keys.FIXED or (role.resume == keys.RUN_LENGTH and run_length)):
        return None
    if role.why_fixed:
        return f": {role.why_fixed}"
    return f": {now['scheduler._target_'].rsplit('.', 1)[-1]} spans the run" if role.resume == keys.RUN_LENGTH else ""


def _text(value) -> str:
    """A value of a run's config, from a file, shown on the console as text: no control sequences, no screenful."""
    text = quoting.terminal(str(value))
    return text if len(text) <= 80 else f"{text[:77]}..."


@dataclass(frozen=True)
class InitialWeights:
    """The trained weights a new run starts from (`init_from`): a checkpoint, or a run dir's best.ckpt, read by
    Checkpoint.open (every part checked), checked to fit the model this run builds from its own settings.

    Not a resume: nothing else of the checkpoint is taken (no optimizer, schedule, epoch, config). Nothing in the file
    chooses what is built: the run builds its own LeNet and the weights are copied into it, layer by layer, each layer
    named by its kind and place among its kind (conv1, norm1, fc3): settings that add no weights (activation, pooling,
    dropout, which shifts the layers' indices) may differ. A head for another class count is left as this run built
    it (`head`: the checkpoint's classes, and this run's); every other layer must have the same shapes.
    """

    checkpoint: Checkpoint
    head: tuple[int, int] | None = None

    @classmethod
    def open(cls, init_from: str, outputs_dir: Path, model: dict) -> "InitialWeights":
        """The checkpoint `init_from` names, refused in one line unless its weights fit a LeNet of `model`."""
        path = Path(init_from)
        if not path.exists():
            raise ConfigError(f"init_from={init_from}: no such checkpoint file or run dir")
        try:
            path = rundir.model_file(str(path.absolute()), outputs_dir, prefer="best")
        except ConfigError as error:  # its line names the key it was given as: ckpt_path
            raise ConfigError(str(error).replace("ckpt_path=", "init_from=", 1)) from None
        checkpoint = Checkpoint.open(path)
        theirs, ours = checkpoint.contents["hyper_parameters"]["model"], {**model, "compile": False}
        classes = (theirs.get("num_classes", 10), ours.get("num_classes", 10))
        weights = cls(checkpoint, classes if classes[0] != classes[1] else None)
        if refusal := weights._misfit(ours):
            raise ConfigError(f"init_from={path}: {refusal}")
        return weights

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    def load_into(self, module: LeNetModule) -> None:
        """Copy the weights into `module`'s network, built from this run's settings (not its head, if rebuilt)."""
        theirs, ours = _layers(self._their_net()), _layers(module.net)
        state = self.checkpoint.contents["state_dict"]
        copied = {
            f"{ours[label][0]}.{name}": state[f"net.{theirs[label][0]}.{name}"]
            for label in self._copied(ours)
            for name in ours[label][1]
        }
        module.net.load_state_dict(copied, strict=False)  # strict would want the rebuilt head too

    def _misfit(self, model: dict) -> str | None:
        """The first layer whose weights differ in shape between the checkpoint and a LeNet of `model`, with both
        shapes, as the rest of a line naming the checkpoint; None when every layer but a rebuilt head fits."""
        with torch.device("meta"):  # allocates nothing
            ours = _layers(LeNetModule(model=model).net)
        theirs = _layers(self._their_net())
        for label in [*self._copied(ours), *(label for label in theirs if label not in ours)]:
            if _shapes(theirs.get(label)) != _shapes(ours.get(label)):
                settings = self.checkpoint.contents["hyper_parameters"]["model"]
                return (
                    f"its weights do not fit this run's {_lenet(model)}: its {label} is {_shapes(theirs.get(label))} "
                    f"there, {_shapes(ours.get(label))} here. Only the head may differ (model.num_classes): build the "
                    f"model it was trained as, {_lenet(settings)}"
                )
        return None

    def _their_net(self) -> nn.Module:
        with torch.device("meta"):
            return LeNetModule(model={**self.checkpoint.contents["hyper_parameters"]["model"], "compile": False}).net

    def _copied(self, ours: dict) -> list[str]:
        """This run's layers that take the checkpoint's weights: all but a rebuilt head (the last linear layer)."""
        head = [label for label in ours if label.startswith("fc")][-1]
        return [label for label in ours if not (self.head and label == head)]


LAYER_KINDS = {nn.Conv2d: "conv", nn.Linear: "fc", nn.BatchNorm2d: "norm", nn.BatchNorm1d: "norm"}


def _layers(net: nn.Module) -> dict[str, tuple[str, dict[str, torch.Size]]]:
    """LeNet's layers that hold weights by their names (conv1, conv2, fc1, ..., norm1, ...), in order: each with its
    name in `net` (its index) and its weights' shapes."""
    counts, layers = Counter(), {}
    for place, layer in net.named_children():
        if kind := LAYER_KINDS.get(type(layer)):
            counts[kind] += 1
            layers[f"{kind}{counts[kind]}"] = (place, {name: w.shape for name, w in layer.state_dict().items()})
    return layers


def _shapes(layer: tuple[str, dict[str, torch.Size]] | None) -> str:
    """A layer's weights and their shapes: "weight 6x1x5x5, bias 6"; "absent"."""
    if layer is None:
        return "absent"
    return ", ".join(f"{name} {'x'.join(map(str, shape)) or 'a scalar'}" for name, shape in layer[1].items())


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
            # Only a checkpoint of this callback's (best.ckpt, best-v1.ckpt): the path is the checkpoint's text.
            ours = best.suffix == self.FILE_EXTENSION and best.stem.startswith(self.filename or "")
            if ours and best.is_file():
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
