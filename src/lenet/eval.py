"""Test a checkpoint: `python -m lenet.eval ckpt_path=outputs/<run>/checkpoints/best.ckpt`.

The model and the data settings come from the checkpoint; `data.root` and `data.eval_batch_size` may
be overridden (e.g. the data now lives elsewhere). Writes `metrics.json` to its own run dir.
"""

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from lenet.cli import command
from lenet.console import quiet_lightning, this_command

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    # Imported here: `--help` and `--cfg` run this module's imports, and these take seconds.
    from hydra.utils import instantiate

    from lenet.checkpoint import Checkpoint, checkpoint_file, given_settings
    from lenet.config import validate
    from lenet.summary import RunSummary

    cfg.data = given_settings(cfg.data)
    validate(cfg)
    quiet_lightning()
    checkpoint = Checkpoint.open(checkpoint_file(cfg.ckpt_path, Path(cfg.outputs_dir)))
    module, datamodule = checkpoint.module(), checkpoint.datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.load()
    summary = RunSummary(Path(cfg.run_dir), command=this_command("eval"))
    interactive = sys.stdout.isatty()
    trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[summary], enable_checkpointing=False, enable_progress_bar=interactive
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    warn_if_other_data(checkpoint.path, checkpoint.trained_on, summary.metrics["data"])
    return summary.metrics


def warn_if_other_data(ckpt: Path, trained_on: dict, data: dict) -> None:
    """A checkpoint tested on another data set (Fashion-MNIST's on MNIST's files) gets a number that means nothing."""
    if trained_on and trained_on["test_labels_sha256"] != data["test_labels_sha256"]:
        log.warning(
            "The test images in %s are not those %s was made with (%s from %s): its test/acc here measures other data",
            data["root"], ckpt, trained_on["dataset"], trained_on["root"],
        )  # fmt: skip


@command("eval")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["test/acc"]


if __name__ == "__main__":
    main()
