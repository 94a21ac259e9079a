"""What a run reports: one start line, hparams for TensorBoard's HPARAMS tab, throughput, and `metrics.json`."""

import json
import logging
import re
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lenet import environment

log = logging.getLogger(__name__)

# Final values shown in TensorBoard's HPARAMS tab. Separate tags, because placeholders logged
# under `val/acc` itself would put a bogus point at step 0 of its curve.
HPARAM_METRICS = {"hp/val_acc": "val/acc", "hp/val_acc_best": "val/acc_best", "hp/test_acc": "test/acc"}


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
        config: dict | None = None,
    ):
        self.path, self.hparams, self.resumed, self.command = Path(run_dir) / "metrics.json", hparams, resumed, command
        self.config = config
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
        for logger in self._tensorboards(trainer):
            logger.log_hyperparams(self.hparams, dict.fromkeys(HPARAM_METRICS, 0.0))

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
        for logger in self._tensorboards(trainer):
            logger.log_metrics(final, step=trainer.global_step)
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
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} thread{'s' * (threads > 1)}"
    )
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


def hparams_of(cfg) -> dict:
    """The same keys for every run, whatever its optimizer or scheduler, so runs line up in HPARAMS."""
    scheduler = cfg.scheduler.get("_target_", "none") if cfg.scheduler else "none"
    return {
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
