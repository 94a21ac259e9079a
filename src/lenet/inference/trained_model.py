"""A trained model ready to predict, whatever file it ships as: a checkpoint of lenet.train (.ckpt) or a file of
lenet.export (.onnx, .pt2), read by that format's own reader (lenet.inference.model_files picks it) and used through
one interface, Predictor, which every reader builds from what it read.
"""

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet.frame import keys
from lenet.frame.errors import ModelError
from lenet.frame.mnist_family import DATASETS, LAYOUTS, normalize
from lenet.images.preparation import prepare

# What an exported file promises, written into its metadata.
INPUT = "float32 N x 1 x 28 x 28: pixels 0..255, light on dark, normalized as (pixel - 255 * mean) / (255 * std)"
OUTPUT = "logits"
METADATA_FILE = "lenet.json"  # the metadata inside a .pt2 (torch.export.save's extra_files)
NUMBERS_AND_LISTS = ("classes", "mean", "std")  # in ONNX metadata_props, which are strings, these are JSON


@dataclass
class Predictor:
    """A trained LeNet, whatever file it came from, and what feeding it takes; `model` is the torch module, the
    exported program or the onnxruntime session."""

    classes: list[str]
    mean: float
    std: float
    dataset: str  # a data set's name (lenet.frame.mnist_family), or `images`: a folder of the user's own
    layout: str  # how its images are laid out (a name in LAYOUTS): how a user's image is prepared for it
    source: Path  # the file it was loaded from
    checkpoint: str  # the lenet.train checkpoint it came from (the source itself for a .ckpt)
    model: Any
    forward: Callable[[np.ndarray], np.ndarray]  # normalized float32 N x 1 x 28 x 28 -> N x classes logits

    def prepare(self, image, max_pixels: int | None = None, max_bytes: int | None = None) -> np.ndarray:
        """A user's image as its data set's images were made (lenet.images.preparation.prepare)."""
        return self.preparer(max_pixels, max_bytes)(image)

    def preparer(self, max_pixels: int | None = None, max_bytes: int | None = None) -> Callable[..., np.ndarray]:
        """`prepare` as a function of the image alone that holds no model: what predict's worker processes run."""
        return functools.partial(prepare, layout=LAYOUTS[self.layout], max_pixels=max_pixels, max_bytes=max_bytes)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28, by the function training normalizes with."""
        return normalize(images.astype(np.float32), self.mean, self.std)[:, None]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.forward(self.normalize(images))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        logits = self.logits(images)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def metadata(self) -> dict:
        """What an exported file carries so that it can be used alone."""
        return {
            "dataset": self.dataset,
            "layout": self.layout,
            "classes": self.classes,
            "mean": self.mean,
            "std": self.std,
            "checkpoint": self.checkpoint,
            "input": INPUT,
            "output": OUTPUT,
        }


def from_metadata(path: Path, metadata: dict, model, forward) -> Predictor:
    """The predictor of an exported file, from the metadata it carries."""
    needed = {"classes", "mean", "std", "dataset"}
    if not metadata or not needed <= metadata.keys():
        raise ModelError(f"{path} lacks lenet.export's metadata (class names, mean, std): export it with lenet.export")
    if metadata.get("output", OUTPUT) != OUTPUT:
        raise ModelError(f"{path} returns {metadata['output']}, not {OUTPUT}")
    if refusal := _metadata_refusal(metadata):
        raise ModelError(f"{path} {refusal}")
    return Predictor(
        list(metadata["classes"]),
        float(metadata["mean"]),
        float(metadata["std"]),
        metadata["dataset"],
        layout_of(metadata),
        path,
        metadata.get("checkpoint", ""),
        model,
        forward,
    )


def _metadata_refusal(metadata: dict) -> str | None:
    """Why the metadata an exported file carries is not what lenet.export writes, naming the key; None if it is.
    Its numbers are checked by the rules of the data settings they come from (lenet.frame.keys), null excluded."""
    for key in ("mean", "std"):
        value, rule = metadata[key], keys.FILLED[f"data.{key}"]
        if not rule.test(value):
            return f"holds {key}={value!r:.60}, which is not allowed: it must be {rule.text}"
    if not isinstance(metadata["dataset"], str):
        return f"holds dataset={metadata['dataset']!r:.60}, which is not allowed: it must be a data set's name"
    layout = layout_of(metadata)  # how lenet prepares images for it
    if layout is None:
        return f"holds dataset={metadata['dataset']!r:.60} without a layout: export it again with lenet.export"
    if layout not in LAYOUTS:
        return f"holds layout={layout!r:.60}, which is not allowed: it must be one of {', '.join(LAYOUTS)}"
    classes = metadata["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(name, str) for name in classes)):
        return f"holds classes={classes!r:.60}, which is not allowed: it must be a list of two or more class names"
    return None


def layout_of(metadata: dict):
    """The layout an exported file names; files exported before they named it have their data set's."""
    record = DATASETS.get(metadata["dataset"])
    return metadata.get("layout", record.layout if record else None)


def properties(metadata: dict) -> dict[str, str]:
    """Metadata as ONNX metadata_props, which are strings: lists and numbers as JSON, strings as they are."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}


def from_properties(props: dict[str, str]) -> dict:
    return {key: _json(value) if key in NUMBERS_AND_LISTS else value for key, value in props.items()}


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # not what lenet.export writes: from_metadata refuses it, naming its key
