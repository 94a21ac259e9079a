"""IDX, the file format of MNIST and its family: the four files of a data set found in a folder, checked, read and
written."""

import gzip
import math
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from lenet.frame.errors import DataError

# The four standard IDX files, as every MNIST-family data set names them.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = [name for names in SPLIT_FILES.values() for name in names]
READERS = {"images": read_image_file, "labels": read_label_file}
IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}  # unsigned bytes; 3 dimensions for images, 1 for labels
FIX = "delete it and download again, or replace it with a good copy"


def split_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The IDX files of a folder (e.g. Debian's dataset-fashion-mnist), gzipped or not, by split.

    None when the folder has none of them; an error naming the missing ones when it has only some.
    """
    found = {name: next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None) for name in ALL_FILES}
    missing = [name for name, path in found.items() if path is None]
    if len(missing) == len(ALL_FILES):
        return None
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)} (or .gz): put all four IDX files there")
    return {split: (found[images], found[labels]) for split, (images, labels) in SPLIT_FILES.items()}


def idx_folders(top: Path, depth: int = 3) -> list[Path]:
    """`top` and the folders up to `depth` levels below it that hold a training-images IDX file."""
    files = (file for level in range(depth + 1) for file in top.glob("*/" * level + "train-images-idx3-ubyte*"))
    return sorted({file.parent for file in files if not any(part.startswith(".download-") for part in file.parts)})


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """Check one IDX file, then read it with torchvision's reader (which takes only uncompressed files)."""
    if path.suffix != ".gz":
        check_idx(path, kind, shown=path)
        return READERS[kind](str(path))
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / path.stem
        try:
            with gzip.open(path) as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError, zlib.error) as error:  # gzip checks its own CRC and length
            raise DataError(f"{path}: damaged gzip file ({error}); {FIX}") from None
        check_idx(plain, kind, shown=path)
        return READERS[kind](str(plain))


def check_idx(path: Path, kind: str, shown: Path) -> None:
    """The magic number, shape and length torchvision's reader assumes but does not check."""
    ndim = IDX_MAGIC[kind] & 0xFF
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 or int.from_bytes(header[:4], "big") != IDX_MAGIC[kind]:
        found = f"0x{int.from_bytes(header[:4], 'big'):08x}" if len(header) >= 4 else f"a {len(header)}-byte file"
        raise DataError(f"{shown}: not an IDX {kind} file (found {found}, expected 0x{IDX_MAGIC[kind]:08x}); {FIX}")
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{shown}: its header is cut short ({len(header)} of {4 + 4 * ndim} bytes); {FIX}")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if kind == "images" and dims[1:] != (28, 28):
        raise DataError(f"{shown}: images are {dims[1]}x{dims[2]}, not 28x28; {FIX}")
    expected, size = 4 + 4 * ndim + math.prod(dims), path.stat().st_size
    if size != expected:
        raise DataError(f"{shown}: {size} bytes where its header ({dims[0]} {kind}) needs {expected}; {FIX}")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An array of unsigned bytes as an IDX file, gzipped when the name ends in .gz: magic (0x08 = unsigned byte,
    then the number of dimensions), each dimension, the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
