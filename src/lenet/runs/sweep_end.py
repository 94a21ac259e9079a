"""What a multirun does when it ends, as a Hydra callback (conf/hydra/default.yaml): the sweep's report (lenet.runs.
sweep_report) written in its sweep dir, and a non-zero exit status when a job failed."""

import atexit
import logging
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

from lenet.frame.errors import SweepError

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Hydra callback (hydra/default.yaml): the report at the end of every multirun, and a non-zero exit
    status when a job failed.

    Hydra skips on_multirun_end when the sweeper re-raises a failed job's error, so the report is also
    registered to run at exit; on_multirun_end takes it over when the sweep gets there.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        self.detached = config.hydra.launcher.get("wait") is False  # the jobs run on; the last to end reports
        if self.detached:
            return
        # Imported here, when a multirun starts: Hydra makes its callbacks for every command, and the report's
        # matplotlib and TensorBoard reader would slow every single run. Not at exit: then no module can be imported.
        from lenet.runs import sweep_report

        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.write_report = sweep_report.sweep_report
        atexit.register(self._report)

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.detached:
            return
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
        return self.write_report(self.sweep_dir)
