"""A full disk, said in one line: which file system is full, found in any error a write raised; a folder checked
before anything is written into it; a log file and threads that a full disk silences instead of printing a traceback.

Light on purpose (the standard library only): Hydra's logging config names `LogFile`, and the frame makes a run dir
with `make_with_room` before torch and Lightning load.
"""

import errno
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

from lenet.frame.errors import UserError

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; a user's quota used up: the same remedy
PROBE_BYTES = 64 * 1024  # more than Hydra writes into a run dir before lenet's code runs (its configs: about 6 KB)


class NoSpace(UserError):
    """A write failed for want of space; what was saved before it is kept, and goes on once there is room again.

    Not a failure of the run (status 1 would record one, and a continued sweep would start the run over): like an
    interruption, its last good epoch resumes. 74 is sysexits' EX_IOERR.
    """

    exit_status = 74


def full_disk_error(error: BaseException | None) -> OSError | None:
    """The "no space" error in `error` or in what it was raised from or during, if any: Lightning re-raises a
    callback's error, and a logger that fails to close while handling it raises a second one on top."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in FULL:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def disk_of(path: str | Path) -> str:
    """The mount point of the file system that holds `path` (or the nearest folder above it that exists)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists():
        folder = folder.parent
    while not os.path.ismount(folder):
        folder = folder.parent
    return str(folder)


def make_with_room(folder: str | Path) -> None:
    """Make `folder` and check that it can take what Hydra writes into a new run dir, or raise NoSpace, leaving no
    folder made. A file of PROBE_BYTES is written and flushed to the disk (a file system that allocates space late
    reports a full disk only then), then removed. Without this, Hydra left 0-byte `.hydra/config.yaml` and log files
    on a full disk. Other errors (not a folder, no permission) are raised as they are."""
    folder = Path(folder)
    made = next((p for p in [*reversed(folder.parents), folder] if not p.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        if made:
            _remove_empty(folder, made)
        if full_disk_error(error) is None:
            raise
        where = f"no space left on {disk_of(folder)}, where the run dir {folder} goes"
        raise NoSpace(f"{where}: free some space, or pass outputs_dir=FOLDER") from None


def _remove_empty(folder: Path, top: Path) -> None:
    """`folder` and its parents up to `top`, each if empty (another run may have made its own dir there since)."""
    for path in [folder, *folder.parents]:
        try:
            path.rmdir()
        except OSError:
            return
        if path == top:
            return


class LogFile(logging.FileHandler):
    """Hydra's `train.log` (hydra/default.yaml). Once the disk is full, its lines go to the console only: logging's
    default prints a traceback to stderr for every line it cannot write."""

    def handleError(self, record: logging.LogRecord) -> None:
        if full_disk_error(sys.exc_info()[1]) is None:
            super().handleError(record)


def quiet_threads() -> None:
    """A thread that meets a full disk ends without printing its traceback: TensorBoard's event writer does, and
    re-raises the error at the main thread's next write, which lenet says in one line. Other errors print as ever."""
    if getattr(threading.excepthook, "lenet_quiet", False):
        return
    previous = threading.excepthook

    def excepthook(args) -> None:
        if full_disk_error(args.exc_value) is None:
            previous(args)

    excepthook.lenet_quiet = True
    threading.excepthook = excepthook
