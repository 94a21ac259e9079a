"""How far a run has trained, in its run dir's holder.json (lenet.runs.holder): `lenet.report` shows a running job of
a sweep as "running (epoch N of M)" from it, on any node that sees the run dir."""

from pathlib import Path

import lightning as L

from lenet.runs import holder


class Progress(L.Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_train_start(self, trainer, module) -> None:
        self._say(trainer, trainer.current_epoch)  # a resumed run starts where it was

    def on_train_epoch_end(self, trainer, module) -> None:
        self._say(trainer, trainer.current_epoch + 1)

    def _say(self, trainer, epochs: int) -> None:
        if trainer.is_global_zero:
            holder.progress(self.run_dir, epochs, trainer.max_epochs if trainer.max_epochs >= 0 else None)
