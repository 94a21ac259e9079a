"""LeNet on MNIST-family data with PyTorch Lightning and Hydra."""

from pathlib import Path

_PACKAGED = Path(__file__).parent / "conf"  # the copy a wheel ships
_SOURCE = Path(__file__).parents[2] / "conf"  # the top-level conf/ of a source checkout
# Here, not in lenet.config, so that an entry point's `--help` and `--cfg` need no torch import.
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _SOURCE)
