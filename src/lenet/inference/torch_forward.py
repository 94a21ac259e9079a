"""A torch model on the device it runs on, fed numpy batches: for predicting with a checkpoint or a .pt2."""

from collections.abc import Callable

import numpy as np
import torch

from lenet.frame.errors import ModelError


def device_of(device: str) -> torch.device:
    """`auto`: a GPU when one is visible, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={device} but no CUDA GPU is visible here; use device=cpu or device=auto")
    return torch.device(device)


def forward_numpy(module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """`module` as a function of normalized float32 N x 1 x 28 x 28 arrays, returning N x classes logits."""

    def forward(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images).to(device)).float().cpu().numpy()

    return forward
