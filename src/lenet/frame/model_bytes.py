"""A model file's bytes, read once and within a size: what is checked is what is loaded. Every model file's reader
(a .ckpt's in lenet.training.checkpoints, an .onnx's and a .pt2's in lenet.inference) starts here."""

from pathlib import Path

from lenet.frame.errors import ModelError

MAX_MODEL_BYTES = 256 * 2**20  # a LeNet's file is under a megabyte


def read_model_file(path: Path) -> bytes:
    """The whole file, read once: what is checked is what is loaded."""
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelError(f"{path} is larger than {MAX_MODEL_BYTES // 2**20} MB: not a LeNet of lenet")
    return path.read_bytes()
