"""MLflow and Weights & Biases as lenet uses them (logger=mlflow, logger=wandb; docs/tracking.md): the loggers of
`cfg.logger` built, MLflow's and W&B's named for the run and its sweep where their config leaves the names null; and
what lenet records in them beyond Lightning's per-epoch metrics: the hparams of TensorBoard's HPARAMS, and once the
run is tested, its files.

Lightning's loggers import mlflow and wandb when a run asks for them: lenet.train runs without them installed.
"""

import importlib.util
import netrc
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import lightning as L
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

from lenet.frame.errors import UserError
from lenet.frame.hydra_job import EXTRAS, in_multirun
from lenet.runs import rundir

TRACKERS = ("mlflow", "wandb")  # the logger options lenet fills in; each needs the package of its name (lenet[track])
SINGLE_RUNS = "lenet"  # MLflow's experiment for runs that are no sweep's (a sweep is an experiment of its own)
# What the trackers get of the run dir once the run is tested, by its path there and among the run's files there:
# the composed config and the command line's overrides (Hydra's), what it ran on, its results, the checkpoint it
# tested. Hydra's files not in a `.hydra/`: lenet.report takes a folder that holds .hydra/overrides.yaml for a run.
FILES = {".hydra/config.yaml": "hydra/config.yaml", ".hydra/overrides.yaml": "hydra/overrides.yaml",
         rundir.ENVIRONMENT: rundir.ENVIRONMENT, rundir.METRICS: rundir.METRICS,
         f"{rundir.CHECKPOINTS}/{rundir.BEST}": f"{rundir.CHECKPOINTS}/{rundir.BEST}"}  # fmt: skip


def loggers(cfg) -> list:
    """The loggers of `cfg.logger`, each by Hydra's instantiate; MLflow's experiment and store set up now, under a
    lock: the parallel jobs of a sweep (a joblib launcher) would otherwise all create its tables and experiment."""
    made = []
    for option, config in cfg.logger.items():
        if option in TRACKERS and importlib.util.find_spec(option) is None:
            raise UserError(f"logger={option} needs {option}: pip install 'lenet[{EXTRAS[option]}]'")
        if option == "mlflow":
            Path(cfg.outputs_dir).mkdir(parents=True, exist_ok=True)
            with FileLock(Path(cfg.outputs_dir) / "mlflow.lock"):
                logger = instantiate(config, **mlflow_names(cfg, config))  # a new store's tables, made now
                made.append(logger)
                _ = logger.experiment  # the experiment when new, and this run
        elif option == "wandb":
            made.append(instantiate(config, **wandb_names(cfg, config)))
            # Lightning 2.6 passes wandb.init anonymous=None, which wandb warns of on every run: not passed
            getattr(made[-1], "_wandb_init", {}).pop("anonymous", None)
        else:
            made.append(instantiate(config))
    return made


def run_names(cfg) -> tuple[str | None, str]:
    """The sweep this run is a job of and the run's own name, as paths under outputs_dir (where mlflow.db is):
    (multirun/<date>/<time>, the job's number), or (None, <date>/<time>) for a single run."""
    outputs = Path(cfg.outputs_dir).resolve()

    def under_outputs(path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(outputs)) if path.is_relative_to(outputs) else str(path)

    if in_multirun():
        hydra = HydraConfig.get()
        return under_outputs(hydra.sweep.dir), str(hydra.sweep.subdir)
    return None, under_outputs(cfg.run_dir)


def mlflow_names(cfg, config) -> dict:
    """MLflow's experiment (the sweep, or SINGLE_RUNS), run name and artifact location, where the config has none.

    A SQLite store keeps artifacts beside itself (MLflow's default is ./mlruns in whatever the current dir is)."""
    sweep, run = run_names(cfg)
    store = config.tracking_uri.removeprefix("sqlite:///") if config.tracking_uri.startswith("sqlite:///") else None
    return {
        "experiment_name": config.experiment_name or sweep or SINGLE_RUNS,
        "run_name": config.run_name or run,
        "artifact_location": config.artifact_location or (store and str(Path(store).resolve().parent / "mlartifacts")),
    }


def wandb_names(cfg, config) -> dict:
    """W&B's run name and group (the sweep), where the config has none; offline unless the user has logged in or
    set WANDB_MODE (without credentials, wandb.init would ask for them, or fail where nobody can answer)."""
    sweep, run = run_names(cfg)
    offline = config.offline if config.offline is not None else not ("WANDB_MODE" in os.environ or wandb_logged_in())
    return {"name": config.name or run, "group": config.group or sweep, "offline": offline}


def wandb_logged_in() -> bool:
    """Whether W&B has credentials for its server: WANDB_API_KEY, an identity token, or `wandb login`'s ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False  # no netrc file, or one wandb could not read either


class Tracking(L.Callback):
    """What MLflow and W&B get from lenet: the run's hparams when fit starts (TensorBoard's: lenet.training.hparams),
    its FILES
    once it is tested. And a W&B run ends with its lenet run: Lightning leaves it open, and the next job of a sweep
    in this process would log into it."""

    def __init__(self, run_dir: Path, hparams: dict):
        self.run_dir, self.hparams = Path(run_dir), hparams

    def on_fit_start(self, trainer, module):
        for logger in trackers(trainer):
            logger.log_hyperparams(self.hparams)

    def on_test_end(self, trainer, module):  # after lenet.training.results's, which writes metrics.json
        files = {self.run_dir / name: Path(saved) for name, saved in FILES.items() if (self.run_dir / name).is_file()}
        for logger in trackers(trainer):
            for path, saved in files.items():
                if isinstance(logger, MLFlowLogger):
                    folder = saved.parent.as_posix()
                    logger.experiment.log_artifact(logger.run_id, str(path), None if folder == "." else folder)
                else:  # into the W&B run's own files, which it uploads when it ends (or `wandb sync` does)
                    copy = Path(logger.experiment.dir) / saved
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, copy)

    def teardown(self, trainer, module, stage):
        if stage == "test":
            self._finish_wandb(trainer, exit_code=0)

    def on_exception(self, trainer, module, exception):
        self._finish_wandb(trainer, exit_code=1)

    @staticmethod
    def _finish_wandb(trainer, exit_code: int) -> None:
        for logger in trackers(trainer):
            if isinstance(logger, WandbLogger):
                logger.experiment.finish(exit_code=exit_code)


def trackers(trainer) -> list:
    """The trainer's MLflow and W&B loggers, on the process that logs (rank 0)."""
    found = [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger | WandbLogger)]
    return found if trainer.is_global_zero else []
