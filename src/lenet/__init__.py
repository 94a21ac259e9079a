"""LeNet on MNIST-family data with PyTorch Lightning and Hydra."""

from pathlib import Path

from omegaconf import OmegaConf

from lenet.frame.mnist_family import DATASETS

_PACKAGED = Path(__file__).parent / "conf"  # the copy a wheel ships
_SOURCE = Path(__file__).parents[2] / "conf"  # the top-level conf/ of a source checkout
# Here, not in a module that imports torch, so that an entry point's `--help` and `--cfg` need no torch import.
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _SOURCE)

# conf/data/*.yaml take a data set's facts from its record, `${data_set:mnist,mean}`, rather than restating them.
# Registered here, where everything that composes lenet's configs passes (CONFIG_DIR). An unknown data set gives
# null: data.dataset's own rule names the mistake.
OmegaConf.register_new_resolver(
    "data_set", lambda name, fact: getattr(DATASETS[name], fact) if name in DATASETS else None, replace=True
)
