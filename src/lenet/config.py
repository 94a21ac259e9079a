"""Where the Hydra configs live, and the start-up checks on the values users type most."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lenet.console import UserError

_PACKAGED = Path(__file__).parent / "conf"  # the copy a wheel ships
_SOURCE = Path(__file__).parents[2] / "conf"  # the top-level conf/ of a source checkout
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _SOURCE)


class ConfigError(UserError):
    """A config value that cannot work."""


# key: (type, test, what is allowed). Checked before any data loads.
CHECKS = {
    "optimizer.lr": (float, lambda v: v > 0, "a number > 0"),
    "data.batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "data.val_size": (int, lambda v: v >= 0, "an integer >= 0 (0: no validation)"),
    "trainer.max_epochs": (int, lambda v: v >= 1, "an integer >= 1"),
    "seed": (int, lambda v: True, "an integer"),
}


def check(cfg: DictConfig) -> None:
    for key, (kind, test, allowed) in CHECKS.items():
        value = OmegaConf.select(cfg, key)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (kind is int and not isinstance(value, int)) or not test(value):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}")
