"""Many image files prepared on every core the process may use, in their order: decoding and preparing an image is
pure Python and C without torch, one core each, and a folder of 60,000 takes half a minute on one. Training on a
folder of images (`prepared_files`) and lenet.predict (`in_order`) share the pool.

A few hundred files are prepared in this process: worker processes take about a second to start."""

import collections
import contextlib
import functools
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import forkserver, get_context, parent_process
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TypeVar

import numpy as np

from lenet.frame.mnist_family import Layout
from lenet.images.preparation import ImageError, prepare

POOL_FROM = 1000  # files: fewer are prepared in this process
CHUNK = 64  # files a worker prepares per task: one round trip each, small enough to keep every worker busy to the end
AHEAD = 4  # chunks per worker prepared ahead of what the caller has taken: memory stays flat however many files

Item, Result = TypeVar("Item"), TypeVar("Result")


@dataclass(frozen=True)
class Prepared:
    """One file: what a model sees (None when it cannot be used, `error` says why) and its bytes' digest."""

    image: np.ndarray | None
    error: str
    digest: bytes  # BLAKE2b of the file's bytes: copies of one file are told apart from look-alikes


def prepared_files(paths: list[Path], layout: Layout, processes: int | None = None) -> Iterator[Prepared]:
    """Each file read, digested and prepared (lenet.images.preparation.prepare), in the order of `paths`.

    `processes`: None, as many as the CPUs this process may run on. A forkserver starts the workers: a fork of a
    process that already runs torch's threads may deadlock in them."""
    return in_order(functools.partial(prepared_file, layout=layout), paths, processes)


def in_order(work: Callable[[Item], Result], items: Sequence[Item], processes: int | None = None) -> Iterator[Result]:
    """`work(item)` for each item, in their order, as the caller takes them: in this process below POOL_FROM items,
    else on `processes` workers (None: every CPU this process may run on), CHUNK items a task.

    `work` goes to the workers by name: a module's function (or a functools.partial of one) from a module that does
    not import torch, or each worker would spend seconds importing it. Closing the iterator (or an exception where
    it waits, Ctrl-C included) drops the chunks not started and waits for the few that are (a fraction of a second).
    """
    processes = processes or len(os.sched_getaffinity(0))
    if processes < 2 or len(items) < POOL_FROM:
        yield from map(work, items)
        return
    chunks = (items[start : start + CHUNK] for start in range(0, len(items), CHUNK))
    pool = ProcessPoolExecutor(processes, mp_context=_forkserver(work), initializer=_start_worker)
    try:
        waiting = collections.deque()
        for chunk in chunks:
            with _ctrl_c_held():  # a submit may start a worker
                waiting.append(pool.submit(_each, work, chunk))
            if len(waiting) >= AHEAD * processes:
                yield from waiting.popleft().result()
        while waiting:
            yield from waiting.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _forkserver(work: Callable) -> BaseContext:
    """The forkserver context, its server started (once a process) with `work`'s module imported: each worker is a
    fork of it that starts at once, not a second of imports (Pillow, SciPy) on a core the others need.

    And with Ctrl-C ignored: a terminal's Ctrl-C goes to every process of the foreground group, and a worker that
    takes it dies with a traceback. The server passes SIG_IGN on to each worker from its first instruction;
    `_start_worker` covers a server started earlier by something else. (A Ctrl-C in the few milliseconds of the
    server's start is lost; blocking it instead does not reach the server.)"""
    forkserver.set_forkserver_preload([getattr(work, "func", work).__module__])  # unused once it runs
    if threading.current_thread() is threading.main_thread():  # only the main thread may set a handler
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            forkserver.ensure_running()  # a no-op once it runs
        finally:
            signal.signal(signal.SIGINT, previous or signal.SIG_DFL)  # None: a handler set outside Python
    return get_context("forkserver")


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """A Ctrl-C raised once the block is done: a worker's start (up to a second while the server imports) must not be
    cut off, or the worker starts after the pool has gone and dies with a traceback. Outside the main thread, as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda *_: held.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous or signal.SIG_DFL)  # None: a handler set outside Python
        if held:
            signal.raise_signal(signal.SIGINT)  # to the handler it was meant for: KeyboardInterrupt, as a rule


def _start_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool: see in_order
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    """A worker whose parent was killed (SIGKILL, a crash) would wait for work forever, and keep the parent's
    output open: whoever reads it (a pipe, a CI job) would wait too."""
    wait([parent_process().sentinel])
    os._exit(1)


def _each(work: Callable[[Item], Result], chunk: Sequence[Item]) -> list[Result]:
    return [work(item) for item in chunk]


def prepared_file(path: Path, layout: Layout) -> Prepared:
    try:
        data = path.read_bytes()
    except OSError as error:
        return Prepared(None, f"cannot read it ({error.strerror})", b"")
    digest = hashlib.blake2b(data, digest_size=16).digest()
    try:
        return Prepared(prepare(data, layout), "", digest)
    except ImageError as error:
        return Prepared(None, " ".join(str(error).split()), digest)
    except Exception as error:  # a case prepare() does not foresee ends this image only, not the 60,000 others
        return Prepared(None, f"cannot read it ({type(error).__name__}: {error})", digest)
