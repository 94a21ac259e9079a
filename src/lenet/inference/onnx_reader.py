"""An .onnx file of lenet.export read as a Predictor with onnxruntime alone: no torch, no Lightning.

From the file's bytes, not its path: what was read is what runs, and no external data file is looked up.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from lenet.frame.errors import ModelError
from lenet.frame.model_bytes import read_model_file
from lenet.inference.trained_model import Predictor, from_metadata, from_properties


def read(path: Path, device: str = "auto") -> Predictor:
    """An .onnx file of lenet.export as a Predictor, run by onnxruntime (on a GPU when asked and available)."""
    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        # From its bytes, not its path: what was read is what runs, and no external data file is looked up
        session = ort.InferenceSession(read_model_file(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise ModelError(f"{path} is not an ONNX model onnxruntime can run ({error})") from None
    metadata = from_properties(session.get_modelmeta().custom_metadata_map)
    input_name = session.get_inputs()[0].name

    def forward(images: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: images})[0]

    return from_metadata(path, metadata, session, forward)
