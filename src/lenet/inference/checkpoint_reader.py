"""A checkpoint of lenet.train (.ckpt) read as a Predictor (lenet.inference.trained_model): its network, on the
device asked for, fed by the forward a .pt2 shares. The checkpoint itself is read and checked by
lenet.training.checkpoints.Checkpoint, its one reader."""

from pathlib import Path

from lenet.inference.torch_forward import device_of, forward_numpy
from lenet.inference.trained_model import Predictor
from lenet.training.checkpoints import Checkpoint


def read(path: Path, device: str = "auto") -> Predictor:
    """A checkpoint as a Predictor: lenet.inference.model_files' reader for .ckpt files."""
    return predictor(Checkpoint.open(path), device)


def predictor(checkpoint: Checkpoint, device: str = "auto") -> Predictor:
    """An opened checkpoint's model as a Predictor, on `device`."""
    torch_device = device_of(device)
    net = checkpoint.module().net.eval().to(torch_device)
    data = checkpoint.data_settings
    return Predictor(
        checkpoint.classes, data["mean"], data["std"], data["dataset"], checkpoint.layout, checkpoint.path,
        str(checkpoint.path), net, forward_numpy(net, torch_device),
    )  # fmt: skip
