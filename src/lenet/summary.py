"""What a run reports: hparams for TensorBoard's HPARAMS tab, throughput, and `metrics.json`."""

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

# Final values shown in TensorBoard's HPARAMS tab. Separate tags, because placeholders logged
# under `val/acc` itself would put a bogus point at step 0 of its curve.
HPARAM_METRICS = {"hp/val_acc": "val/acc", "hp/val_acc_best": "val/acc_best", "hp/test_acc": "test/acc"}


class RunSummary(L.Callback):
    """Logs `hparams` once, times training, and writes every final metric to `path` after testing."""

    def __init__(self, path: Path, hparams: dict):
        self.path, self.hparams = Path(path), hparams
        self.started = time.perf_counter()
        self.train_s, self.train_images, self._epoch_started = 0.0, 0, None
        self.metrics: dict[str, float] = {}

    def _tensorboards(self, trainer):
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def on_fit_start(self, trainer, module):
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
        self._stop_clock()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.train_images += len(batch[1]) * trainer.world_size  # every rank trains on as many

    def on_fit_end(self, trainer, module):
        self._stop_clock()
        self.metrics.update(_floats(trainer.callback_metrics))
        self.metrics["epochs"] = trainer.current_epoch

    def on_test_end(self, trainer, module):
        self.metrics.update(_floats(trainer.callback_metrics))
        self.metrics["wall_s"] = round(time.perf_counter() - self.started, 3)
        self.metrics["train_images_per_s"] = round(self.train_images / self.train_s, 1) if self.train_s else 0.0
        final = {tag: self.metrics[name] for tag, name in HPARAM_METRICS.items() if name in self.metrics}
        for logger in self._tensorboards(trainer):
            logger.log_metrics(final, step=trainer.global_step)
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.metrics, indent=2, sort_keys=True) + "\n")


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
        "momentum": cfg.optimizer.get("momentum", 0.0),
        "scheduler": scheduler.rsplit(".", 1)[-1],
        "max_epochs": cfg.trainer.max_epochs,
        "activation": cfg.model.activation,
        "pooling": cfg.model.pooling,
        "batch_norm": cfg.model.batch_norm,
        "dropout": cfg.model.dropout,
        "seed": cfg.seed,
    }
