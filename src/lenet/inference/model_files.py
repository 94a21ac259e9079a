"""A model file read by its format's reader: a checkpoint of lenet.train (.ckpt) or a file of lenet.export (.onnx,
.pt2), each read as a Predictor (lenet.inference.trained_model).

A reader is imported only when a file of its format is read: predicting with an .onnx file imports neither torch nor
Lightning (tests/test_layout.py checks it).
"""

from pathlib import Path

from lenet.frame.errors import ModelError
from lenet.inference.trained_model import Predictor

EXPORTED = (".onnx", ".pt2")  # lenet.export's files, by suffix; any other file is read as a checkpoint


def load(path: str | Path, device: str = "auto") -> Predictor:
    """A predictor from a lenet.train checkpoint, an exported .onnx or an exported .pt2 (with its metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        read = reader(path.suffix.lower())
    except ImportError:  # onnxruntime
        raise ModelError(f"reading a {path.suffix} file needs the export extra: pip install 'lenet[export]'") from None
    return read(path, device)


def reader(suffix: str):
    """The `read(path, device)` of the files with this suffix, its module imported now."""
    if suffix == ".onnx":
        import lenet.inference.onnx_reader as format_reader
    elif suffix == ".pt2":
        import lenet.inference.pt2_reader as format_reader
    else:
        import lenet.inference.checkpoint_reader as format_reader
    return format_reader.read
