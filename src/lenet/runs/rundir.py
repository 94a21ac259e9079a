"""What a run dir holds, by name, what an earlier attempt of a run left in it, and which of its checkpoints a
ckpt_path means (`model_file`).

A run dir is a run's identity: a sweep's job dirs keep their numbers when the sweep is continued
(`hydra.sweep.dir=...`), and a Slurm job requeued (preempted, or at its time limit) starts again in the same one.
So a run starting in a run dir that holds an earlier attempt goes on from it: a finished run is kept as it is, an
interrupted one resumes from its last.ckpt, a failed one runs again from the start.
"""

import contextlib
import shutil
from pathlib import Path

from lenet.frame import atomic
from lenet.frame.errors import ConfigError

METRICS = "metrics.json"  # a finished run's results (lenet.training.results writes it, lenet.report reads it)
ERROR = "error.txt"  # a failed run's one-line error (lenet.cli writes it, lenet.report reads it)
ATTEMPTS = "attempts"  # in metrics.json: how many attempts a resumed run took (written when more than one)
ENVIRONMENT = "env.json"  # what it ran on (lenet.training.environment)
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"  # saved after every epoch: what a resume starts from
BEST = "best.ckpt"


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job dirs, by number: its numbered folders that hold Hydra's record of a job."""
    if not sweep_dir.is_dir():
        return []
    jobs = [path for path in sweep_dir.iterdir() if path.name.isdigit() and (path / ".hydra" / "hydra.yaml").is_file()]
    return sorted(jobs, key=lambda path: int(path.name))


def record_failure(run_dir: Path, message: str) -> None:
    """Best effort: the message is also on stderr, and a run dir on a full disk cannot take it."""
    if run_dir.is_dir():
        with contextlib.suppress(OSError):
            atomic.write_text(run_dir / ERROR, message.strip() + "\n")


def failure(run_dir: Path) -> str:
    """Why the run failed, or "" (it has not failed)."""
    path = run_dir / ERROR
    return path.read_text().strip() if path.is_file() else ""


def earlier_attempt(run_dir: Path, record: str) -> str:
    """What an earlier attempt of a run left in `run_dir`: "none" (no `record` folder of Hydra's), "finished",
    "failed" (it starts again) or "interrupted" (it resumes)."""
    if not (run_dir / record).is_dir():
        return "none"
    return "finished" if finished(run_dir) else "failed" if failure(run_dir) else "interrupted"


def finished(run_dir: Path) -> bool:
    return (run_dir / METRICS).is_file()


def untested(checkpoint: Path) -> bool:
    """Whether `checkpoint` is a run dir's whose run stopped before its test wrote its results: a run preempted or
    interrupted after its last epoch has trained, but has not finished."""
    return checkpoint.parent.name == CHECKPOINTS and not finished(checkpoint.parents[1])


def remove_partial_writes(run_dir: Path) -> None:
    """What a write cut short by a kill left beside its file (lenet.frame.atomic): a checkpoint's or metrics.json's
    temporary file, which no one else removes."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        for leftover in folder.glob(f".*{atomic.TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS / LAST


def resume_or_restart(run_dir: Path) -> Path | None:
    """Where this run goes on from: the last.ckpt an interrupted earlier attempt left, or None: no earlier attempt,
    or a failed one, which is cleared (clear_failed_attempt) so that the run starts again from the start."""
    if failure(run_dir):
        clear_failed_attempt(run_dir)
        return None
    last = last_checkpoint(run_dir)
    return last if last.is_file() else None


def clear_failed_attempt(run_dir: Path) -> None:
    """Delete what a failed attempt left: its checkpoints (it may have diverged), TensorBoard events and error; its log
    keeps what happened."""
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    for leftover in [run_dir / ERROR, *run_dir.glob("events.out.tfevents.*")]:
        leftover.unlink(missing_ok=True)


def model_file(ckpt_path: str | None, outputs_dir: Path, prefer: str = "best") -> Path | None:
    """`ckpt_path` as a file: `last` means the newest last.ckpt of any run under `outputs_dir`; a run dir (or its
    checkpoints/ folder) means its `prefer`red checkpoint, best.ckpt to use a model, last.ckpt to resume training,
    else the other one."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        runs = sorted(outputs_dir.glob(f"**/{CHECKPOINTS}/{LAST}"), key=lambda path: path.stat().st_mtime)
        if not runs:
            raise ConfigError(f"ckpt_path=last: no run under {outputs_dir}/ has a last.ckpt; give a checkpoint path")
        return runs[-1]
    path = Path(ckpt_path)
    if path.is_dir():
        return _in_run_dir(path, prefer)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return path


def _in_run_dir(folder: Path, prefer: str) -> Path:
    names = [f"{prefer}.ckpt", *({BEST, LAST} - {f"{prefer}.ckpt"})]
    places = (folder / CHECKPOINTS, folder)
    found = next((place / name for name in names for place in places if (place / name).is_file()), None)
    if found is None:
        raise ConfigError(
            f"ckpt_path={folder} is a folder without checkpoints/best.ckpt or checkpoints/last.ckpt: "
            "give a run dir of lenet.train or a checkpoint file"
        )
    return found
