"""What a multirun does before its jobs, as a Hydra callback (conf/hydra/default.yaml): refuse, before any job
starts, a sweep no job could run (or one that would mix with the sweep already in its dir). What it does when it ends
is lenet.runs.sweep_end's.

The same command with `hydra.sweep.dir=<its dir>` continues a sweep: its jobs keep their numbers and dirs, and each
job goes on from what it left there (lenet.runs.rundir). `continue_command` spells that command out.

Hydra makes its callbacks for every command, before the config is checked: what this module needs of Lightning is
looked up by name, when a multirun needs it.
"""

import contextlib
import shlex
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import OmegaConf

from lenet.frame import atomic, keys
from lenet.frame.console import quiet_lightning
from lenet.frame.full_disk import NoSpace, make_with_room
from lenet.frame.safe_read import Unreadable, job_name, mapping, read_yaml, trusted
from lenet.frame.validate import slurm_layout_mismatch, spawned_ddp
from lenet.runs.watchdog import name_sweep_process

MULTIRUN = "multirun.yaml"  # Hydra's record of a sweep, in its sweep dir


class MultirunCheck(Callback):
    """Hydra callback (hydra/default.yaml): refuses, once and before any job starts, a multirun no job could run;
    then records it (multirun.yaml), which `continue_command` and a later continuation read.

    Jobs check again for themselves: a swept override (trainer=cpu,ddp) shows only in its own job.
    """

    def on_multirun_start(self, config, **kwargs):
        error = None
        earlier = Path(config.hydra.sweep.dir) / MULTIRUN
        if earlier.is_file() and (other := _other_overrides(earlier, config)):
            error = other
        elif config.get("ckpt_path") == "last":
            error = (
                "ckpt_path=last cannot run in a multirun: each job would resume the newest last.ckpt, which an "
                "earlier job of this sweep has just written; give a checkpoint path, or resume single runs"
            )
        elif config.hydra.launcher.get("wait") is False and "optuna" in config.hydra.sweeper._target_:
            error = (
                "hydra.launcher.wait=false cannot run a search (hparams_search): each trial is chosen from the "
                "results of those before, so the search waits for them; leave out hydra.launcher.wait=false"
            )
        elif "trainer" in config and "SlurmLauncher" not in config.hydra.launcher._target_:
            error = spawned_ddp(_process_layout(config.trainer))
        elif "trainer" in config:
            error = slurm_layout_mismatch(config.hydra.launcher, config.trainer)
        if error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1)
        # The sweep's record, whatever the sweeper (Optuna's writes none). A sweep dir that cannot take it (a full
        # disk) is left as it was, and refused next, in one line, by lenet.cli.CheckOutputDir.
        with contextlib.suppress(OSError, NoSpace):
            make_with_room(earlier.parent)
            atomic.write_text(earlier, OmegaConf.to_yaml(config))
        if "joblib" in config.hydra.launcher._target_:  # its workers would outlive a SIGKILL of this process
            name_sweep_process()


def _other_overrides(earlier: Path, config) -> str | None:
    """Why this multirun cannot continue the sweep in its dir: it sweeps other overrides (the jobs would mix), or the
    dir's multirun.yaml is not a record lenet can compare with."""
    try:
        before = sweep_record(earlier.parent)[2]
    except Unreadable as error:
        return f"hydra.sweep.dir={earlier.parent}: {error}; give this sweep a new hydra.sweep.dir"
    # As written: an override may hold an interpolation (`${hydra:job.num}`) that only a job can resolve.
    if sorted(before) == sorted(OmegaConf.to_container(config.hydra.overrides.task, resolve=False)):
        return None
    return (
        f"hydra.sweep.dir={earlier.parent} holds a sweep of other overrides ({' '.join(before) or 'none'}): continue "
        "it with those, or give this sweep a new hydra.sweep.dir"
    )


def job_dir(number: int, reused: list, first_new: int) -> int:
    """The dir of a continued search's `number`-th job (lenet.runs.search): an unfinished job's own, then new
    numbers."""
    return reused[number] if number < len(reused) else first_new + number - len(reused)


def register_job_dirs() -> None:
    """`${lenet_job_dir:${hydra.job.num},[3],7}` in hydra.sweep.subdir: job_dir."""
    OmegaConf.register_new_resolver("lenet_job_dir", job_dir, replace=True)


def sweep_record(sweep_dir: Path) -> tuple[dict, list[str], list[str]]:
    """The sweep's multirun.yaml, read as data (lenet.frame.safe_read): its `hydra` node, and its Hydra and task
    overrides as lists of strings; Unreadable when it is not such a record."""
    saved = mapping(read_yaml(sweep_dir / MULTIRUN, MULTIRUN), MULTIRUN).get("hydra")
    saved = mapping(saved, f"{MULTIRUN}: hydra")
    overrides = mapping(saved.get("overrides"), f"{MULTIRUN}: hydra.overrides")
    hydra, task = (overrides.get(name) or [] for name in ("hydra", "task"))
    if not all(isinstance(o, list) and all(isinstance(item, str) for item in o) for o in (hydra, task)):
        raise Unreadable(f"{MULTIRUN}: hydra.overrides is not lists of overrides")
    return saved, hydra, task


def continue_command(sweep_dir: Path, own: bool = False) -> str:
    """The command that continues the sweep in `sweep_dir`: the same overrides, launcher included, and its dir.

    Unless `own` (the sweep's own process says what it was given), a UserError names the first override that lenet
    would not run from a file (lenet.frame.safe_read.trusted): a command printed is one a user may paste."""
    saved, hydra, task = sweep_record(sweep_dir)
    hydra = [o for o in hydra if keys.overridden(o) not in ("hydra.sweep.dir", "hydra.mode")]
    if not own:
        trusted(task, sweep_dir / MULTIRUN, hydra)
    task_name = job_name(saved, MULTIRUN)
    return shlex.join(["python", "-m", f"lenet.{task_name}", "-m", *hydra, *task, f"hydra.sweep.dir={sweep_dir}"])


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
