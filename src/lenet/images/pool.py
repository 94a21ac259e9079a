"""Many image files prepared on every core the process may use, in their order: decoding and preparing an image is
pure Python and C without torch, one core each, and a folder of 60,000 takes half a minute on one.

A few hundred files are prepared in this process: worker processes take about a second to start."""

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from lenet.frame.mnist_family import Layout
from lenet.images.preparation import ImageError, prepare

POOL_FROM = 1000  # files: fewer are prepared in this process
CHUNK = 64  # files a worker prepares per task: one round trip each, small enough to keep every worker busy to the end


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
    processes = processes or len(os.sched_getaffinity(0))
    if processes < 2 or len(paths) < POOL_FROM:
        yield from (prepared_file(path, layout) for path in paths)
        return
    chunks = [paths[start : start + CHUNK] for start in range(0, len(paths), CHUNK)]
    with ProcessPoolExecutor(processes, mp_context=get_context("forkserver")) as pool:
        for chunk in pool.map(_prepared_chunk, chunks, [layout] * len(chunks)):
            yield from chunk


def _prepared_chunk(paths: list[Path], layout: Layout) -> list[Prepared]:
    return [prepared_file(path, layout) for path in paths]


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
