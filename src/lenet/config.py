"""Where the Hydra configs live, the start-up check of a composed config, and `ckpt_path` resolved to a file."""

import inspect
from dataclasses import fields
from pathlib import Path

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from lenet import CONFIG_DIR, schema  # noqa: F401 (CONFIG_DIR: where train and eval import it from)
from lenet.console import UserError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

schema.register()  # before Hydra composes: the YAML options name their schemas in their defaults


class ConfigError(UserError):
    """A config value that cannot work."""


def validate(cfg: DictConfig) -> None:
    """Required values, a GPU when one is asked for, ranges and choices, and keys no schema or target knows."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required: set it on the command line, e.g. {missing[0]}=VALUE")
    if OmegaConf.select(cfg, "trainer.accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible here; use trainer=cpu or trainer=default")
    if "run_dir" in cfg:  # the training config (lenet.eval has its own, smaller one)
        _check_values("", cfg, schema.Config)
    for path, node in _instantiated(cfg):
        target_schema = schema.BY_TARGET.get(node._target_)
        if target_schema:
            _check_values(path, node, target_schema)
        _check_keys(path, node, target_schema)


def _instantiated(node: DictConfig, path: str = ""):
    """(dotted path, node) of every node with a `_target_`, depth first."""
    for key in node:
        child = node[key]
        if isinstance(child, DictConfig):
            child_path = f"{path}{key}"
            if "_target_" in child:
                yield child_path, child
            yield from _instantiated(child, f"{child_path}.")


def _check_values(path: str, node: DictConfig, node_schema) -> None:
    for spec in fields(node_schema):
        test = spec.metadata.get("test")
        if test is None or spec.name not in node:
            continue
        value = node[spec.name]
        try:
            ok = test(value)
        except TypeError:
            ok = False
        if not ok:
            key = f"{path}.{spec.name}" if path else spec.name
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {spec.metadata['allowed']}")


def _check_keys(path: str, node: DictConfig, node_schema) -> None:
    parameters = inspect.signature(get_object(node._target_)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # the target takes any keyword
    known = set(parameters) | HYDRA_KEYS | ({spec.name for spec in fields(node_schema)} if node_schema else set())
    for key in node:
        if key not in known:
            settings = ", ".join(sorted(known - HYDRA_KEYS - {"params", "optimizer"}))
            raise ConfigError(f"{path}.{key} is not a setting of {node._target_}; its settings: {settings}")


def checkpoint_file(ckpt_path: str | None, outputs_dir: Path) -> Path | None:
    """`ckpt_path` as a file: `last` means the newest last.ckpt of any run under `outputs_dir`."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        runs = sorted(outputs_dir.glob("**/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
        if not runs:
            raise ConfigError(f"ckpt_path=last: no run under {outputs_dir}/ has a last.ckpt; give a checkpoint path")
        return runs[-1]
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return Path(ckpt_path)
