"""What users see on the console: one line for their mistakes, none of Lightning's noise."""

import functools
import logging
import os
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

    HYDRA_FULL_ERROR=1 shows the full traceback instead, as it does for Hydra's own errors. In a multirun
    the error is logged and raised instead: Hydra marks that job failed, runs the others, then exits non-zero.
    An interruption (exit status above 1) still ends the whole sweep.
    """

    @functools.wraps(task)
    def wrapper(cfg):
        quiet_lightning()
        try:
            return task(cfg)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if in_multirun() and error.exit_status == 1:
                log.error("error: %s", error)  # into the job's log, where the sweep report finds it
                raise SweepError(f"error: {error}") from error
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(error.exit_status) from None

    return wrapper


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`, or a config that sets hydra.mode)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def quiet_lightning() -> None:
    """Drop Lightning's advertising and a deprecation warning Lightning raises against itself."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not record.getMessage().startswith("💡 Tip")
    )
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


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
