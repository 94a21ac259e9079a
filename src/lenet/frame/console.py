"""What users see on the console: none of Lightning's noise (lenet's own lines say what matters)."""

import logging
import os
import warnings

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
    "\nDetected KeyboardInterrupt",  # lenet's own line says what was saved and how to resume
)


# logger=mlflow: MLflow making its tables in a new store, Lightning making the run's experiment. lenet asks for both.
TRACKING_NOISE = {
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database tables"),
    "lightning.pytorch.loggers.mlflow": ("Experiment with name",),
}


def _not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LIGHTNING_NOISE)


def _not_tracking_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(TRACKING_NOISE.get(record.name, ()))


# Lightning's warnings that do not apply to lenet: a deprecation Lightning raises against itself, a note on short
# epochs (lenet logs its metrics once per epoch, and the learning rate every log_every_n_steps across epochs), one
# about a checkpoint's callbacks missing now (a resume may change callbacks; the test runs without callbacks=ema),
# and one about checkpoints already in the run dir (there, they are an earlier attempt's, resumed: lenet.runs.rundir).
LIGHTNING_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches \(\d+\) is smaller",
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",
    r"Checkpoint directory .* exists and is not empty",
)
# On a Slurm login node (srun installed, no job) Lightning suggests srun on every run. Inside a job (an salloc
# shell, say) the hint can be right: a DDP run started without srun hangs. So it is dropped only outside jobs.
SRUN_HINT = r"The `srun` command is available on your system but is not used"


def lightning_warnings() -> tuple[str, ...]:
    """The messages of Lightning's warnings that do not apply to this process."""
    return LIGHTNING_WARNINGS + (() if "SLURM_JOB_ID" in os.environ else (SRUN_HINT,))


def quiet_lightning() -> None:
    """Drop Lightning's notes the run says better itself, its warnings that do not apply here, and its own console
    handler, which its import adds: its lines reach Hydra's console and log file anyway, and would show twice.
    Called by what uses Lightning, once Lightning is imported."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_noise)  # once, however often called
    for name in TRACKING_NOISE:
        logging.getLogger(name).addFilter(_not_tracking_noise)
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        lightning.removeHandler(handler)
    for message in lightning_warnings():
        warnings.filterwarnings("ignore", message=message)
