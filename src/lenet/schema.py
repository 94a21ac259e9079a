"""What each config key may hold, by config group (or a node inside one). The YAML files hold the values; this file
only the rules.

`lenet.config.validate` checks every key that has a rule at start-up, before any data loads, and names the key,
its value and what is allowed in one line. Rules are keyed by group and key, not by option, so a new option file
(say conf/optimizer/rmsprop.yaml) gets the checks of the keys it shares with the others without a change here.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_object

from lenet.export import FORMATS


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    allowed: str | Callable[[], str]  # completes "it must be ..."
    # Checked after the other rules: its test imports the module its choices come from (torch, Lightning), and a
    # mistyped number should be refused at once, not after those imports.
    deferred: bool = False

    def __or__(self, other: "Rule") -> "Rule":
        return Rule(lambda v: self.test(v) or other.test(v), f"{self.text}, or {other.text}")

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


def key_of(mapping: str) -> Rule:
    """One of the keys of the dict at `mapping` (a dotted path, e.g. lenet.model.ACTIVATIONS): defined there."""
    return Rule(lambda v: v in get_object(mapping), lambda: "one of " + ", ".join(get_object(mapping)), deferred=True)


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
NULL = Rule(lambda v: v is None, "null")
POSITIVE = number(0, strict=True)
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
HOSTS = Rule(
    lambda v: isinstance(v, list) and all(isinstance(h, str) and h for h in v),
    'a list of host names or addresses, e.g. [example.org,"*.example.org"] ("*": any)',
)
ORIGINS = Rule(
    lambda v: isinstance(v, list) and all(isinstance(o, str) and (o == "*" or "://" in o) for o in v),
    'a list of origins, e.g. ["https://example.org"] ("*": any)',
)
# What Lightning accepts. All train on a CPU but 16-mixed, which lenet.config.validate refuses there.
PRECISIONS = one_of("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")

RULES: dict[str, dict[str, Rule]] = {
    "": {
        "seed": integer(),
        "ckpt_path": NULL | TEXT,
        "threads": NULL | integer(1),
        "outputs_dir": TEXT,
        # lenet.predict and lenet.export
        "top_k": integer(1),
        "batch_size": integer(1),
        "device": DEVICE,
        "format": NULL | one_of(*FORMATS),
        # lenet.serve
        "host": TEXT,
        "port": integer(0, 65535),
        "workers": integer(1),
        "max_upload_mb": POSITIVE,
        "access_log": BOOLEAN,
        "max_megapixels": POSITIVE,
        "upload_timeout_s": POSITIVE,
        "header_timeout_s": POSITIVE,
        "allowed_hosts": NULL | HOSTS,
        "cors_origins": ORIGINS,
        "preview_order": one_of("input", "confidence"),
    },
    "model": {
        "activation": key_of("lenet.model.ACTIVATIONS"),
        "pooling": key_of("lenet.model.POOLINGS"),
        "batch_norm": BOOLEAN,
        "dropout": FRACTION,
        "num_classes": integer(2),
        "compile": BOOLEAN,
        "channels_last": BOOLEAN,
    },
    "data": {
        "dataset": key_of("lenet.data.DATASETS"),
        "root": TEXT,
        "batch_size": integer(1),
        "eval_batch_size": integer(1),
        "val_size": VAL_SIZE,
        "mean": number(0, below=1),
        "std": POSITIVE,
        "split_seed": integer(),
        "seed": integer(),
        "augment": BOOLEAN,
        "augment_degrees": number(0, below=180),
        "augment_scale": FRACTION,
        "augment_shift": FRACTION,
    },
    "optimizer": {
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "momentum": FRACTION,
        "dampening": FRACTION,
        "nesterov": BOOLEAN,
        "betas": BETAS,
        "eps": POSITIVE,
    },
    "scheduler": {
        "max_lr": POSITIVE,
        "pct_start": number(0, strict=True, below=1),
        "cycle_momentum": BOOLEAN,
        "eta_min": NON_NEGATIVE,
        "step_size": integer(1),
        "gamma": POSITIVE,
    },
    "trainer": {
        "accelerator": one_of("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
        "num_nodes": integer(1),
        "max_epochs": integer(1),
        "precision": PRECISIONS,
        "log_every_n_steps": integer(1),
        "deterministic": BOOLEAN,
        "accumulate_grad_batches": integer(1),
        "gradient_clip_val": NULL | NON_NEGATIVE,
        "fast_dev_run": BOOLEAN | integer(0),
        "overfit_batches": SHARE_OR_COUNT,
        "limit_train_batches": NULL | SHARE_OR_COUNT,
        "limit_val_batches": NULL | SHARE_OR_COUNT,
        "limit_test_batches": NULL | SHARE_OR_COUNT,
        "num_sanity_val_steps": NULL | integer(-1),
        "profiler": NULL | one_of("simple", "advanced", "pytorch") | PROFILER,
    },
    "callbacks.ema.multi_avg_fn": {
        "decay": FRACTION,
    },
}

# Keys of a group that lenet reads itself instead of passing them to the group's `_target_`.
OWN_KEYS = {"model": {"compile", "channels_last"}}

# Rules between two keys of a group: (group, test of the group's node, what to do instead).
CONSTRAINTS: list[tuple[str, Callable[[Any], bool], str]] = [
    (
        "optimizer",
        lambda o: not o.get("nesterov") or (o.get("momentum", 0) > 0 and not o.get("dampening", 0)),
        "optimizer.nesterov=true needs optimizer.momentum > 0 and no dampening: "
        "set optimizer.momentum (e.g. 0.9) or optimizer.nesterov=false",
    ),
]
