"""LeNet in a LightningModule: loss, per-stage accuracy, optimizer and LR schedule from the config."""

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from lenet.frame.errors import ConfigError, UserError
from lenet.training import misclassified
from lenet.training.network import LeNet

STAGES = ("train", "val", "test")
# Images per forward pass when validating or testing on the CPU. Each image's logits are its own (no gradients, batch
# norm on its running statistics), so chunks give the same logits as one pass; but a 1000-image pass's activations
# (1000 x 6 x 24 x 24 floats: 14 MB per layer) stay in glibc's heap once freed, tens of MB for the rest of the process.
EVAL_CHUNK = 256
# The one network lenet builds, conf/model/lenet.yaml's `_target_`: a model's settings choose its options, never its
# class (a checkpoint's settings are a stranger's text).
LENET = f"{LeNet.__module__}.{LeNet.__qualname__}"


class Diverged(UserError):
    """The training loss became NaN or infinite."""


# Schedulers whose length is the whole run, counted in optimizer steps: the keyword that takes it.
RUN_LENGTH_ARGUMENT = {
    "torch.optim.lr_scheduler.OneCycleLR": "total_steps",
    "torch.optim.lr_scheduler.CosineAnnealingLR": "T_max",
}


class EpochTotals:
    """A stage's summed loss, right answers and images over an epoch, kept on the device: no host sync per step.

    Plain tensors rather than torchmetrics' MeanMetric and MulticlassAccuracy, whose bookkeeping took 90 us of
    every training step (4% at batch 64 on a CPU); these take 10. `compute` sums them over DDP ranks.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss = self.correct = None
        self.images = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.loss is None:
            self.loss = torch.zeros((), device=loss.device)
            self.correct = torch.zeros((), dtype=torch.long, device=loss.device)
        self.loss.add_(loss.detach(), alpha=len(labels))
        self.correct.add_((logits.argmax(dim=1) == labels).sum())
        self.images += len(labels)

    def compute(self, strategy) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's mean loss and accuracy, over every rank's images."""
        images = torch.tensor(float(self.images), device=self.loss.device)
        loss, correct, images = strategy.reduce(torch.stack([self.loss, self.correct.float(), images]), reduce_op="sum")
        return loss / images, correct / images


class LeNetModule(L.LightningModule):
    """Takes plain dicts, so checkpoints reload without the config files.

    `model` holds LeNet's settings (conf/model/lenet.yaml; a `_target_` there may only name LeNet); `optimizer` and
    `scheduler` are `_partial_` configs completed with the parameters and the optimizer, from the run's own config:
    a module rebuilt from a checkpoint gets none (lenet.training.checkpoints), so nothing a file names is ever
    instantiated.
    An empty `scheduler` means a constant learning rate.
    """

    def __init__(self, model: dict, optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run logs its own, comparable hparams
        model = dict(model)
        if (target := model.pop("_target_", LENET)) != LENET:
            raise ConfigError(f"model._target_={target} is not allowed: lenet builds its own network, {LENET}")
        compile_model, self.channels_last = model.pop("compile", False), model.pop("channels_last", False)
        self.net = LeNet(**model)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile_model:
            self.net.compile()  # in place: checkpoints keep the plain parameter names
        classes = model.get("num_classes", 10)
        self.totals = {stage: EpochTotals() for stage in STAGES}  # loss and accuracy, logged once per epoch
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best so far
        self.test_confusion = MulticlassConfusionMatrix(classes, validate_args=False)
        self.test_misclassified = misclassified.Misclassified()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images) if stage == "train" else self._evaluate(images)
        loss = F.cross_entropy(logits, labels)
        self.totals[stage].update(loss, logits, labels)
        if stage == "test":
            self.test_confusion.update(logits, labels)
            self.test_misclassified.update(images, logits, labels)
        return loss

    def _evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of a validation or test batch; on the CPU, EVAL_CHUNK images at a time."""
        if images.device.type != "cpu" or len(images) <= EVAL_CHUNK:
            return self(images)
        return torch.cat([self(chunk) for chunk in images.split(EVAL_CHUNK)])

    def _log_epoch(self, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Log `{stage}/loss` and `{stage}/acc` for the epoch, start the next one afresh; return both."""
        loss, acc = self.totals[stage].compute(self.trainer.strategy)
        self.totals[stage].reset()
        # The values are already summed over DDP ranks; sync_dist only tells Lightning so.
        self.log(f"{stage}/loss", loss, sync_dist=True)
        self.log(f"{stage}/acc", acc, prog_bar=True, sync_dist=True)
        return loss, acc

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_train_epoch_end(self):
        loss, _ = self._log_epoch("train")
        if not torch.isfinite(loss):  # the sum keeps NaNs: one NaN step shows here
            raise Diverged(f"the training loss is {loss.item()} in epoch {self.current_epoch}: lower optimizer.lr")

    def on_validation_epoch_end(self):
        _, accuracy = self._log_epoch("val")
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(accuracy)
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self):
        self._log_epoch("test")
        self.test_counts = self.test_confusion.compute()  # true class x predicted class, over all ranks
        wrong = self.test_misclassified.compute()  # every rank's most confident errors, gathered
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                figure, _ = self.test_confusion.plot(labels=self._class_names())
                logger.experiment.add_figure("test/confusion_matrix", figure, self.global_step)
                if self.trainer.is_global_zero and len(wrong[0]):
                    grid = self._misclassified_grid(*wrong)
                    logger.experiment.add_image("test/misclassified", grid, self.global_step, dataformats="HWC")
        self.test_confusion.reset()
        self.test_misclassified.reset()

    def _class_names(self) -> list[str]:
        """One per output: the data's class names (a model with more outputs than names numbers the rest)."""
        names = list(self.trainer.datamodule.hparams.classes)
        return names + [str(i) for i in range(len(names), self.test_confusion.num_classes)]

    def _misclassified_grid(self, *wrong):
        data = self.trainer.datamodule.hparams
        return misclassified.grid(*wrong, self._class_names(), data.mean, data.std)

    def setup(self, stage: str):
        self.seed_this_rank()

    def seed_this_rank(self) -> None:
        """Every DDP rank starts from the same seed; ranks other than 0 need dropout masks of their own."""
        if self.global_rank:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def configure_optimizers(self):
        if not self.hparams.optimizer:  # rebuilt from a checkpoint: it tests and predicts, it does not train
            raise RuntimeError("a LeNetModule without an optimizer's config cannot train")
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        target = self.hparams.scheduler["_target_"]
        length = RUN_LENGTH_ARGUMENT.get(target)
        extra = {length: self.trainer.estimated_stepping_batches} if length else {}
        check_one_cycle(self.hparams.scheduler, extra.get("total_steps"))
        scheduler = instantiate(self.hparams.scheduler)(optimizer, **extra)
        interval = "step" if length else "epoch"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def check_one_cycle(scheduler: dict, total_steps: int | None) -> None:
    """OneCycleLR divides by its warm-up's length less one step: a warm-up of exactly one step (pct_start x steps
    = 1, e.g. 0.2 of a 5-step run) ends in torch's ZeroDivisionError."""
    warm_up = scheduler.get("pct_start", 0.3) * (total_steps or 0)
    if scheduler["_target_"].endswith("OneCycleLR") and abs(warm_up - 1) < 1e-9:
        raise UserError(
            f"scheduler=onecycle's warm-up is exactly 1 of the run's {total_steps} steps (scheduler.pct_start="
            f"{scheduler.get('pct_start', 0.3)}), which OneCycleLR cannot take: change scheduler.pct_start, "
            "trainer.max_epochs or data.batch_size"
        )
