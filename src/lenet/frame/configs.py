"""Where lenet's Hydra configs are, and the resolver they use. Here, on the ground floor and without torch, so that
`--help`, `--cfg` and tab completion need no torch import, and every module that composes or reads the configs
finds them the same way."""

from pathlib import Path

from omegaconf import OmegaConf

from lenet.frame.mnist_family import DATASETS

_PACKAGE = Path(__file__).parents[1]
_PACKAGED = _PACKAGE / "conf"  # the copy a wheel ships
_SOURCE = _PACKAGE.parents[1] / "conf"  # the top-level conf/ of a source checkout
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _SOURCE)


# conf/data/*.yaml take a data set's facts from its record, `${data_set:mnist,mean}`, rather than restating them.
# Registered on import: every path to lenet's configs imports CONFIG_DIR from here. An unknown data set gives null:
# data.dataset's own rule names the mistake; data=images has none: its facts come from its files.
def _fact(name: str, fact: str):
    value = getattr(DATASETS[name], fact) if name in DATASETS else None
    return list(value) if isinstance(value, tuple) else value  # its class names: a list, as a config holds them


OmegaConf.register_new_resolver("data_set", _fact, replace=True)
