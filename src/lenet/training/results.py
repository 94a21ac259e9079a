"""What a run reports: one start line, its hparams and final metrics to TensorBoard, throughput, and `metrics.json`."""

import json
import logging
import re
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lenet.frame import atomic
from lenet.runs import rundir
from lenet.training import environment
from lenet.training.checkpoints import Checkpoint, InitialWeights, record_timing
from lenet.training.cpus import Threads
from lenet.training.hparams import HPARAM_METRICS, log_hparams

log = logging.getLogger(__name__)


class RunSummary(L.Callback):
    """Says what runs where, logs `hparams` once, times training, and writes `metrics.json` after testing.

    It also records what the run ran on: `env.json` (lenet.training.environment).

    `metrics.json` holds every final metric under its logged name, the test confusion matrix, the data it used
    (dataset, root, split sizes), and the timings. A resumed run's timings cover every attempt (`attempts`, written
    when there were several): each checkpoint carries what the attempts so far took (`timing`), a resume adds its
    own, and an interrupted attempt adds the time it spent after its last save to its last.ckpt
    (`keep_time_of_interruption`).
    """

    def __init__(
        self,
        run_dir: Path,
        hparams: dict | None = None,
        resumed: Checkpoint | None = None,
        command: str | None = None,
        shown: set[str] = frozenset(),
        threads: Threads | None = None,
        initial: InitialWeights | None = None,
    ):
        self.path, self.hparams, self.resumed, self.command = Path(run_dir) / rundir.METRICS, hparams, resumed, command
        self.initial = initial  # the weights a new run started from (init_from)
        self.shown, self.session_end, self.threads = shown, None, threads
        self.started = time.perf_counter()
        self.train_s, self.train_images, self._epoch_started, self._epoch_counted = 0.0, 0, None, True
        self.before = _timing_before(resumed)  # what the attempts before this one took
        self.saved, self.rank_zero = False, False  # whether this attempt saved a checkpoint; it writes the run's files
        self.metrics: dict = {}

    def _tensorboards(self, trainer):
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def on_fit_start(self, trainer, module):
        self.rank_zero = trainer.is_global_zero
        resuming = f" Resuming {self.resumed.path} after epoch {self.resumed.epochs}." if self.resumed else ""
        run, on = f" Run dir: {self.path.parent}.", where(trainer, self.threads)
        origin = resuming or starting(self.initial)
        self._say(trainer, f"Training on {on}: {data_line(trainer.datamodule)}.{origin}{run}")
        self._record_environment(trainer)
        for logger in self._tensorboards(trainer) if trainer.is_global_zero else ():
            self.session_end = log_hparams(logger, self.hparams, self.shown)

    # Training time excludes validation, which Lightning runs inside the training epoch.
    def on_train_epoch_start(self, trainer, module):
        self._epoch_started, self._epoch_counted = time.perf_counter(), False

    def _stop_clock(self):
        if self._epoch_started is not None:
            self.train_s += time.perf_counter() - self._epoch_started
            self._epoch_started = None

    def on_validation_start(self, trainer, module):
        self._stop_clock()

    def on_train_epoch_end(self, trainer, module):
        # Runs before the module's own hook, which resets its totals; counted here, not in a per-batch hook.
        self._stop_clock()
        self.train_images += _epoch_images(trainer, module)
        self._epoch_counted = True

    def timing(self, trainer=None, module=None) -> dict:
        """What the run's attempts have taken so far, this one included (lenet.training.checkpoints.TIMING): what
        CheckpointContents saves in each checkpoint, given the trainer and module that save it."""
        images = self.train_images
        if module is not None:
            self.saved = True
            if not self._epoch_counted:  # saved after validation, before on_train_epoch_end counts the epoch
                images += _epoch_images(trainer, module)
        return {
            "attempts": self.before["attempts"] + 1,
            "wall_s": self.before["wall_s"] + time.perf_counter() - self.started,
            "train_s": self.before["train_s"] + self.train_s,
            "train_images": self.before["train_images"] + images,
        }

    def keep_time_of_interruption(self) -> None:
        """Add the time this interrupted attempt spent since its last save to its run dir's last.ckpt, which the next
        attempt resumes from: its wall_s then covers every second spent. The epoch cut short is not counted as
        trained (its images and training time): the next attempt trains it again."""
        last = rundir.last_checkpoint(self.path.parent)
        resumed_here = self.resumed is not None and Path(self.resumed.path).resolve() == last.resolve()
        if not (self.rank_zero and (self.saved or resumed_here) and last.is_file()):
            return
        trained = (Checkpoint.open(last).timing if self.saved else None) or self.before
        record_timing(last, self.timing() | {name: trained[name] for name in ("train_s", "train_images")})

    def on_fit_end(self, trainer, module):
        self._stop_clock()
        # A run resumed after its last epoch trains none: the metrics are its checkpoint's.
        self.metrics.update((self.resumed.metrics if self.resumed else {}) | _floats(trainer.callback_metrics))
        self.metrics["epochs"] = trainer.current_epoch

    def on_test_start(self, trainer, module):
        if trainer.state.fn == "test" and not self.metrics:  # lenet.eval: no fit said it
            self._say(trainer, f"Testing on {where(trainer)}: {data_line(trainer.datamodule)}")
            self._record_environment(trainer)

    def on_test_end(self, trainer, module):
        self.metrics.update(_floats(trainer.callback_metrics))
        self.metrics["test/confusion_matrix"] = module.test_counts.tolist()
        self.metrics["data"] = trainer.datamodule.describe()
        spent = self.timing()
        self.metrics["wall_s"] = round(spent["wall_s"], 3)
        if spent["train_s"]:
            self.metrics["train_images_per_s"] = round(spent["train_images"] / spent["train_s"], 1)
        if spent["attempts"] > 1:  # a resumed run: its timings are every attempt's
            self.metrics[rundir.ATTEMPTS] = spent["attempts"]
        final = {tag: self.metrics[name] for tag, name in HPARAM_METRICS.items() if name in self.metrics}
        for logger in self._tensorboards(trainer) if trainer.is_global_zero else ():
            logger.log_metrics(final, step=trainer.global_step)
            if self.session_end:  # HPARAMS' status: success; a run that never gets here stays "unknown"
                logger.experiment._get_file_writer().add_summary(self.session_end)
        if trainer.is_global_zero:
            atomic.write_text(self.path, to_json(self.metrics))  # whole or none: it marks the run finished (rundir)
            self._say(trainer, f"{result_line(self.metrics)}\nRun outputs: {self.path.parent.resolve()}")

    def _record_environment(self, trainer) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            record = environment.environment(self.command, trainer.strategy.root_device, threads_chosen(self.threads))
            if self.initial:  # where its weights came from: the checkpoint as found (a run dir's best.ckpt)
                record["init_from"] = str(self.initial.path.resolve())
            atomic.write_text(self.path.parent / rundir.ENVIRONMENT, json.dumps(record, indent=2) + "\n")

    @staticmethod
    def _say(trainer, line: str) -> None:
        if trainer.is_global_zero:
            log.info(line)


def where(trainer, chosen: Threads | None = None) -> str:
    """The device, and the processes or threads that run on it (and how their number was chosen)."""
    device = trainer.strategy.root_device
    threads = torch.get_num_threads()
    cpu = f"cpu, {chosen}" if threads_chosen(chosen) else f"cpu, {threads} thread{'s' * (threads > 1)}"
    name = environment.device_name(device) if device.type == "cuda" else cpu
    return f"{name}, {trainer.world_size} processes" if trainer.world_size > 1 else name


def starting(initial: InitialWeights | None) -> str:
    """Where a new run's weights come from, as the start line says it: "" when it starts from scratch."""
    if initial is None:
        return ""
    head = f"; the head rebuilt for {initial.head[1]} classes: it had {initial.head[0]}" if initial.head else ""
    return f" Starting from {initial.path} (its weights{head})."


def threads_chosen(chosen: Threads | None) -> str | None:
    """How the run's thread count was chosen, while it is still torch's: Lightning's DDP launcher sets its own."""
    return chosen.how if chosen and chosen.count == torch.get_num_threads() else None


def data_line(datamodule) -> str:
    data = datamodule.describe()
    sizes = ", ".join(f"{data[f'{split}_images']:,} {split}" for split in ("train", "val", "test"))
    return f"{data['dataset']} from {data['root']} ({sizes} images)"


def result_line(metrics: dict) -> str:
    finals = "  ".join(f"{name} {metrics[name]:.4f}" for name in ("val/acc_best", "test/acc") if name in metrics)
    if "epochs" not in metrics:
        return finals
    epochs = f"{metrics['epochs']} epoch{'s' * (metrics['epochs'] != 1)}"
    if metrics.get(rundir.ATTEMPTS, 1) > 1:
        epochs += f" in {metrics[rundir.ATTEMPTS]} attempts"
    # none when no attempt trained an epoch that was timed (a checkpoint older than the timing record, resumed after
    # its last epoch)
    speed = f", {metrics['train_images_per_s']:,.0f} train images/s" if "train_images_per_s" in metrics else ""
    return f"{finals}  ({epochs}, {metrics['wall_s']:.1f} s{speed})"


def _epoch_images(trainer, module) -> int:
    """The images of the epoch under way so far: every rank trains on as many."""
    return module.totals["train"].images * trainer.world_size


def _timing_before(resumed: Checkpoint | None) -> dict:
    """What the attempts before this one took, as the checkpoint it resumes carries it. A checkpoint older than that
    record counts as one attempt of unknown time."""
    if resumed is None:
        return {"attempts": 0, "wall_s": 0.0, "train_s": 0.0, "train_images": 0}
    return resumed.timing or {"attempts": 1, "wall_s": 0.0, "train_s": 0.0, "train_images": 0}


def to_json(metrics: dict) -> str:
    """Indented JSON with each list of numbers (a confusion-matrix row) on one line."""
    text = json.dumps(metrics, indent=2, sort_keys=True)
    return re.sub(r"\[\s+([-\d.,\se]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def _floats(metrics) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}
