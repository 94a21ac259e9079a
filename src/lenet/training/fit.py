"""Training and testing with Lightning: what `python -m lenet.train` and `python -m lenet.eval` run.

`train(cfg)` builds everything from the config (data, callbacks, loggers, trainer: each by Hydra's instantiate; the
model by LeNetModule, from LeNet's settings, its weights from `init_from`'s checkpoint when given), fits, tests the
best checkpoint on the official test set and writes `metrics.json`. `evaluate(cfg)` tests a checkpoint, rebuilt from
the checkpoint's checked settings alone (nothing in it names what is built). The configs reach them checked
(lenet.frame.validate).
"""

import json
import logging
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ProgressBar, WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lenet.frame.console import quiet_lightning
from lenet.frame.errors import ConfigError, UserError
from lenet.frame.full_disk import NoSpace, disk_of, full_disk_error, quiet_threads
from lenet.frame.hydra_job import in_multirun, this_command
from lenet.frame.mnist_family import DATASETS
from lenet.frame.quoting import terminal
from lenet.frame.validate import spawned_ddp
from lenet.runs import queue, rundir
from lenet.runs.multirun import continue_command
from lenet.runs.watchdog import stop_when_sweep_ends
from lenet.training.checkpoints import (
    Checkpoint,
    CheckpointContents,
    InitialWeights,
    check_resume,
    check_same_run,
)
from lenet.training.cpus import set_threads
from lenet.training.hook_calls import skip_undefined_hooks
from lenet.training.hparams import logged_hparams, overrides_and_swept, shown_hparams
from lenet.training.module import LeNetModule
from lenet.training.progress import Progress
from lenet.training.results import RunSummary
from lenet.training.saving import WholeCheckpointIO
from lenet.training.tracking import Tracking, loggers

log = logging.getLogger(__name__)


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM stopped training."""

    exit_status = 130  # 128 + the signal, as shells report it: 130 for SIGINT, 143 for SIGTERM


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint, write `metrics.json` in `cfg.run_dir`; return the final metrics."""
    quiet_lightning()
    skip_undefined_hooks()
    plain = OmegaConf.to_container(cfg, resolve=True)  # checkpoints must hold plain containers
    run_dir = Path(cfg.run_dir)
    rundir.remove_partial_writes(run_dir)  # an earlier attempt's, killed while it saved
    if rundir.finished(run_dir):  # an earlier attempt of this run finished it (a sweep continued)
        return kept(run_dir, plain)
    if cfg.init_from and cfg.ckpt_path:
        raise ConfigError(
            f"init_from={cfg.init_from} with ckpt_path={cfg.ckpt_path}: a resume goes on with its own run's weights, "
            "init_from starts a new run from another's; pass one of them"
        )
    resume = rundir.model_file(cfg.ckpt_path, Path(cfg.outputs_dir), prefer="last") or rundir.resume_or_restart(run_dir)
    saved = Checkpoint.open(resume) if resume else None
    if saved:
        check_resume(saved, plain)
        plain["init_from"] = saved.config.get("init_from")  # where the resumed run started: its record goes on
    stop_when_sweep_ends()  # in a joblib sweep's worker: killing the sweep ends its jobs too (lenet.runs.watchdog)
    quiet_threads()  # a full disk in TensorBoard's writer thread: lenet's one line (full_disk_reported), no traceback
    threads = set_threads(cfg.threads, saved=saved.threads if saved else None, trainer=cfg.trainer)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data, num_classes=cfg.model.num_classes)
    datamodule.prepare_data()
    datamodule.load()  # every data error comes now, before the run writes anything
    with_the_datas_own(plain, datamodule)
    initial = None  # a resume, of a run started from init_from too (a requeued job, a continued sweep), has its weights
    if cfg.init_from and not saved:
        initial = InitialWeights.open(cfg.init_from, Path(cfg.outputs_dir), plain["model"])
    module = LeNetModule(model=plain["model"], optimizer=plain["optimizer"], scheduler=plain["scheduler"])
    if initial:
        initial.load_into(module)
    overrides, swept = overrides_and_swept()
    hparams, shown = logged_hparams(cfg, overrides), shown_hparams(overrides, swept)
    summary = RunSummary(run_dir, hparams, saved, this_command("train"), shown=shown, threads=threads, initial=initial)
    callbacks = {name: instantiate(callback) for name, callback in cfg.callbacks.items() if callback}
    # Piped or logged output gets no progress bar: it would be carriage returns, kilobytes of them per run.
    interactive = sys.stdout.isatty()
    callbacks = {name: c for name, c in callbacks.items() if interactive or not isinstance(c, ProgressBar)}
    trainer = instantiate(
        cfg.trainer,
        logger=loggers(cfg) or False,
        callbacks=[
            *callbacks.values(),
            summary,
            CheckpointContents(plain, summary.timing),
            Tracking(run_dir, hparams),
            Progress(run_dir),
        ],
        enable_progress_bar=interactive,
        plugins=plugins(),
    )
    if in_multirun() and (refusal := spawned_ddp(trainer)):
        raise ConfigError(refusal)

    with interruptible(run_dir, summary), full_disk_reported(run_dir, resume):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    best = callbacks.get("checkpoint")
    # None: the final weights (experiment=original has no validation to pick a best epoch by)
    best_path = best.best_model_path if best else None
    # callbacks=ema: Lightning's WeightAveraging, meeting a checkpoint it wrote, loads the trained weights saved beside
    # the average; the test would measure those, not the average that was validated and saved. Test without it.
    trainer.callbacks = [callback for callback in trainer.callbacks if not isinstance(callback, WeightAveraging)]
    # after the last epoch, before metrics.json: a resume tests it
    with interruptible(run_dir, summary), full_disk_reported(run_dir, resume):
        trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False, weights_only=True)
    return summary.metrics


def with_the_datas_own(config: dict, datamodule) -> None:
    """The run's config as it trains: what was null is the data's own, as the data module filled it in (its class
    names and count, its mean and std), so its checkpoints record what the model was trained with."""
    data = datamodule.hparams
    config["model"]["num_classes"] = data.num_classes
    config["data"].update(classes=list(data.classes), mean=data.mean, std=data.std)


@contextmanager
def interruptible(run_dir: Path, summary: RunSummary | None = None):
    """Ctrl-C or SIGTERM, which Lightning turns into SystemExit, as lenet's one line that says how to resume; the
    time the attempt spent since its last save kept for the next one (RunSummary.keep_time_of_interruption).

    A sweep job that Slurm requeued (a preemption; or its time limit near, on which submitit requeues it) says so
    instead, not as an error: it starts again by itself and resumes from its last.ckpt."""
    try:
        yield
    except SystemExit as stop:  # how Lightning ends on Ctrl-C (status 1) and on SIGTERM (status 0)
        status = 143 if isinstance(stop, SIGTERMException) else 130
        if summary:
            with suppress(OSError, UserError):  # the interruption is what the user must hear of, not this
                summary.keep_time_of_interruption()
        if in_multirun() and queue.requeued():
            log.warning(requeue_note(run_dir))
            raise SystemExit(status) from None
        interrupted = TrainingInterrupted(resume_hint(run_dir))
        interrupted.exit_status = status
        raise interrupted from None


def requeue_note(run_dir: Path) -> str:
    last = rundir.last_checkpoint(run_dir)
    if not last.is_file():
        return "requeued by Slurm before the first epoch ended: it starts again by itself"
    return f"requeued by Slurm after epoch {Checkpoint.open(last).epochs}: it resumes from {last} by itself"


@contextmanager
def full_disk_reported(run_dir: Path, resumed: Path | None):
    """A full disk, wherever a write met it (a checkpoint, metrics.json, TensorBoard's events), as lenet's one line
    naming the checkpoint that survived it: checkpoints are written whole (lenet.training.saving), so the last one
    saved is good."""
    try:
        yield
    except Exception as error:
        if (full := full_disk_error(error)) is None:
            raise
        disk = disk_of(full.filename or run_dir)
        last = last_good_checkpoint(run_dir, resumed)
        if last is None:
            raise NoSpace(f"no space left on {disk}: no checkpoint was saved yet; free some space, run again") from None
        saved = f"the last good checkpoint is {last.path} ({last.epochs} epoch(s))"
        raise NoSpace(f"no space left on {disk}: {saved}; free some space. {how_to_go_on(last.path)}") from None


def last_good_checkpoint(run_dir: Path, resumed: Path | None) -> Checkpoint | None:
    """The run dir's last.ckpt, else the checkpoint the run resumed from, if it reads as a whole checkpoint."""
    for path in (rundir.last_checkpoint(run_dir), resumed):
        if path and Path(path).is_file():
            with suppress(UserError):
                return Checkpoint.open(Path(path))
    return None


def plugins() -> list:
    """Checkpoints written whole (lenet.training.saving). Inside a Slurm job, Slurm's environment as Lightning reads
    it, but that Lightning does not requeue the job: submitit does (lenet's Slurm launcher), and the requeued job
    resumes from its run dir (lenet.runs.rundir)."""
    slurm = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    return [WholeCheckpointIO(), *slurm]


def kept(run_dir: Path, config: dict) -> dict:
    """The results of a run that finished in this run dir before, as they are; refused if it ran another config."""
    last = rundir.last_checkpoint(run_dir)
    if last.is_file():
        check_same_run(Checkpoint.open(last), config)
    log.info("%s finished before: its %s is kept as it is (train again in a new run dir)", run_dir, rundir.METRICS)
    return json.loads((run_dir / rundir.METRICS).read_text())


def resume_hint(run_dir: Path) -> str:
    last = rundir.last_checkpoint(run_dir)
    if not last.is_file():
        return "interrupted before the first epoch ended: nothing was saved to resume from"
    epochs = Checkpoint.open(last).epochs
    return f"interrupted; {epochs} epoch(s){' of this job' if in_multirun() else ''} saved. {how_to_go_on(last)}"


def how_to_go_on(last: Path) -> str:
    """The command that resumes this run from `last`; in a sweep, the one that continues the sweep."""
    if in_multirun():
        return f"Continue the sweep: {continue_command(Path(HydraConfig.get().sweep.dir), own=True)}"
    command = this_command("train", extra=(f"ckpt_path={last}",))
    return f"Resume: {command}" if command else f"Resume with the same overrides plus ckpt_path={last}"


def evaluate(cfg: DictConfig) -> dict:
    """Test a checkpoint on its data set's test images, or on those of `data=NAME` if its classes are the model's.
    What eval takes of `cfg.data` (EVAL_DATA: the data set, data.root, data.eval_batch_size) replaces what the
    checkpoint saved; the rest of a data option is training's, and the checkpoint's own holds (its normalization
    above all: the model's). Writes `metrics.json` in `cfg.run_dir`; returns the metrics."""
    quiet_lightning()
    checkpoint = Checkpoint.open(rundir.model_file(cfg.ckpt_path, Path(cfg.outputs_dir)))
    given = {key: cfg.data[key] for key in EVAL_DATA if cfg.data.get(key) is not None}
    if refusal := other_classes(checkpoint, given.get("dataset")):
        raise ConfigError(refusal)
    if other_folder(checkpoint, given):
        given["test_size"] = 1.0  # a folder of test images: all of them (or its test/ folder) are tested
    module, datamodule = checkpoint.module(), checkpoint.datamodule(given)
    datamodule.prepare_data()
    datamodule.load(training=False)
    summary = RunSummary(Path(cfg.run_dir), command=this_command("eval"))
    interactive = sys.stdout.isatty()
    trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[summary], enable_checkpointing=False, enable_progress_bar=interactive
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    if "dataset" not in given:  # data=NAME asks for other data on purpose: its start line and metrics.json name it
        warn_if_other_data(checkpoint.path, checkpoint.trained_on, summary.metrics["data"])
    return summary.metrics


EVAL_DATA = ("dataset", "root", "eval_batch_size")  # what lenet.eval takes of data (conf/eval.yaml), null: as saved


def other_classes(checkpoint: Checkpoint, chosen: str | None) -> str | None:
    """Why the checkpoint's model cannot be tested on the data set `chosen`: other classes (an MNIST model on
    Fashion-MNIST) make its accuracy meaningless. None when the classes are the same, or no data set of the MNIST
    family was chosen (a folder's classes are checked against the model's as it is read)."""
    trained = checkpoint.data_settings["dataset"]
    if chosen is None or chosen == trained or chosen not in DATASETS:
        return None
    mine, theirs = checkpoint.classes, list(DATASETS[chosen].classes)
    if mine == theirs:
        return None
    whose = f"{trained}'s" if trained in DATASETS else "its own images'"
    return (
        f"the model's classes are {whose} ({one_line(mine)}); {chosen}'s are others ({one_line(theirs)}): test it "
        f"on data of its own classes (data={terminal(trained)} data.root=FOLDER)"
    )


def other_folder(checkpoint: Checkpoint, given: dict) -> bool:
    """Whether lenet.eval was given a folder of images other than the one the model trained on."""
    dataset = given.get("dataset", checkpoint.data_settings["dataset"])
    root = given.get("root")
    trained = checkpoint.trained_on.get("root") or checkpoint.data_settings["root"]
    return dataset not in DATASETS and root is not None and Path(root).expanduser().resolve() != Path(trained)


def one_line(names: list[str]) -> str:
    """Class names shown on one line."""
    return terminal(", ".join(names[:12]) + (f", ... ({len(names)} classes)" if len(names) > 12 else ""))


def warn_if_other_data(ckpt: Path, trained_on: dict, data: dict) -> None:
    """A checkpoint tested on other test images than it was made with, without data=NAME saying so on purpose (a
    data.root holding other files of its data set): its number may measure what the user did not mean to."""
    if trained_on and trained_on["test_labels_sha256"] != data["test_labels_sha256"]:
        made_with = f"{terminal(trained_on['dataset'])} from {terminal(trained_on['root'])}"  # the file's text
        log.warning(
            "The test images in %s are not those %s was made with (%s): its test/acc here measures other data "
            "(data=%s says you mean that)",
            data["root"], ckpt, made_with, data["dataset"],
        )  # fmt: skip
