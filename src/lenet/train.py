"""Train LeNet: `python -m lenet.train [overrides]`, or `-m` for a Hydra multirun sweep."""

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lenet.config import CONFIG_DIR, ConfigError, checkpoint_file, validate
from lenet.console import UserError, in_multirun, report_user_errors
from lenet.module import LeNetModule
from lenet.summary import RunSummary, hparams_of

log = logging.getLogger(__name__)


class Interrupted(UserError):
    """Ctrl-C or SIGTERM stopped training."""

    exit_status = 130  # 128 + the signal, as shells report it: 130 for SIGINT, 143 for SIGTERM


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write `metrics.json` in `cfg.run_dir`; return the final metrics."""
    validate(cfg)
    resume = checkpoint_file(cfg.ckpt_path, Path(cfg.outputs_dir))
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
    refuse_spawned_ddp_in_multirun(trainer)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except SystemExit as stop:  # how Lightning ends fit on Ctrl-C (status 1) and on SIGTERM (status 0)
        interrupted = Interrupted(resume_hint(run_dir))
        interrupted.exit_status = 143 if isinstance(stop, SIGTERMException) else 130
        raise interrupted from None
    best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
    trainer.test(module, datamodule=datamodule, ckpt_path="best" if best else None, verbose=False)

    metrics = summary.metrics
    finals = "  ".join(f"{name} {metrics[name]:.4f}" for name in ("val/acc_best", "test/acc") if name in metrics)
    speed = f"{metrics['epochs']} epochs, {metrics['wall_s']:.1f} s, {metrics['train_images_per_s']:.0f} train images/s"
    log.info("%s  (%s)", finals, speed)
    log.info("Run outputs: %s", run_dir.resolve())
    return metrics


def refuse_spawned_ddp_in_multirun(trainer: L.Trainer) -> None:
    """Lightning starts DDP's other ranks by re-running this command line, which in a multirun is the whole sweep.

    Ranks that SLURM starts (hydra/launcher=slurm with tasks_per_node = trainer.devices) are fine.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if in_multirun() and trainer.world_size > 1 and not (environment and environment.creates_processes_externally):
        raise ConfigError(
            f"DDP over {trainer.world_size} processes cannot run inside a multirun: each extra rank would re-run "
            "the whole sweep. Sweep with one device per job, or run DDP as a single run or via hydra/launcher=slurm"
        )


def resume_hint(run_dir: Path) -> str:
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return "interrupted before the first epoch ended: nothing was saved to resume from"
    epochs = torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1
    return f"interrupted; {epochs} epoch(s) saved. Resume with the same overrides plus ckpt_path={last}"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    """Returns the best validation accuracy, the value Hydra sweepers optimize."""
    return train(cfg).get("val/acc_best")


if __name__ == "__main__":
    main()
