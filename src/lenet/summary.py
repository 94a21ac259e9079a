"""What a run reports: one start line, hparams for TensorBoard's HPARAMS tab, throughput, and `metrics.json`."""

import json
import logging
import re
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import summary as summary_pb

from lenet import environment
from lenet.runs import not_recipe

log = logging.getLogger(__name__)

# Final values shown in TensorBoard's HPARAMS tab, each logged once when the run ends (absent when it has none).
HPARAM_METRICS = {"hp/val_acc": "val/acc", "hp/val_acc_best": "val/acc_best", "hp/test_acc": "test/acc"}
# The names every run's hparams have, by the config key (or group) they come from. A key set on the command line
# shows under its name here, any other under its own (data.augment).
HPARAM_NAMES = {
    "data": "dataset", "data.dataset": "dataset", "data.batch_size": "batch_size", "optimizer": "optimizer",
    "optimizer.lr": "lr", "optimizer.weight_decay": "weight_decay", "optimizer.momentum": "momentum",
    "optimizer.betas": "momentum", "scheduler": "scheduler", "trainer.max_epochs": "max_epochs",
    "model.activation": "activation", "model.pooling": "pooling", "model.batch_norm": "batch_norm",
    "model.dropout": "dropout", "seed": "seed",
}  # fmt: skip


class RunSummary(L.Callback):
    """Says what runs where, logs `hparams` once, times training, and writes `metrics.json` after testing.

    It also records what a run is: `env.json` (lenet.environment), and the whole config in every checkpoint.

    `metrics.json` holds every final metric under its logged name, the test confusion matrix, the data it used
    (dataset, root, split sizes), and the timings.
    """

    def __init__(
        self,
        run_dir: Path,
        hparams: dict | None = None,
        resumed: tuple[Path | None, int] = (None, 0),
        command: str | None = None,
        shown: set[str] = frozenset(),
        config: dict | None = None,
    ):
        self.path, self.hparams, self.resumed, self.command = Path(run_dir) / "metrics.json", hparams, resumed, command
        self.shown, self.session_end, self.config = shown, None, config
        self.started = time.perf_counter()
        self.train_s, self.train_images, self._epoch_started = 0.0, 0, None
        self.metrics: dict = {}

    def _tensorboards(self, trainer):
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def on_fit_start(self, trainer, module):
        checkpoint, done = self.resumed
        resuming = f" Resuming {checkpoint} after epoch {done}." if checkpoint else ""
        run = f" Run dir: {self.path.parent}."
        self._say(trainer, f"Training on {where(trainer)}: {data_line(trainer.datamodule)}.{resuming}{run}")
        self._record_environment(trainer)
        for logger in self._tensorboards(trainer) if trainer.is_global_zero else ():
            self.session_end = log_hparams(logger, self.hparams, self.shown)

    # Training time excludes validation, which Lightning runs inside the training epoch.
    def on_train_epoch_start(self, trainer, module):
        self._epoch_started = time.perf_counter()

    def _stop_clock(self):
        if self._epoch_started is not None:
            self.train_s += time.perf_counter() - self._epoch_started
            self._epoch_started = None

    def on_validation_start(self, trainer, module):
        self._stop_clock()

    def on_train_epoch_end(self, trainer, module):
        # Runs before the module's own hook, which resets its totals; counted here, not in a per-batch hook.
        self._stop_clock()
        self.train_images += module.totals["train"].images * trainer.world_size  # every rank trains on as many

    def on_fit_end(self, trainer, module):
        self._stop_clock()
        self.metrics.update(_floats(trainer.callback_metrics))
        self.metrics["epochs"] = trainer.current_epoch

    def on_test_start(self, trainer, module):
        if trainer.state.fn == "test" and not self.metrics:  # lenet.eval: no fit said it
            self._say(trainer, f"Testing on {where(trainer)}: {data_line(trainer.datamodule)}")
            self._record_environment(trainer)

    def on_test_end(self, trainer, module):
        self.metrics.update(_floats(trainer.callback_metrics))
        self.metrics["test/confusion_matrix"] = module.test_counts.tolist()
        self.metrics["data"] = trainer.datamodule.describe()
        self.metrics["wall_s"] = round(time.perf_counter() - self.started, 3)
        if self.train_s:
            self.metrics["train_images_per_s"] = round(self.train_images / self.train_s, 1)
        final = {tag: self.metrics[name] for tag, name in HPARAM_METRICS.items() if name in self.metrics}
        for logger in self._tensorboards(trainer) if trainer.is_global_zero else ():
            logger.log_metrics(final, step=trainer.global_step)
            if self.session_end:  # HPARAMS' status: success; a run that never gets here stays "unknown"
                logger.experiment._get_file_writer().add_summary(self.session_end)
        if trainer.is_global_zero:
            self.path.write_text(to_json(self.metrics))
            self._say(trainer, f"{result_line(self.metrics)}\nRun outputs: {self.path.parent.resolve()}")

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["config"] = self.config  # what a resume is checked against (lenet.checkpoint.check_resume)

    def _record_environment(self, trainer) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            environment.write(self.path.parent / "env.json", self.command, trainer.strategy.root_device)

    @staticmethod
    def _say(trainer, line: str) -> None:
        if trainer.is_global_zero:
            log.info(line)


def where(trainer) -> str:
    """The device, and the processes or threads that run on it."""
    device = trainer.strategy.root_device
    threads = torch.get_num_threads()
    name = environment.device_name(device) if device.type == "cuda" else f"cpu, {threads} thread{'s' * (threads > 1)}"
    return f"{name}, {trainer.world_size} processes" if trainer.world_size > 1 else name


def data_line(datamodule) -> str:
    data = datamodule.describe()
    sizes = ", ".join(f"{data[f'{split}_images']:,} {split}" for split in ("train", "val", "test"))
    return f"{data['dataset']} from {data['root']} ({sizes} images)"


def result_line(metrics: dict) -> str:
    finals = "  ".join(f"{name} {metrics[name]:.4f}" for name in ("val/acc_best", "test/acc") if name in metrics)
    if "epochs" not in metrics:
        return finals
    speed = metrics.get("train_images_per_s", 0)
    epochs = f"{metrics['epochs']} epoch{'s' * (metrics['epochs'] != 1)}"
    return f"{finals}  ({epochs}, {metrics['wall_s']:.1f} s, {speed:,.0f} train images/s)"


def to_json(metrics: dict) -> str:
    """Indented JSON with each list of numbers (a confusion-matrix row) on one line."""
    text = json.dumps(metrics, indent=2, sort_keys=True)
    return re.sub(r"\[\s+([-\d.,\se]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def _floats(metrics) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def hparams_of(cfg, overrides: list[str] = ()) -> dict:
    """The same keys for every run, whatever its optimizer or scheduler, so runs line up in HPARAMS; and each key
    `overrides` (the job's command line) sets, the same in every job of a sweep."""
    scheduler = cfg.scheduler.get("_target_", "none") if cfg.scheduler else "none"
    hparams = {
        "dataset": cfg.data.dataset,
        "batch_size": cfg.data.batch_size,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.get("weight_decay", 0.0),
        "momentum": cfg.optimizer.get("momentum", cfg.optimizer.get("betas", [0.0])[0]),  # SGD's, or Adam's beta1
        "scheduler": scheduler.rsplit(".", 1)[-1],
        "max_epochs": cfg.trainer.max_epochs,
        "activation": cfg.model.activation,
        "pooling": cfg.model.pooling,
        "batch_norm": cfg.model.batch_norm,
        "dropout": cfg.model.dropout,
        "seed": cfg.seed,
    }
    for key, value in map(_key_value, overrides):
        if key and HPARAM_NAMES.get(key, key) not in hparams:
            setting = OmegaConf.select(cfg, key, default=None)  # the composed value; a group's: its option's name
            hparams[key] = setting if isinstance(setting, int | float | str) else str(value)
    return hparams


def shown_hparams(overrides: list[str], swept: set[str]) -> set[str]:
    """The hparams TensorBoard shows first: a sweep's swept keys, or in a single run those its command line set."""
    keys = swept or {key for key, _ in map(_key_value, overrides)}
    return {HPARAM_NAMES.get(key, key) for key in keys if key and not not_recipe(key)}


def _key_value(override: str) -> tuple[str | None, str]:
    """("optimizer.lr", "0.1") from "optimizer.lr=0.1" (or "+optimizer.lr=0.1"); None for a deletion or a key that
    says where or how the run goes (lenet.runs.NOT_RECIPE), not what it trains."""
    key, _, value = override.partition("=")
    key = key.lstrip("+")
    return (None if key.startswith("~") or not_recipe(key) else key), value


def overrides_and_swept() -> tuple[list[str], set[str]]:
    """This job's overrides, and the keys its multirun sweeps: several values on the sweep's command line (Hydra's
    basic sweeper saves it in multirun.yaml) or a search space (hydra.sweeper.params, e.g. Optuna's)."""
    if not HydraConfig.initialized():
        return [], set()
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return list(hydra.overrides.task), set()
    swept = set(hydra.sweeper.get("params") or {})
    sweep = Path(hydra.sweep.dir) / "multirun.yaml"
    if sweep.is_file():
        parsed = OverridesParser.create().parse_overrides(list(OmegaConf.load(sweep).hydra.overrides.task))
        swept |= {override.key_or_group for override in parsed if override.is_sweep_override()}
    return list(hydra.overrides.task), swept


def log_hparams(logger: TensorBoardLogger, hparams: dict, shown: set[str]):
    """TensorBoard's HPARAMS summaries of this run, and no scalar: the metrics get their one point when the run ends.
    Returns the summary that marks the run finished, to be written when it is.

    TensorBoard takes the table's columns from one run's experiment summary (so every run of a sweep logs the same
    hparams and metric names), sorts the hparams marked `differs` first, then by name, and ticks the first five.
    """
    logger.log_hyperparams(hparams)  # hparams.yaml: with no metrics Lightning writes no summary and no scalar
    plain = {key: value if isinstance(value, int | float | str) else str(value) for key, value in hparams.items()}
    experiment, start, end = summary_pb.hparams(plain, dict.fromkeys(HPARAM_METRICS, 0.0))  # the metrics' names only
    content = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in shown
    content.content = data.SerializeToString()
    writer = logger.experiment._get_file_writer()  # how Lightning's own log_hyperparams writes them
    writer.add_summary(experiment)
    writer.add_summary(start)
    return end
