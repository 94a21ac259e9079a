"""Train LeNet: `python -m lenet.train [overrides]`, or `-m` for a Hydra multirun sweep."""

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lenet.cli import command
from lenet.console import UserError, in_multirun, quiet_lightning, this_command

log = logging.getLogger(__name__)


class Interrupted(UserError):
    """Ctrl-C or SIGTERM stopped training."""

    exit_status = 130  # 128 + the signal, as shells report it: 130 for SIGINT, 143 for SIGTERM


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write `metrics.json` in `cfg.run_dir`; return the final metrics."""
    from lenet.config import ConfigError, spawned_ddp, validate

    validate(cfg)  # before the imports below: a mistyped value is refused in a fraction of a second
    # Imported here: `--help`, `--cfg` and every tab-completion query run this module's imports, and these take seconds.
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar, WeightAveraging
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lenet.checkpoint import check_resume, checkpoint_file
    from lenet.module import LeNetModule
    from lenet.summary import RunSummary, hparams_of, overrides_and_swept, shown_hparams

    quiet_lightning()

    plain = OmegaConf.to_container(cfg, resolve=True)  # checkpoints must hold plain containers
    resume = checkpoint_file(cfg.ckpt_path, Path(cfg.outputs_dir), prefer="last")
    done = check_resume(resume, plain) if resume else 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    run_dir = Path(cfg.run_dir)
    datamodule = instantiate(cfg.data, num_classes=cfg.model.num_classes)
    datamodule.prepare_data()
    datamodule.load()  # every data error comes now, before the run writes anything
    module = LeNetModule(model=plain["model"], optimizer=plain["optimizer"], scheduler=plain["scheduler"])
    overrides, swept = overrides_and_swept()
    hparams, shown = hparams_of(cfg, overrides), shown_hparams(overrides, swept)
    summary = RunSummary(run_dir, hparams, (resume, done), this_command("train"), shown=shown, config=plain)
    # Piped or logged output gets no progress bar: it would be carriage returns, kilobytes of them per run.
    interactive = sys.stdout.isatty()
    callbacks = {name: instantiate(callback) for name, callback in cfg.callbacks.items() if callback}
    callbacks = {name: c for name, c in callbacks.items() if interactive or not isinstance(c, ProgressBar)}
    trainer = instantiate(
        cfg.trainer,
        logger=[instantiate(logger) for logger in cfg.logger.values()] or False,
        callbacks=[*callbacks.values(), summary],
        enable_progress_bar=interactive,
    )
    if in_multirun() and (refusal := spawned_ddp(trainer)):
        raise ConfigError(refusal)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    except SystemExit as stop:  # how Lightning ends fit on Ctrl-C (status 1) and on SIGTERM (status 0)
        interrupted = Interrupted(resume_hint(run_dir))
        interrupted.exit_status = 143 if isinstance(stop, SIGTERMException) else 130
        raise interrupted from None
    best = callbacks.get("checkpoint")
    best_path = best.best_model_path if best else None  # None: the final weights (experiment=seed has no validation)
    # callbacks=ema: Lightning's WeightAveraging, meeting a checkpoint it wrote, loads the trained weights saved beside
    # the average; the test would measure those, not the average that was validated and saved. Test without it.
    trainer.callbacks = [callback for callback in trainer.callbacks if not isinstance(callback, WeightAveraging)]
    trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False, weights_only=True)
    return summary.metrics


def resume_hint(run_dir: Path) -> str:
    from lenet.checkpoint import Checkpoint

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return "interrupted before the first epoch ended: nothing was saved to resume from"
    epochs = Checkpoint.open(last).epochs
    command = this_command("train", extra=(f"ckpt_path={last}",))
    if not command:
        return f"interrupted; {epochs} epoch(s) saved. Resume with the same overrides plus ckpt_path={last}"
    return f"interrupted; {epochs} epoch(s) saved. Resume: {command}"


@command("config")
def main(cfg: DictConfig) -> float | None:
    """Returns the best validation accuracy, the value Hydra sweepers optimize."""
    return train(cfg).get("val/acc_best")


if __name__ == "__main__":
    main()
