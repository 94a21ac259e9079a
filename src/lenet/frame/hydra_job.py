"""What a job of a lenet command knows of itself, for its frame (lenet.cli) and its work alike: the metric a sweep
optimizes, whether it runs in a multirun, the command line that runs it again, and the extra that installs an
optional package it lacks."""

import shlex

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lenet.frame import keys

METRIC = "val/acc_best"  # what lenet.train returns to Hydra's sweepers, so what Optuna maximizes and reports rank by
# The optional packages, by the pyproject extra that installs them.
EXTRAS = {"fastapi": "serve", "fastapi_offline": "serve", "uvicorn": "serve", "multipart": "serve",
          "python_multipart": "serve", "onnx": "export", "onnxruntime": "export", "onnxscript": "export",
          "mlflow": "track", "wandb": "track"}  # fmt: skip


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`, or a config that sets hydra.mode)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def this_command(task: str, extra: tuple[str, ...] = ()) -> str | None:
    """The command line that runs this Hydra job again (`extra` overrides replacing its own); None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    replaced = {keys.overridden(override) for override in extra}
    overrides = [o for o in HydraConfig.get().overrides.task if keys.overridden(o) not in replaced]
    return command_line(task, [*overrides, *extra])


def command_line(task: str, overrides: list[str]) -> str:
    """The command that runs `lenet.<task>` with these overrides again; a search's own settings left out."""
    kept = [o for o in overrides if not keys.role(keys.overridden(o)).search]
    return shlex.join(["python", "-m", f"lenet.{task}", *kept])
