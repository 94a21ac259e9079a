"""Every config key, declared once: what it may hold (its rule) and what it is (its roles). The YAML files of conf/
hold the values; this file, what the code needs to know of each key. Every list of keys is derived from it.

A key's roles:
- `hparam`: its column in TensorBoard's HPARAMS (every run logs these, so a sweep's runs line up);
- `recipe`: whether it is part of what a run trains, or only of where and how it runs (lenet.report compares runs by
  their recipes; TensorBoard shows only recipe keys);
- `resume`: whether a resume may change it (CHANGEABLE), not (FIXED), or not while the schedule spans the whole run
  (RUN_LENGTH): Lightning restores the optimizer and schedule over whatever the config says;
- `own`: read by lenet itself, not an argument of its group's `_target_`;
- `search`: a search's own setting, left out of the command lines lenet prints;
- `not_rerun`: why lenet.reproduce leaves it out of the rerun of a run (empty: the rerun repeats it);
- `from_data`: null asks for the data's own value, filled in when the data loads (lenet.training.datamodule) and
  recorded so; a resume's null matches the value the run recorded.

A role left out is the nearest enclosing key's (`trainer.precision` is CHANGEABLE because `trainer` is), the root's
being recipe, FIXED, not own, not search. A key may be a pattern (`callbacks.*.dirpath`). Adding a key to lenet is
one line here, beside its YAML.

`lenet.frame.validate` checks every key that has a rule at start-up, before any data loads, and names the key, its value
and what is allowed in one line. Rules go by key, not by option: a new option file (conf/optimizer/rmsprop.yaml)
gets the checks of the keys it shares with the others without a change here.
"""

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lenet.frame.mnist_family import DATA_SET_NAMES, LAYOUTS, OWN_IMAGES  # what data.dataset, data.layout take

CHANGEABLE, FIXED, RUN_LENGTH = "changeable", "fixed", "run length"


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    allowed: str | Callable[[], str]  # completes "it must be ..."

    def __or__(self, other: "Rule") -> "Rule":
        return Rule(lambda v: self.test(v) or other.test(v), lambda: f"{self.text}, or {other.text}")

    @property
    def text(self) -> str:
        return self.allowed() if callable(self.allowed) else self.allowed


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    if low is None:
        return Rule(_is_int, "an integer")
    if high is not None:
        return Rule(lambda v: _is_int(v) and low <= v <= high, f"an integer from {low} to {high}")
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def number(low: float, *, strict: bool = False, below: float | None = None) -> Rule:
    """A number above `low` (or equal to it, unless strict), and under `below` when given."""
    if below is None:
        text = f"a number {'>' if strict else '>='} {low}"
    else:
        text = f"a number in {'(' if strict else '['}{low}, {below})"

    def test(v) -> bool:
        return _is_number(v) and (v > low if strict else v >= low) and (below is None or v < below)

    return Rule(test, text)


def one_of(*choices) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


def strings(test: Callable[[str], bool], text: str) -> Rule:
    return Rule(lambda v: isinstance(v, list) and all(isinstance(s, str) and test(s) for s in v), text)


CLASS_NAMES = Rule(
    lambda v: isinstance(v, list | tuple) and len(v) >= 2 and len(set(v)) == len(v)
    and all(isinstance(name, str) and name for name in v),
    "a list of two or more different class names",
)  # fmt: skip
BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
NULL = Rule(lambda v: v is None, "null")
POSITIVE = number(0, strict=True)
MEAN = number(0, below=1)  # of pixels in [0, 1]
NON_NEGATIVE = number(0)
FRACTION = number(0, below=1)
BETAS = Rule(
    lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(FRACTION.test(b) for b in v),
    "two numbers in [0, 1), e.g. [0.9,0.999]",
)
# A share of the training set (0 <= f < 1; 0: no validation) or a count of images.
VAL_SIZE = Rule(
    lambda v: FRACTION.test(v) or (_is_int(v) and v >= 1),
    "a share of the training images in [0, 1) (0: no validation), or a count of them >= 1",
)
# Lightning's overfit_batches and limit_*_batches.
SHARE_OR_COUNT = Rule(
    lambda v: (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
    "a share of the batches in [0.0, 1.0] or a count of them",
)
DEVICE = Rule(lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"), "auto, cpu, cuda or cuda:N")
PROFILER = Rule(lambda v: isinstance(v, dict) and "_target_" in v, "a profiler's config with _target_ (debug=profile)")
HOSTS = strings(bool, 'a list of host names or addresses, e.g. [example.org,"*.example.org"] ("*": any)')
ORIGINS = strings(lambda o: o == "*" or "://" in o, 'a list of origins, e.g. ["https://example.org"] ("*": any)')
# The choices lenet's code implements, declared here, where the keys that take them are: the modules above that
# implement them (lenet.training.network, lenet.inference.portable) implement exactly these (tests/test_layout.py).
ACTIVATIONS = ("relu", "tanh")
POOLINGS = ("max", "avg")
FORMATS = ("onnx", "pt2")  # lenet.export's
# What Lightning accepts. All train on a CPU but 16-mixed, which lenet.frame.validate refuses there.
PRECISIONS = one_of("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


@dataclass(frozen=True)
class Key:
    rule: Rule | None = None
    hparam: str | None = None
    recipe: bool | None = None
    resume: str | None = None
    own: bool | None = None
    search: bool | None = None
    why_fixed: str | None = None  # said when a resume would change it
    not_rerun: str | None = None  # why lenet.reproduce leaves it out of a rerun ("": a rerun repeats it)
    from_data: bool | None = None


ROOT = Key(recipe=True, resume=FIXED, own=False, search=False, not_rerun="", from_data=False)
KEYS: dict[str, Key] = {
    # lenet.train
    "seed": Key(integer(), hparam="seed"),
    "ckpt_path": Key(
        NULL | TEXT,
        recipe=False,
        resume=CHANGEABLE,
        not_rerun="the rerun trains from the start; a resumed run ends as the uninterrupted one would",
    ),
    # A new run's first weights: a checkpoint or a run dir's best.ckpt (lenet.training.checkpoints.InitialWeights).
    # Part of the recipe, and a rerun starts from the same file. A resume takes its weights from its checkpoint:
    # init_from with ckpt_path is refused (lenet.training.fit), and a resumed run keeps its checkpoint's init_from.
    "init_from": Key(NULL | TEXT, resume=CHANGEABLE),
    # null: chosen from the CPUs free at start (lenet.training.cpus), a resume's taken from its checkpoint; N on a
    # resume wins
    "threads": Key(NULL | integer(1), recipe=False, resume=CHANGEABLE),
    "outputs_dir": Key(TEXT, recipe=False, resume=CHANGEABLE),
    "run_dir": Key(recipe=False, resume=CHANGEABLE, not_rerun="it would write into the run's folder"),
    "hparams_search": Key(recipe=False, resume=CHANGEABLE, search=True),
    "model": Key(),
    "model.activation": Key(one_of(*ACTIVATIONS), hparam="activation"),
    "model.pooling": Key(one_of(*POOLINGS), hparam="pooling"),
    "model.batch_norm": Key(BOOLEAN, hparam="batch_norm"),
    "model.dropout": Key(FRACTION, hparam="dropout"),
    "model.num_classes": Key(NULL | integer(2), from_data=True),  # null: the data's class count
    "model.compile": Key(BOOLEAN, own=True, resume=CHANGEABLE),
    "model.channels_last": Key(BOOLEAN, own=True, resume=CHANGEABLE),
    "data": Key(hparam="dataset"),  # data=fashion_mnist shows as its dataset
    "data.dataset": Key(one_of(*DATA_SET_NAMES), hparam="dataset"),
    "data.root": Key(NULL | TEXT, resume=CHANGEABLE),  # null (data=images' default): required, CONSTRAINTS say so
    "data.batch_size": Key(integer(1), hparam="batch_size"),
    "data.eval_batch_size": Key(integer(1), resume=CHANGEABLE),
    "data.val_size": Key(VAL_SIZE),
    "data.mean": Key(NULL | MEAN, from_data=True),  # null: the training images' own
    "data.std": Key(NULL | POSITIVE, from_data=True),
    "data.classes": Key(NULL | CLASS_NAMES, from_data=True),
    "data.layout": Key(one_of(*LAYOUTS)),
    # A share of a folder's images kept for testing, or a count; 1.0: all (lenet.eval on a folder of test images)
    "data.test_size": Key(number(0, strict=True, below=1) | integer(1) | one_of(1.0)),
    "data.split_seed": Key(integer()),
    "data.seed": Key(integer()),
    "data.augment": Key(BOOLEAN),
    "data.augment_degrees": Key(number(0, below=180)),
    "data.augment_scale": Key(FRACTION),
    "data.augment_shift": Key(FRACTION),
    "optimizer": Key(hparam="optimizer"),
    "optimizer._target_": Key(hparam="optimizer"),
    "optimizer.lr": Key(POSITIVE, hparam="lr"),
    "optimizer.weight_decay": Key(NON_NEGATIVE, hparam="weight_decay"),
    "optimizer.momentum": Key(FRACTION, hparam="momentum"),
    "optimizer.betas": Key(BETAS, hparam="momentum"),  # Adam's beta1 is its momentum
    "optimizer.dampening": Key(FRACTION),
    "optimizer.nesterov": Key(BOOLEAN),
    "optimizer.eps": Key(POSITIVE),
    "scheduler": Key(hparam="scheduler"),
    "scheduler._target_": Key(hparam="scheduler"),
    "scheduler.max_lr": Key(POSITIVE),
    "scheduler.pct_start": Key(number(0, strict=True, below=1)),
    "scheduler.cycle_momentum": Key(BOOLEAN),
    "scheduler.eta_min": Key(NON_NEGATIVE),
    "scheduler.step_size": Key(integer(1)),
    "scheduler.gamma": Key(POSITIVE),
    "trainer": Key(resume=CHANGEABLE),
    "trainer.accelerator": Key(one_of("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
    "trainer.devices": Key(resume=RUN_LENGTH),
    "trainer.num_nodes": Key(integer(1), resume=RUN_LENGTH),
    "trainer.max_epochs": Key(integer(1), hparam="max_epochs", resume=RUN_LENGTH),
    "trainer.limit_train_batches": Key(NULL | SHARE_OR_COUNT, resume=RUN_LENGTH),
    "trainer.accumulate_grad_batches": Key(integer(1), resume=RUN_LENGTH),
    "trainer.precision": Key(PRECISIONS),
    "trainer.log_every_n_steps": Key(integer(1), recipe=False),
    "trainer.default_root_dir": Key(recipe=False),
    "trainer.enable_model_summary": Key(recipe=False),
    "trainer.deterministic": Key(BOOLEAN),
    "trainer.gradient_clip_val": Key(NULL | NON_NEGATIVE),
    "trainer.fast_dev_run": Key(BOOLEAN | integer(0)),
    "trainer.overfit_batches": Key(SHARE_OR_COUNT),
    "trainer.limit_val_batches": Key(NULL | SHARE_OR_COUNT),
    "trainer.limit_test_batches": Key(NULL | SHARE_OR_COUNT),
    "trainer.num_sanity_val_steps": Key(NULL | integer(-1)),
    "trainer.profiler": Key(NULL | one_of("simple", "advanced", "pytorch") | PROFILER),
    "callbacks": Key(resume=CHANGEABLE),
    "callbacks.*.dirpath": Key(recipe=False),
    "callbacks.progress_bar": Key(recipe=False),
    "callbacks.lr_monitor": Key(recipe=False),
    # The checkpoint holds the average of the run so far and the trained weights beside it. Without it a resume
    # would train on from the average; added, it would average half a run.
    "callbacks.ema": Key(resume=FIXED, why_fixed="it averages the weights of the whole run"),
    "callbacks.ema.multi_avg_fn.decay": Key(FRACTION),
    "logger": Key(recipe=False, resume=CHANGEABLE),
    # logger=mlflow, logger=wandb: a null name is filled in by lenet.training.tracking (the run dir, the sweep)
    "logger.mlflow.tracking_uri": Key(TEXT),
    "logger.mlflow.experiment_name": Key(NULL | TEXT),
    "logger.mlflow.run_name": Key(NULL | TEXT),
    "logger.mlflow.artifact_location": Key(NULL | TEXT),
    "logger.wandb.project": Key(TEXT),
    "logger.wandb.name": Key(NULL | TEXT),
    "logger.wandb.group": Key(NULL | TEXT),
    "logger.wandb.offline": Key(NULL | BOOLEAN),  # null: online when logged in to W&B or WANDB_MODE says so
    # lenet.predict, lenet.export and lenet.serve
    "inputs": Key(),
    "output": Key(),
    "top_k": Key(integer(1)),
    "batch_size": Key(integer(1)),
    "device": Key(DEVICE),
    "format": Key(NULL | one_of(*FORMATS)),
    "preview": Key(BOOLEAN),
    "preview_order": Key(one_of("input", "confidence")),
    "prepare": Key(BOOLEAN),
    "max_megapixels": Key(POSITIVE),
    "max_decoded_mb": Key(POSITIVE),
    "host": Key(TEXT),
    "port": Key(integer(0, 65535)),
    "workers": Key(integer(1)),
    "processes": Key(integer(1)),
    "max_upload_mb": Key(POSITIVE),
    "upload_timeout_s": Key(POSITIVE),
    "header_timeout_s": Key(POSITIVE),
    "allowed_hosts": Key(NULL | HOSTS),
    "cors_origins": Key(ORIGINS),
    "access_log": Key(BOOLEAN),
}

# What a trained model's files (a checkpoint's settings, an export's metadata) hold where a config may hold null: the
# data's own, filled in (the from_data keys, and the data module's num_classes). Other settings: their keys' rules.
FILLED = {"model.num_classes": integer(2), "data.num_classes": integer(2), "data.mean": MEAN, "data.std": POSITIVE,
          "data.classes": CLASS_NAMES}  # fmt: skip

# Rules between two keys of a group: (group, test of the group's node, what to do instead).
CONSTRAINTS: list[tuple[str, Callable[[Any], bool], str]] = [
    (
        "data",
        lambda d: d.get("root") is not None or d.get("dataset") != OWN_IMAGES,  # lenet.eval: null, the model's
        "data.root is required: a folder holding one folder of images per class, or a CSV of path,label "
        "(docs/your-own-data.md), e.g. data.root=my-images",
    ),
    (
        "optimizer",
        lambda o: not o.get("nesterov") or (o.get("momentum", 0) > 0 and not o.get("dampening", 0)),
        "optimizer.nesterov=true needs optimizer.momentum > 0 and no dampening: "
        "set optimizer.momentum (e.g. 0.9) or optimizer.nesterov=false",
    ),
]
# How an hparam's value shows when it is not the key's own (a class path shows as the class's name).
HPARAM_VALUES = {
    "optimizer._target_": lambda target: target.rsplit(".", 1)[-1],
    "scheduler._target_": lambda target: target.rsplit(".", 1)[-1],
    "optimizer.betas": lambda betas: betas[0],
}
# The value of an hparam a run's config lacks (SGD without weight decay, a constant learning rate).
HPARAM_DEFAULTS = {"weight_decay": 0.0, "momentum": 0.0, "scheduler": "none"}


@functools.lru_cache(maxsize=4096)  # KEYS is fixed and a Key frozen: a report asks for each override of 1,000 jobs
def role(key: str) -> Key:
    """The key's rule and roles, each role taken from the nearest declaration that has it."""
    declared = sorted((pattern for pattern in KEYS if _covers(pattern, key)), key=len, reverse=True)
    found = {field.name: getattr(KEYS[key], field.name) if key in KEYS else None for field in fields(Key)}
    for pattern in [*declared, None]:
        for name, value in found.items():
            if value is None and name not in ("rule", "hparam"):
                found[name] = getattr(KEYS[pattern] if pattern else ROOT, name)
    return Key(**found)


def declares(key: str) -> bool:
    """Whether `key` is declared here, or lies under a key that is (trainer.strategy, under trainer)."""
    return any(_covers(pattern, key) for pattern in KEYS)


def _covers(pattern: str, key: str) -> bool:
    """`trainer` covers trainer.max_epochs; `callbacks.*.dirpath` covers callbacks.checkpoint.dirpath."""
    return fnmatchcase(key, pattern) or fnmatchcase(key, f"{pattern}.*")


def flatten(tree, prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}: nested dicts as dotted keys; an empty dict is a value."""
    if isinstance(tree, dict) and tree:
        return {key: value for name, sub in tree.items() for key, value in flatten(sub, f"{prefix}{name}.").items()}
    return {prefix[:-1]: tree}


def overridden(override: str) -> str:
    """The key a command-line override sets: optimizer.lr from optimizer.lr=0.1, +optimizer.lr=0.1, ~optimizer.lr."""
    return override.split("=", 1)[0].lstrip("+~")


def hparam_name(key: str) -> str:
    """The name a key set on the command line shows under in HPARAMS: its hparam's, else its own."""
    return KEYS[key].hparam if key in KEYS and KEYS[key].hparam else key


def hparams_of(cfg: DictConfig) -> dict:
    """The hparams every run has, from the keys that name one: the same names whatever the optimizer or scheduler,
    so runs line up in HPARAMS."""
    hparams = {}
    for key, declared in ((key, declared) for key, declared in KEYS.items() if declared.hparam):
        value = OmegaConf.select(cfg, key, default=None)
        if declared.hparam not in hparams and value is not None and not isinstance(value, DictConfig):
            hparams[declared.hparam] = HPARAM_VALUES.get(key, lambda v: v)(value)
    names = dict.fromkeys(key.hparam for key in KEYS.values() if key.hparam)
    return {name: hparams.get(name, HPARAM_DEFAULTS.get(name)) for name in names}


# Hydra's own settings that a sweep's command may carry when lenet prints it again from a file
# (lenet.frame.safe_read.distrust):
# the launcher and its resources, as docs/sweeps.md gives them. The rest of Hydra's (its callbacks, a launcher's
# `setup` lines or `python`) run code: a command from a file that sets them is not printed.
NAME = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"[\w.-]+", v) is not None, "a name (letters, digits, ._-)")
HYDRA_LAUNCHERS = ("basic", "joblib", "submitit_local")  # Hydra's plugins; lenet's own are in conf/hydra/launcher/
HYDRA_KEYS: dict[str, Rule] = {
    "hydra.launcher.n_jobs": integer(),
    "hydra.launcher.partition": NAME,
    "hydra.launcher.timeout_min": integer(1),
    "hydra.launcher.nodes": integer(1),
    "hydra.launcher.tasks_per_node": integer(1),
    "hydra.launcher.cpus_per_task": integer(1),
    "hydra.launcher.gpus_per_node": integer(0),
    "hydra.launcher.mem_gb": POSITIVE,
    "hydra.launcher.array_parallelism": integer(1),
    "hydra.launcher.signal_delay_s": integer(0),
    "hydra.launcher.max_num_timeout": integer(0),
    "hydra.launcher.wait": BOOLEAN,
    "hydra.sweeper.n_jobs": integer(1),
    "hydra.sweeper.n_trials": integer(1),
}
