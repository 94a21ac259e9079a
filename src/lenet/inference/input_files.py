"""The image files a user names (a file, a folder, a glob pattern, a list of these), each checked before it is
opened: what is not a regular file (a folder named x.png, a FIFO, a device, a broken or looping symlink) is named,
never read; a pattern stays inside the folder it names, and `**` enters each folder once."""

import contextlib
import errno
import functools
import glob
import itertools
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from omegaconf import ListConfig

from lenet.frame.errors import UserError
from lenet.frame.quoting import path_text
from lenet.images.preparation import IMAGE_SUFFIXES, ImageError, open_image, resize

NOT_FILES = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}

Reader = Callable[[BinaryIO], np.ndarray]  # an open image file -> the 28x28 image the model sees
SHOWN = 3  # symlinks that lead outside a pattern's tree named in its warning; the rest counted

log = logging.getLogger(__name__)


class InputError(UserError):
    """Nothing to classify (a missing path, an empty folder, a pattern that matches nothing), or nowhere to write."""


def read_image(path: Path, read: Reader) -> np.ndarray:
    """The image at `path` as the model sees it; an ImageError when it is not a regular file or cannot be read."""
    try:
        if kind := not_a_file(path):
            raise ImageError(kind)  # never opened: reading a FIFO waits forever, a device (/dev/zero) never ends
        with open_file(path) as file:
            return read(file)
    except ImageError:
        raise
    except Exception as error:  # a case prepare() does not foresee ends this image only, not the 5,000 others
        raise ImageError(f"cannot read it ({type(error).__name__}: {error})") from error


def image_or_error(path: Path, read: Reader) -> tuple[np.ndarray | None, str]:
    """`read_image`, or None and why not in one line: a row of predict's CSV. lenet.images.pool's workers run it, so
    this module must not import torch, nor `read` be a closure."""
    try:
        return read_image(path, read), ""
    except ImageError as error:
        return None, " ".join(str(error).split())  # one line, in the CSV and on the console


def resized(file: BinaryIO, max_pixels: int | None = None) -> np.ndarray:
    """The Reader of predict's `prepare=false`: the image resized to 28x28, refused from its header when it has more
    than `max_pixels` pixels (resize has no limit of its own)."""
    return resize(open_image(file, max_pixels))


def not_a_file(path: Path) -> str | None:
    """What `path` is, in a few words, when it is not a regular file (a symlink to one is fine); None when it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"a broken symlink (to {path_text(os.readlink(path))})" if os.path.islink(path) else "no such file"
    except OSError as error:
        return "a symlink loop" if error.errno == errno.ELOOP else f"cannot read it ({error.strerror})"
    return None if stat.S_ISREG(mode) else f"{NOT_FILES.get(stat.S_IFMT(mode), 'something else')}, not a file"


@contextlib.contextmanager
def open_file(path: Path) -> Iterator[BinaryIO]:
    """Opened without blocking and checked again: the path may have turned into a FIFO or a device since its check."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # no O_NONBLOCK on Windows
    except OSError as error:
        raise ImageError(f"cannot open it ({error.strerror})") from None
    with open(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ImageError("not a regular file")
        yield file


def image_paths(inputs) -> list[Path]:
    """The entries `inputs` names: an image, a folder's images (by extension), a glob pattern, or a list of these.

    An entry named like an image that is not a regular file (a folder x.png, a FIFO, a broken symlink) is kept: its
    row says what it is.
    """
    if isinstance(inputs, ListConfig | list):
        return [path for item in inputs for path in image_paths(item)]
    text = str(inputs)
    if glob.has_magic(text):
        matches = glob_matches(text)
        if not matches:
            raise InputError(f"inputs='{text}' matches no file")
        return matches
    path = Path(text).expanduser()
    if path.is_dir():
        return folder_images(path, text)
    if os.path.lexists(path):  # a file, or something else its row names (a FIFO, a broken symlink)
        return [path]
    raise InputError(f"inputs={text}: no such file or folder")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def folder_images(folder: Path, text: str) -> list[Path]:
    try:
        images = sorted(path for path in folder.iterdir() if is_image_name(path))
    except OSError as error:
        raise InputError(f"inputs={text}: cannot list the folder ({error.strerror})") from None
    if not images:
        raise InputError(f"inputs={text}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def glob_matches(pattern: str) -> list[Path]:
    """The files `pattern` matches inside its tree, and the entries named like images that are not files; sorted,
    each once.

    The tree is the folder the pattern names before its first wildcard (`photos` of `photos/**/*.png`, the current
    folder of `**/*.png`). A symlinked folder that leads outside it is not searched: `/proc/self/root` or a link to
    `/` would have `**` search the whole file system, and a folder of images from elsewhere (a download) could name
    any folder of this machine. One warning names them; a folder meant to be searched can be named in `inputs`.
    Linked files are read wherever they lead, as in a folder's listing: one file is one row, and sets of links to
    images are common.

    Once: an entry reached through two linked folders is one entry (its folder's real path and its name), and the
    first path found is kept. Two names of one file (link.png -> a.png) stay two rows, as in a folder's listing.
    """
    tree, outside = Tree(pattern), {}
    firsts, real_folder = {}, functools.cache(os.path.realpath)
    for path in map(Path, sorted(expand_glob(pattern, tree, outside))):
        folder = real_folder(path.parent)
        if not tree.holds(folder):  # through a linked folder that a wildcard of the pattern's end matched
            outside.setdefault(str(path.parent), folder)
        elif is_image_name(path) or not_a_file(path) is None:
            firsts.setdefault((folder, path.name), path)
    if outside:
        log.warning("inputs='%s': %s", path_text(pattern), left_out(outside, tree))
    return list(firsts.values())


class Tree:
    """The folder a glob pattern searches: the part of the pattern before its first wildcard, and its real path."""

    def __init__(self, pattern: str):
        parts = pattern.split(os.sep)
        literal = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
        self.name = os.sep.join(literal) or (os.sep if pattern.startswith(os.sep) else os.curdir)
        self.real = os.path.realpath(self.name)

    def holds(self, real_path: str) -> bool:
        return real_path == self.real or real_path.startswith(self.real.rstrip(os.sep) + os.sep)


def left_out(outside: dict[str, str], tree: Tree) -> str:
    """The warning's words: how many symlinked folders lead outside the tree, the first few, and what to do."""
    count, links = len(outside), sorted((os.path.normpath(link), real) for link, real in outside.items())
    named = ", ".join(f"{path_text(link)} -> {path_text(real)}" for link, real in links[:SHOWN])
    more = f" and {count - SHOWN} more" if count > SHOWN else ""
    where = "the current folder" if tree.name == os.curdir else path_text(tree.name)
    return (
        f"{count} symlinked folder{'s lead' if count > 1 else ' leads'} outside {where} and "
        f"{'were' if count > 1 else 'was'} not searched ({named}{more}); to search one, add it to inputs"
    )


def expand_glob(pattern: str, tree: Tree, outside: dict[str, str]) -> list[str]:
    """`glob.glob(pattern, recursive=True)`, except that each `**` enters each folder once, and no folder outside
    `tree`: a symlinked folder that leads out of it is added to `outside` (its path -> where it leads).

    Python 3.11's `**` follows symlinked folders, loops included: a link back up matches every file ~40 times (until
    the path grows too long), two such links never end. Not following symlinks at all (bash, pathlib in 3.13) would
    lose the folders people link in from elsewhere in the tree. So `**` follows the links that stay inside the tree,
    and enters a folder (device, inode) once.
    """
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    at = parts.index("**")
    if at == 0:  # `**/*.png`: from here, and the paths stay relative as glob's are
        here = os.curdir + os.sep
        return [match.removeprefix(here) for match in expand_glob(here + pattern, tree, outside)]
    top, rest = os.sep.join(parts[:at]) or os.sep, os.sep.join(parts[at + 1 :]) or "*"
    return [
        match
        for start in glob.glob(top)
        for folder in folders_below(start, tree, outside)
        for match in expand_glob(os.path.join(glob.escape(folder), rest), tree, outside)
    ]


def folders_below(top: str, tree: Tree, outside: dict[str, str]) -> Iterator[str]:
    """`top` and the folders under it, symlinked ones included if they stay inside `tree` (those that do not are
    added to `outside`), each entered once; hidden ones left out, as in glob."""
    if not tree.holds(real := os.path.realpath(top)):  # a wildcard before `**` matched a link that leads out
        outside[top] = real
        return
    entered = set()
    for folder, subfolders, _ in os.walk(top, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:  # gone since its parent was listed
            info = None
        if info is None or (info.st_dev, info.st_ino) in entered:  # or a link back to a folder already walked
            subfolders.clear()
            continue
        entered.add((info.st_dev, info.st_ino))
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".") and stays(folder, name, tree, outside)
        )
        yield folder


def stays(folder: str, name: str, tree: Tree, outside: dict[str, str]) -> bool:
    """Whether the subfolder `name` of `folder` (inside the tree) is inside it too; if not, it is added to `outside`.
    Only a symlink can lead out (a real subfolder of a folder inside is inside), so only links are resolved."""
    path = os.path.join(folder, name)
    if not os.path.islink(path) or tree.holds(real := os.path.realpath(path)):
        return True
    outside[path] = real
    return False
