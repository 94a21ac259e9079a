"""Files written whole or not at all: the new contents go to a temporary file beside the final name, are flushed to
the disk (fsync), and only then renamed over the final name. A full disk, a kill or a crash mid-write leaves the
previous good copy as it was, and no stray file outside the folder (a temp file in `$TMPDIR` would be copied, not
renamed, across file systems: the copy is what a full disk cuts short). A link at the final name is replaced by the
new file, never followed: a report cannot be made to overwrite a file elsewhere.
"""

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".partial"  # what a kill mid-write may leave beside the final name (the next write removes nothing)


@contextlib.contextmanager
def replacing(path: str | Path, mode: str = "w", **options) -> Iterator[IO]:
    """An open file whose contents replace `path` when the block ends without an error; on any error the temporary
    file is removed and `path` is untouched. `options` as open()'s (newline, encoding)."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    # Created as open() creates a file, its permissions from the umask: mkstemp's 0600 would close checkpoints and
    # metrics to the other users of a shared folder.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, mode, **options) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path, "w", encoding="utf-8") as file:
        file.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path, "wb") as file:
        file.write(data)


def _sync_folder(folder: Path) -> None:
    """The rename itself on the disk: without it a power cut may bring back the old name's contents."""
    with contextlib.suppress(OSError):  # some file systems cannot open a folder for fsync: the rename still stands
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
