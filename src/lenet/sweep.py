"""What a multirun does around its jobs, as Hydra callbacks (conf/hydra/default.yaml): refuse, before any job
starts, a sweep no job could run; write the report when it ends, and exit non-zero when a job failed.

Hydra makes its callbacks for every command, before the config is checked: what this module needs of Lightning or
of the report (matplotlib, TensorBoard's reader) is looked up by name, when a multirun needs it.
"""

import atexit
import logging
import sys
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.utils import get_class, get_method

from lenet.cli import SweepError
from lenet.console import quiet_lightning
from lenet.validate import spawned_ddp

log = logging.getLogger(__name__)


class MultirunCheck(Callback):
    """Hydra callback (hydra/default.yaml): refuses, once and before any job starts, a multirun no job could run.

    Jobs check again for themselves: a swept override (trainer=cpu,ddp) shows only in its own job.
    """

    def on_multirun_start(self, config, **kwargs):
        error = None
        if config.get("ckpt_path") == "last":
            error = (
                "ckpt_path=last cannot run in a multirun: each job would resume the newest last.ckpt, which an "
                "earlier job of this sweep has just written; give a checkpoint path, or resume single runs"
            )
        elif "trainer" in config and "SlurmLauncher" not in config.hydra.launcher._target_:
            error = spawned_ddp(_process_layout(config.trainer))
        if error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1)


def _process_layout(trainer_config):
    """A Trainer with only the settings that decide its processes: Lightning's own answer to how many.

    Lightning is looked up by name, as every target of lenet's configs is: this callback is made for every command,
    and only a multirun needs Lightning here.
    """
    names = ("accelerator", "devices", "strategy", "num_nodes")
    layout = {key: trainer_config[key] for key in names if key in trainer_config}
    trainer = get_class("lightning.pytorch.Trainer")
    quiet_lightning()
    return trainer(**layout, logger=False, enable_checkpointing=False, enable_progress_bar=False)


class SweepReport(Callback):
    """Hydra callback (hydra/default.yaml): the report at the end of every multirun, and a non-zero exit
    status when a job failed.

    Hydra skips on_multirun_end when the sweeper re-raises a failed job's error, so the report is also
    registered to run at exit; on_multirun_end takes it over when the sweep gets there.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._report)

    def on_multirun_end(self, config, **kwargs) -> None:
        atexit.unregister(self._report)
        failed = [job for job in self._report() if job.status == "failed"]
        # Sweepers that go on past failures (Optuna with max_failure_rate) must still exit non-zero. Hydra turns a
        # callback's exception into a warning, so it takes a SystemExit.
        if failed:
            raise SystemExit(f"error: {len(failed)} job(s) failed: see {self.sweep_dir / 'report.md'}")

    def on_job_end(self, config, job_return, **kwargs) -> None:
        # Into the job's own log, which the report reads; a UserError was already logged by report_user_errors.
        error = job_return._return_value  # `return_value` would re-raise it
        if job_return.status == JobStatus.FAILED and not isinstance(error, SweepError):
            log.error("%s: %s", type(error).__name__, error)

    def _report(self) -> list:
        return get_method("lenet.report.sweep_report")(self.sweep_dir)
