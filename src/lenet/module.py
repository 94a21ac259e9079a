"""LeNet in a LightningModule: loss, per-stage accuracy, optimizer and LR schedule from the config."""

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

# Schedulers whose length is the whole run, counted in optimizer steps: the keyword that takes it.
RUN_LENGTH_ARGUMENT = {
    "torch.optim.lr_scheduler.OneCycleLR": "total_steps",
    "torch.optim.lr_scheduler.CosineAnnealingLR": "T_max",
}


class LeNetModule(L.LightningModule):
    """Takes plain dicts (Hydra configs with `_target_`), so checkpoints reload without the config files.

    `model` builds the network; `optimizer` and `scheduler` are `_partial_` configs completed with the
    parameters and the optimizer. An empty `scheduler` means a constant learning rate.
    """

    def __init__(self, model: dict, optimizer: dict, scheduler: dict | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run logs its own, comparable hparams
        model = dict(model)
        compile_model, self.channels_last = model.pop("compile", False), model.pop("channels_last", False)
        self.net = instantiate(model)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile_model:
            self.net.compile()  # in place: checkpoints keep the plain parameter names
        classes = model.get("num_classes", 10)
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(classes, average="micro") for _ in "123")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best so far
        self.test_confusion = MulticlassConfusionMatrix(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        # Metric objects accumulate on the device; Lightning computes them once per epoch (no per-step sync).
        getattr(self, f"{stage}_loss").update(loss.detach(), len(labels))
        getattr(self, f"{stage}_acc").update(logits.detach(), labels)
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), on_step=False, on_epoch=True, prog_bar=True)
        if stage == "test":
            self.test_confusion.update(logits, labels)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self):
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                figure, _ = self.test_confusion.plot(labels=list(range(self.test_confusion.num_classes)))
                logger.experiment.add_figure("test/confusion_matrix", figure, self.global_step)
        self.test_confusion.reset()

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        target = self.hparams.scheduler["_target_"]
        length = RUN_LENGTH_ARGUMENT.get(target)
        extra = {length: self.trainer.estimated_stepping_batches} if length else {}
        scheduler = instantiate(self.hparams.scheduler)(optimizer, **extra)
        interval = "step" if length else "epoch"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
