"""Train LeNet: `python -m lenet.train [overrides]`, or `-m` for a Hydra multirun sweep."""

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lenet.config import CONFIG_DIR, ConfigError, validate
from lenet.console import report_user_errors
from lenet.module import LeNetModule
from lenet.summary import RunSummary, hparams_of

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write `metrics.json` in `cfg.run_dir`; return the final metrics."""
    validate(cfg)
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible here; use trainer=cpu or trainer=default")
    resume = cfg.ckpt_path and Path(cfg.ckpt_path)
    if resume and not resume.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    run_dir = Path(cfg.run_dir)
    summary = RunSummary(run_dir / "metrics.json", hparams_of(cfg))
    datamodule = instantiate(cfg.data)
    plain = OmegaConf.to_container(cfg, resolve=True)  # checkpoints must hold plain containers
    module = LeNetModule(model=plain["model"], optimizer=plain["optimizer"], scheduler=plain["scheduler"])
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback] + [summary]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume or None)
    best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
    trainer.test(module, datamodule=datamodule, ckpt_path="best" if best else None, verbose=False)

    metrics = summary.metrics
    finals = "  ".join(f"{name} {metrics[name]:.4f}" for name in ("val/acc_best", "test/acc") if name in metrics)
    speed = f"{metrics['epochs']} epochs, {metrics['wall_s']:.1f} s, {metrics['train_images_per_s']:.0f} train images/s"
    log.info("%s  (%s)", finals, speed)
    log.info("Run outputs: %s", run_dir.resolve())
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    """Returns the best validation accuracy, the value Hydra sweepers optimize."""
    return train(cfg).get("val/acc_best")


if __name__ == "__main__":
    main()
