"""What users see on the console: one line for their mistakes, none of Lightning's noise."""

import contextlib
import functools
import logging
import os
import shlex
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode

log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem the user can fix (a bad value, missing files): reported as one line, no traceback."""

    exit_status = 1


class SweepError(CompactHydraException):
    """Ends a sweep with one line: Hydra prints this kind of exception without a traceback."""


def report_user_errors(task):
    """Wrap a Hydra task so a UserError ends the process with one line and a non-zero exit status.

    The line also goes into the run's log; a run refused before it wrote anything but that log leaves no run dir.
    HYDRA_FULL_ERROR=1 shows the full traceback instead, as it does for Hydra's own errors. In a multirun the error
    is logged and raised instead: Hydra marks that job failed, runs the others, then exits non-zero. An
    interruption (exit status above 1) still ends the whole sweep.
    """

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if in_multirun() and error.exit_status == 1:
                log.error("error: %s", error)  # into the job's log, where the sweep report finds it
                raise SweepError(f"error: {error}") from error
            _log_to_file(f"error: {error}")
            _remove_if_empty(Path(HydraConfig.get().runtime.output_dir), Path(cfg.get("outputs_dir", "outputs")))
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(error.exit_status) from None

    return wrapper


def _log_to_file(message: str) -> None:
    """Into the run's log file only: the console gets the line on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _remove_if_empty(run_dir: Path, outputs_dir: Path) -> None:
    """A run dir holding only Hydra's .hydra/ and the log records nothing but the refusal the user just saw.

    Its parents under outputs_dir (the day's folder, eval/, predict/) go too when it was all they held.
    """
    if not run_dir.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.resolve().parents:
        if parent == outputs_dir.resolve() or not parent.is_relative_to(outputs_dir.resolve()):
            break
        with contextlib.suppress(OSError):
            parent.rmdir()


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`, or a config that sets hydra.mode)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def this_command(task: str, extra: tuple[str, ...] = ()) -> str | None:
    """The command line that runs this Hydra job again (`extra` overrides replacing its own); None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    replaced = {override.split("=", 1)[0] for override in extra}
    overrides = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0] not in replaced]
    return command_line(task, [*overrides, *extra])


def command_line(task: str, overrides: list[str]) -> str:
    """The command that runs `lenet.<task>` with these overrides again; a search's own settings left out."""
    kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(SEARCH_KEYS)]
    return shlex.join(["python", "-m", f"lenet.{task}", *kept])


# Overrides that turn a run into a search (hparams_search=optuna, hparams_search.storage=...): not part of a recipe.
SEARCH_KEYS = ("hparams_search",)

# Lightning's start-up notes: the run's own start line says what matters (device, data, run dir).
LIGHTNING_NOISE = (
    "💡 Tip",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader` to estimate",
    "Restoring states from the checkpoint path",
    "Restored all states from the checkpoint",
    "Loaded model weights from the checkpoint",
    "LOCAL_RANK:",
    "`Trainer.fit` stopped: `max_epochs=",
    "Found current_model_state in the checkpoint",  # callbacks=ema resuming its average
)


# Lightning's warnings that do not apply to lenet: a deprecation Lightning raises against itself, a note on short
# epochs (lenet logs its metrics once per epoch, and the learning rate every log_every_n_steps across epochs), and
# one about a checkpoint's callbacks missing now (a resume may change callbacks; the test runs without callbacks=ema).
def _not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LIGHTNING_NOISE)


LIGHTNING_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches \(\d+\) is smaller",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",
)
# On a Slurm login node (srun installed, no job) Lightning suggests srun on every run. Inside a job (an salloc
# shell, say) the hint can be right: a DDP run started without srun hangs. So it is dropped only outside jobs.
SRUN_HINT = r"The `srun` command is available on your system but is not used"


def lightning_warnings() -> tuple[str, ...]:
    """The messages of Lightning's warnings that do not apply to this process."""
    return LIGHTNING_WARNINGS + (() if "SLURM_JOB_ID" in os.environ else (SRUN_HINT,))


def quiet_lightning() -> None:
    """Drop Lightning's notes the run says better itself, its warnings that do not apply here, and its own console
    handler: its lines reach Hydra's console and log file anyway, and would be printed twice."""
    import lightning  # its import adds the handler

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_noise)  # once, however often called
    for handler in list(logging.getLogger(lightning.__name__).handlers):
        logging.getLogger(lightning.__name__).removeHandler(handler)
    for message in lightning_warnings():
        warnings.filterwarnings("ignore", message=message)


class CheckOutputDir(Callback):
    """Hydra makes the run dir before any task code runs, and fails there with a traceback: try first."""

    def on_run_start(self, config, **kwargs):
        self._make(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs):
        self._make(config.hydra.sweep.dir)

    @staticmethod
    def _make(path: str) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            print(
                f"error: cannot write the run dir {path} ({error.strerror}); pass outputs_dir=FOLDER", file=sys.stderr
            )
            raise SystemExit(1) from None
