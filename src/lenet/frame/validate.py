"""The start-up checks of a composed config, before anything runs."""

import inspect

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lenet.frame import keys
from lenet.frame.errors import ConfigError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
MISSING = object()


def validate(cfg: DictConfig) -> None:
    """Required values, a GPU when one is asked for, each key's rule (lenet.frame.keys), and keys no target knows."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required: set it on the command line, e.g. {missing[0]}=VALUE")
    _check_rules(cfg)
    for group, test, advice in keys.CONSTRAINTS:
        if group in cfg and not test(_plain(cfg[group])):
            raise ConfigError(advice)
    _check_gpu(OmegaConf.select(cfg, "trainer.accelerator"), OmegaConf.select(cfg, "trainer.precision"))
    for path, node in _instantiated(cfg):
        _check_keys(path, node)


def _check_rules(cfg: DictConfig) -> None:
    for key, declared in keys.KEYS.items():
        rule = declared.rule
        if rule:
            value = OmegaConf.select(cfg, key, default=MISSING)
            if value is not MISSING and not rule.test(_plain(value)):
                raise ConfigError(f"{key}={_plain(value)!r} is not allowed: it must be {rule.text}")


def _check_gpu(accelerator: str | None, precision: str | None) -> None:
    if accelerator not in ("gpu", "cuda") and precision != "16-mixed":
        return  # no need to import torch to ask
    gpu = get_object("torch.cuda.is_available")()
    if accelerator in ("gpu", "cuda") and not gpu:
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible here; use trainer=cpu or trainer=default")
    if precision == "16-mixed" and (accelerator == "cpu" or not gpu):
        raise ConfigError("trainer.precision=16-mixed needs a GPU; on the CPU use bf16-mixed (or 16-true)")


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _instantiated(node: DictConfig, path: str = ""):
    """(dotted path, node) of every node with a `_target_`, depth first."""
    for key in node:
        child = node[key]
        if isinstance(child, DictConfig):
            child_path = f"{path}{key}"
            if "_target_" in child:
                yield child_path, child
            yield from _instantiated(child, f"{child_path}.")


def _check_keys(path: str, node: DictConfig) -> None:
    parameters = inspect.signature(get_object(node._target_)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # the target takes any keyword
    known = set(parameters) | HYDRA_KEYS | {key for key in node if keys.role(f"{path}.{key}").own}
    for key in node:
        if key not in known:
            settings = ", ".join(sorted(known - HYDRA_KEYS - {"params", "optimizer"}))
            raise ConfigError(f"{path}.{key} is not a setting of {node._target_}; its settings: {settings}")


def spawned_ddp(trainer) -> str | None:
    """Why this trainer cannot run inside a multirun, or None.

    Lightning starts DDP's other ranks by re-running this command line, which in a multirun is the whole sweep.
    Ranks that SLURM starts (hydra/launcher=slurm with tasks_per_node = trainer.devices) are fine.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.world_size > 1 and not (environment and environment.creates_processes_externally):
        return (
            f"DDP over {trainer.world_size} processes cannot run inside a multirun: each extra rank would re-run "
            "the whole sweep. Sweep with one device per job, or run DDP as a single run or via hydra/launcher=slurm"
        )
    return None


# Strategies that start their own processes (Python's multiprocessing) rather than take one per Slurm task.
SELF_STARTING = ("spawn", "fork", "notebook")


def slurm_layout_mismatch(launcher, trainer) -> str | None:
    """Why a Slurm sweep's jobs would fail once started, or None: Slurm starts tasks_per_node processes on each of
    `nodes` nodes, and Lightning takes its ranks from them only when trainer.num_nodes and trainer.devices say the
    same (else its ValueError, in the job's log only, after the job waited in the queue)."""
    nodes, num_nodes = launcher.get("nodes"), trainer.get("num_nodes", 1)
    if _count(nodes) and _count(num_nodes) and nodes != num_nodes:
        return (
            f"hydra.launcher.nodes={nodes} but trainer.num_nodes={num_nodes}: Lightning would refuse each job once "
            "it started; set both to the number of nodes a job spans"
        )
    tasks, devices = launcher.get("tasks_per_node"), trainer.get("devices")
    strategy = trainer.get("strategy")
    name = str(strategy.get("_target_") if isinstance(strategy, DictConfig) else strategy).lower()
    one_per_device = not any(word in name for word in SELF_STARTING)
    if _count(tasks) and _count(devices) and tasks != devices and one_per_device:
        return (
            f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}: Slurm starts one process per task "
            "and Lightning runs one per device; set both to the processes per node"
        )
    return None


def _count(value) -> bool:
    """A plain positive number (not "auto", -1 or a list of devices, which only Lightning counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
