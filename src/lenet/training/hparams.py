"""TensorBoard's HPARAMS tab: every run's hparams (lenet.frame.keys names them), the keys its command line set, which of
them a sweep swept (shown first), and the summaries Lightning's logger does not write itself."""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import summary as summary_pb

from lenet.frame import keys

# Final values shown in TensorBoard's HPARAMS tab, each logged once when the run ends (absent when it has none).
HPARAM_METRICS = {"hp/val_acc": "val/acc", "hp/val_acc_best": "val/acc_best", "hp/test_acc": "test/acc"}


def logged_hparams(cfg, overrides: list[str] = ()) -> dict:
    """What a run logs to HPARAMS: the hparams every run has (lenet.frame.keys.hparams_of), and each key `overrides`
    (the job's command line) sets, the same in every job of a sweep."""
    hparams = keys.hparams_of(cfg)
    for key, value in map(_key_value, overrides):
        if key and keys.hparam_name(key) not in hparams:
            setting = OmegaConf.select(cfg, key, default=None)  # the composed value; a group's: its option's name
            hparams[key] = setting if isinstance(setting, int | float | str) else str(value)
    return hparams


def shown_hparams(overrides: list[str], swept: set[str]) -> set[str]:
    """The hparams TensorBoard shows first: a sweep's swept keys, or in a single run those its command line set."""
    names = swept or {key for key, _ in map(_key_value, overrides)}
    return {keys.hparam_name(key) for key in names if key and keys.role(key).recipe}


def _key_value(override: str) -> tuple[str | None, str]:
    """("optimizer.lr", "0.1") from "optimizer.lr=0.1" (or "+optimizer.lr=0.1"); None for a deletion or a key that
    says where or how the run goes, not what it trains (lenet.frame.keys: not a recipe key)."""
    key, value = keys.overridden(override), override.partition("=")[2]
    return (None if override.startswith("~") or not keys.role(key).recipe else key), value


def overrides_and_swept() -> tuple[list[str], set[str]]:
    """This job's overrides, and the keys its multirun sweeps: several values on the sweep's command line (Hydra's
    basic sweeper saves it in multirun.yaml) or a search space (hydra.sweeper.params, e.g. Optuna's)."""
    if not HydraConfig.initialized():
        return [], set()
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return list(hydra.overrides.task), set()
    swept = set(hydra.sweeper.get("params") or {})
    sweep = Path(hydra.sweep.dir) / "multirun.yaml"
    if sweep.is_file():
        parsed = OverridesParser.create().parse_overrides(list(OmegaConf.load(sweep).hydra.overrides.task))
        swept |= {override.key_or_group for override in parsed if override.is_sweep_override()}
    return list(hydra.overrides.task), swept


def log_hparams(logger: TensorBoardLogger, hparams: dict, shown: set[str]):
    """TensorBoard's HPARAMS summaries of this run, and no scalar: the metrics get their one point when the run ends.
    Returns the summary that marks the run finished, to be written when it is.

    TensorBoard takes the table's columns from one run's experiment summary (so every run of a sweep logs the same
    hparams and metric names), sorts the hparams marked `differs` first, then by name, and ticks the first five.
    """
    logger.log_hyperparams(hparams)  # hparams.yaml: with no metrics Lightning writes no summary and no scalar
    plain = {key: value if isinstance(value, int | float | str) else str(value) for key, value in hparams.items()}
    experiment, start, end = summary_pb.hparams(plain, dict.fromkeys(HPARAM_METRICS, 0.0))  # the metrics' names only
    content = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in shown
    content.content = data.SerializeToString()
    writer = logger.experiment._get_file_writer()  # how Lightning's own log_hyperparams writes them
    writer.add_summary(experiment)
    writer.add_summary(start)
    return end
