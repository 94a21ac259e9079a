"""LeNet on MNIST-family data with PyTorch Lightning and Hydra."""

from lenet.frame.configs import CONFIG_DIR

__all__ = ["CONFIG_DIR"]
