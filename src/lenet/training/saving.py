"""Checkpoints written whole or not at all: Lightning's CheckpointIO through lenet.frame.atomic."""

from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lenet.frame import atomic


class WholeCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, but each checkpoint goes to a temporary file beside its final name, flushed to
    the disk and renamed over it (lenet.frame.atomic). Lightning's own writes to a temporary file in $TMPDIR and moves
    it:
    across file systems the move is a copy onto the old checkpoint, so a disk that filled mid-copy left best.ckpt
    and last.ckpt truncated, the good copies gone; and a kill mid-save left a file in /tmp that nothing removes.

    A kill here may leave a `.partial` file in the checkpoints folder: the next attempt of the run removes it
    (lenet.runs.rundir). A trainer's `plugins` entry; under DDP only rank 0 saves, through the same object.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own, which says what it
            return super().save_checkpoint(checkpoint, path, storage_options)  # supports
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(path, "wb") as file:
            torch.save(checkpoint, file)
