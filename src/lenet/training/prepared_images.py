"""A folder of a user's own images (lenet.training.image_folder) made into a data set in memory: each image prepared
once, as lenet.predict and lenet.serve prepare an image (lenet.images), checked, and split into train, val and test.

The prepared images are kept in a cache file beside the data (`.lenet-cache/`), named by a fingerprint of the files
(their paths, sizes and modification times) and of the preparation (its layout, its code, Pillow's and SciPy's
versions): the next run over the same files starts at the speed of IDX files, and a changed file, layout or
preparation prepares afresh. A folder lenet cannot write to is prepared each time.
"""

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import PIL
import scipy
import torch
from filelock import FileLock

from lenet.frame import atomic
from lenet.frame.errors import DataError
from lenet.frame.mnist_family import LAYOUTS
from lenet.frame.quoting import path_text
from lenet.images import preparation
from lenet.images.pool import prepared_files
from lenet.training.image_folder import SHOWN, SPLITS, Listing

CACHE_FOLDER = ".lenet-cache"

log = logging.getLogger(__name__)


def prepared_splits(listing: Listing, layout: str, val_size: float, test_size: float, split_seed: int):
    """The listing's images prepared with `layout`, as {train, val, test}: the splits the user made, the rest carved
    by `split_seed` (test_size of all images, then val_size of the rest; copies of one file always together)."""
    images, digests = prepared(listing, layout)
    indexes = assigned_splits(listing, digests, val_size, test_size, split_seed)
    labels = torch.tensor(listing.labels, dtype=torch.int64)
    pixels = torch.from_numpy(images).unsqueeze(1)
    return {name: (pixels[chosen], labels[chosen]) for name, chosen in indexes.items()}


def prepared(listing: Listing, layout: str) -> tuple[np.ndarray, list[bytes]]:
    """Every file of the listing prepared (N x 28 x 28 uint8) and its digest: from the cache when it holds them."""
    cache = cache_file(listing, layout)
    if (found := _read_cache(cache, len(listing.files))) is not None:
        return found
    writable = os.access(cache.parent.parent, os.W_OK)
    if not writable:
        return _prepare(listing, layout)
    cache.parent.mkdir(exist_ok=True)
    with FileLock(cache.parent / ".lock"):  # parallel jobs, DDP ranks: one prepares, the others read its cache
        if (found := _read_cache(cache, len(listing.files))) is not None:
            return found
        images, digests = _prepare(listing, layout)
        for stale in cache.parent.glob(f"{cache.name.rsplit('-', 1)[0]}-*.npz"):  # these files before one changed
            stale.unlink(missing_ok=True)
        try:
            with atomic.replacing(cache, "wb") as file:
                np.savez(file, images=images, digests=np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16))
            log.info("Kept them in %s: the next run over these files reads them from there", cache)
        except OSError as error:  # a full disk: the run needs no cache, the next one prepares again
            log.warning("Could not keep the prepared images in %s (%s): the next run prepares them again", cache,
                        error.strerror)  # fmt: skip
    return images, digests


def cache_file(listing: Listing, layout: str) -> Path:
    """Where the listing's prepared images are kept: named by what they were made from."""
    fingerprint = hashlib.sha256()
    for fact in (Path(preparation.__file__).read_bytes(), repr(LAYOUTS[layout]), PIL.__version__, scipy.__version__):
        fingerprint.update(fact if isinstance(fact, bytes) else fact.encode())
    for path in listing.files:
        stat = path.stat()
        fingerprint.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    folder = listing.root.parent if listing.root.is_file() else listing.root
    root = hashlib.sha256(str(listing.root.resolve()).encode()).hexdigest()[:8]  # two CSVs in one folder: a cache each
    return folder / CACHE_FOLDER / f"{layout}-{root}-{fingerprint.hexdigest()[:20]}.npz"


def _read_cache(cache: Path, count: int) -> tuple[np.ndarray, list[bytes]] | None:
    """The cache's images and digests; None when there is none, or one that is not whole (then prepared afresh)."""
    try:
        with np.load(cache, allow_pickle=False) as saved:  # plain arrays only: a file cannot run code
            images, digests = saved["images"], saved["digests"]
    except (OSError, ValueError, KeyError):
        return None
    if images.shape != (count, 28, 28) or images.dtype != np.uint8 or digests.shape != (count, 16):
        return None
    return images, [row.tobytes() for row in digests]


def _prepare(listing: Listing, layout: str) -> tuple[np.ndarray, list[bytes]]:
    """Each file prepared (on every core when there are many); refused in one line if any cannot be used."""
    start, count = time.perf_counter(), len(listing.files)
    log.info("Preparing %d images of %s (%s layout)", count, listing.root, layout)
    results = list(prepared_files(listing.files, LAYOUTS[layout]))
    if bad := [(path, result.error) for path, result in zip(listing.files, results, strict=True) if result.error]:
        named = "; ".join(f"{path_text(_relative(path, listing.root))} ({error})" for path, error in bad[:SHOWN])
        raise DataError(
            f"{len(bad)} of {count} images cannot be used: {named}{'; ...' if len(bad) > SHOWN else ''}. Remove "
            "them, or replace them with good copies"
        )
    log.info("Prepared %d images in %.1f s", count, time.perf_counter() - start)  # the cache line says where they go
    return np.stack([result.image for result in results]), [result.digest for result in results]


def assigned_splits(listing: Listing, digests: list[bytes], val_size: float, test_size: float, seed: int):
    """The indexes of each split's files. Copies of one file (equal digests) in two splits the user made are refused;
    the splits carved here keep copies together, so no test image is also a training image."""
    _refuse_copies_across_splits(listing, digests)
    given = {split: [i for i, s in enumerate(listing.splits) if s == split] for split in SPLITS}
    generator = torch.Generator().manual_seed(seed)
    if not given["test"]:
        source = given["train"] if listing.splits[0] else list(range(len(digests)))
        given["test"], given["train"] = _carve(source, digests, test_size, generator)
    if not given["val"] and given["train"]:
        given["val"], given["train"] = _carve(given["train"], digests, val_size, generator)
    return {split: torch.tensor(chosen, dtype=torch.int64) for split, chosen in given.items()}


def count_of(size: float, n: int) -> int:
    """data.val_size or data.test_size as a number of `n` images: a share (at least one image), a count, or 1.0: all."""
    if isinstance(size, float) and size == 1.0:
        return n
    return max(1, round(size * n)) if 0 < size < 1 else int(size)


def _carve(indexes: list[int], digests: list[bytes], size: float, generator: torch.Generator):
    """`size` of `indexes` (a share, or a count) drawn at random, copies of a file drawn together: (drawn, rest)."""
    wanted = count_of(size, len(indexes))
    groups: dict[bytes, list[int]] = {}
    for i in indexes:
        groups.setdefault(digests[i], []).append(i)
    grouped = list(groups.values())
    order = [grouped[g] for g in torch.randperm(len(grouped), generator=generator).tolist()]
    drawn: list[int] = []
    for group in order:
        if len(drawn) >= wanted:
            break
        drawn += group
    taken = set(drawn)
    return sorted(drawn), [i for i in indexes if i not in taken]


def _refuse_copies_across_splits(listing: Listing, digests: list[bytes]) -> None:
    first: dict[bytes, int] = {}
    crossing = []
    for i, digest in enumerate(digests):
        seen = first.setdefault(digest, i)
        if listing.splits[i] and listing.splits[seen] != listing.splits[i]:
            crossing.append((listing.files[seen], listing.files[i]))
    if crossing:
        named = ", ".join(
            f"{path_text(_relative(a, listing.root))} = {path_text(_relative(b, listing.root))}"
            for a, b in crossing[:SHOWN]
        )
        raise DataError(
            f"{len(crossing)} image(s) are in two splits (the same file's bytes): {named}"
            f"{', ...' if len(crossing) > SHOWN else ''}. A test image the model trained on measures nothing: keep "
            "each image in one split"
        )


def _relative(path: Path, root: Path) -> Path:
    base = root.parent if root.is_file() else root
    return path.relative_to(base) if path.is_relative_to(base) else path
