"""Typed schemas of the config groups, registered in Hydra's ConfigStore.

Each YAML option lists its schema first in its defaults, so Hydra checks types when it composes
(`optimizer.lr=abc` fails there). A field's `allowed` metadata is the range or choice that
`lenet.config.validate` checks at start-up, before any data loads.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from lenet.data import DATASETS
from lenet.model import ACTIVATIONS, POOLINGS


def allowed(default, test, text: str, **kwargs):
    """A field whose value must pass `test`; `text` says what is allowed."""
    return field(default=default, metadata={"test": test, "allowed": text}, **kwargs)


def positive(default):
    return allowed(default, lambda v: v > 0, "a number > 0")


def at_least(low: int, default):
    return allowed(default, lambda v: v >= low, f"an integer >= {low}")


def fraction(default):
    return allowed(default, lambda v: 0 <= v < 1, "a number in [0, 1)")


def one_of(choices, default):
    return allowed(default, lambda v: v in choices, "one of " + ", ".join(sorted(choices)))


@dataclass
class Model:
    _target_: str = "lenet.model.LeNet"
    activation: str = one_of(ACTIVATIONS, "relu")
    pooling: str = one_of(POOLINGS, "max")
    batch_norm: bool = False
    dropout: float = fraction(0.0)
    num_classes: int = at_least(2, 10)
    compile: bool = False
    channels_last: bool = False


@dataclass
class Data:
    _target_: str = "lenet.data.MNISTDataModule"
    dataset: str = one_of(DATASETS, "mnist")
    root: str = "data"
    batch_size: int = at_least(1, 128)
    eval_batch_size: int = at_least(1, 1000)
    val_size: int = allowed(5000, lambda v: v >= 0, "an integer >= 0 (0: no validation)")
    mean: float = 0.1307
    std: float = positive(0.3081)
    split_seed: int = 0
    seed: int = 0


@dataclass
class Optimizer:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = positive(MISSING)
    weight_decay: float = allowed(0.0, lambda v: v >= 0, "a number >= 0")


@dataclass
class SGD(Optimizer):
    _target_: str = "torch.optim.SGD"
    momentum: float = fraction(0.0)
    nesterov: bool = False


@dataclass
class Adam(Optimizer):
    _target_: str = "torch.optim.Adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class OneCycle:
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    _partial_: bool = True
    max_lr: float = positive(MISSING)
    pct_start: float = allowed(0.2, lambda v: 0 < v < 1, "a number in (0, 1)")


@dataclass
class Cosine:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    eta_min: float = allowed(0.0, lambda v: v >= 0, "a number >= 0")


@dataclass
class Step:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = at_least(1, 3)
    gamma: float = positive(0.1)


@dataclass
class Trainer:
    """The Trainer arguments the configs set; any other one can be added with `+trainer.NAME=VALUE`."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: Any = "auto"  # trainer=ddp: ddp
    num_nodes: int = at_least(1, 1)
    max_epochs: int = at_least(1, 8)
    precision: Any = "32-true"
    default_root_dir: str = MISSING
    log_every_n_steps: int = at_least(1, 50)
    deterministic: bool = False
    enable_model_summary: bool = False
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: Any = None


@dataclass
class Config:
    """The top level; the groups are typed by their own schemas."""

    model: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
    callbacks: Any = MISSING
    logger: Any = MISSING
    seed: int = 42
    ckpt_path: Optional[str] = None  # noqa: UP045 (OmegaConf 2.3 reads Optional, not X | None)
    threads: Optional[int] = allowed(None, lambda v: v is None or v >= 1, "an integer >= 1, or null")  # noqa: UP045
    outputs_dir: str = "outputs"
    hparams_search: Any = None  # hparams_search=optuna: the search's storage, study name and trial count
    run_dir: str = MISSING


# The schema of each instantiated node, by its _target_: what `validate` checks.
BY_TARGET = {schema._target_: schema for schema in (Model, Data, SGD, Adam, OneCycle, Cosine, Step, Trainer)} | {
    "torch.optim.AdamW": Adam
}

SCHEMAS = {
    ("model", "lenet_schema"): Model,
    ("data", "data_schema"): Data,
    ("optimizer", "sgd_schema"): SGD,
    ("optimizer", "adam_schema"): Adam,
    ("scheduler", "onecycle_schema"): OneCycle,
    ("scheduler", "cosine_schema"): Cosine,
    ("scheduler", "step_schema"): Step,
    ("trainer", "trainer_schema"): Trainer,
    (None, "config_schema"): Config,
}


def register() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
