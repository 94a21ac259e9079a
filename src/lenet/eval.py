"""Test a checkpoint: `python -m lenet.eval ckpt_path=outputs/<run>/checkpoints/best.ckpt`.

The model and the data settings come from the checkpoint; `data.root` and `data.eval_batch_size` may
be overridden (e.g. the data now lives elsewhere). Writes `metrics.json` to its own run dir.
"""

import json
import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from lenet.config import CONFIG_DIR, checkpoint_file, validate
from lenet.console import report_user_errors
from lenet.data import MNISTDataModule
from lenet.module import LeNetModule

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    validate(cfg)
    ckpt = checkpoint_file(cfg.ckpt_path, Path(cfg.outputs_dir))
    module = LeNetModule.load_from_checkpoint(ckpt, map_location="cpu")
    overrides = {key: value for key, value in cfg.data.items() if value is not None}
    datamodule = MNISTDataModule.load_from_checkpoint(ckpt, **overrides)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    metrics = {name: float(value) for name, value in trainer.test(module, datamodule=datamodule)[0].items()}
    out = Path(cfg.run_dir) / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("test/acc %.4f on %s; written to %s", metrics["test/acc"], ckpt, out.resolve())
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["test/acc"]


if __name__ == "__main__":
    main()
