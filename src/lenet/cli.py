"""The frame every lenet command runs in, and the command lines it reads and prints.

`command("train")` is a command's `main`: its command line is checked first (a mistyped key or a flag from other tools
is answered in one line naming the setting meant, where Hydra would advise adding the key or print argparse's usage),
then Hydra composes the config, `validate` checks it, and only then is the task's module imported, by the name
COMMANDS gives it: `--help`, `--cfg` and tab completion never wait for torch and Lightning, and a bad value is refused
before they load. COMMANDS is the one place lenet names its own modules in strings (tests/test_layout.py checks it). A
UserError ends the command with one line.
"""

import contextlib
import difflib
import functools
import gc
import importlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import lenet.frame.cpu_use  # noqa: F401  the first look at the CPUs' work, for the automatic thread count
from lenet.frame import atomic, keys
from lenet.frame.configs import CONFIG_DIR
from lenet.frame.errors import ConfigError, DataError, ModelError, SweepError, UserError
from lenet.frame.full_disk import NoSpace, make_with_room
from lenet.frame.hydra_job import EXTRAS, METRIC, in_multirun
from lenet.frame.validate import validate
from lenet.runs import holder, rundir
from lenet.runs.holder import RunDirTaken
from lenet.runs.multirun import register_job_dirs

log = logging.getLogger(__name__)
RECORD = ".hydra"  # Hydra's name for the folder of a run's record
register_job_dirs()  # every job process loads this frame: a continued search's job dirs resolve there too


def _options(group: str) -> str:
    """`${options_of:data}`: a group's options, as a command's --help lists them (conf/eval.yaml), from conf/ itself."""
    return ", ".join(sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml")))


OmegaConf.register_new_resolver("options_of", _options, replace=True)


@dataclass(frozen=True)
class Task:
    """What a command runs: `work`, the function (`module:function`) called with the config `config` (default: the
    command's name). `saved`: a node (lenet.eval's `data`) whose null values mean "as saved in the checkpoint":
    dropped before the checks, the others replace the checkpoint's. `returns`: the metric, of those the work
    returns, that the command returns to Hydra (what a sweeper optimizes)."""

    work: str
    config: str | None = None
    saved: str | None = None
    returns: str | None = None


# The commands' work, by name: imported only once the config is checked.
COMMANDS = {
    "train": Task("lenet.training.fit:train", config="config", returns=METRIC),
    "eval": Task("lenet.training.fit:evaluate", saved="data"),
    "export": Task("lenet.inference.portable:export", saved="data"),
    "predict": Task("lenet.inference.classify:predict"),
    "serve": Task("lenet.inference.http_api:serve"),
}
# The settings a command takes, where its config holds more than it uses: lenet.eval composes training's groups
# (data=NAME brings a whole training data option, trainer=NAME every Trainer argument) but tests with the checkpoint's
# model and data settings. Any other override is refused in one line naming these; --help lists them (conf/eval.yaml).
TAKES = {
    "eval": ("ckpt_path", "data", "data.root", "data.eval_batch_size", "trainer", "trainer.accelerator",
             "trainer.devices", "trainer.precision", "trainer.limit_test_batches", "outputs_dir"),
}  # fmt: skip
# Hydra's own flags: what they do is Hydra's business, and --help and tab completion must stay instant.
HYDRA_FLAGS = {
    "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p", "--package", "-r", "--run", "-m",
    "--multirun", "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
    "--experimental-rerun", "-i", "--info",
}  # fmt: skip
# The flags that choose what Hydra does; it takes one at a time.
MODES = {"-r": "--run", "--run": "--run", "-m": "--multirun", "--multirun": "--multirun", "-c": "--cfg",
         "--cfg": "--cfg", "-i": "--info", "--info": "--info", "-sc": "--shell-completion",
         "--shell-completion": "--shell-completion"}  # fmt: skip
NOT_CHECKED = {"-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion", "-i", "--info", "-cn",
               "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun"}  # fmt: skip


def command(name: str):
    """The `main` of `python -m lenet.<name>`: the command line checked, then its task run in Hydra."""
    task = COMMANDS[name]

    def run(cfg: DictConfig):
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        with held(run_dir, name) as earlier:
            if earlier == "none":
                record(run_dir, cfg)  # as asked, checked or not: a sweep's report lists a refused job by it
            try:
                check(cfg, task.saved)
                if earlier == "failed":
                    record(run_dir, cfg)  # it starts again, from this config
                result = work(task.work, name)(cfg)
            except (ConfigError, DataError, ModelError) as refused:  # refused before it trains
                refused.keeps_the_earlier_attempt = earlier == "interrupted"  # its checkpoints still resume it
                raise
        return result.get(task.returns) if task.returns else result

    run.__module__ = f"lenet.{name}"  # Hydra names the job (train.log, hydra.job.name) after the task's module
    config = task.config or name
    hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config)(report_user_errors(run))

    def main():
        if refusal := command_line_refusal(config, sys.argv[1:]):
            print(f"error: {refusal}", file=sys.stderr)
            raise SystemExit(1)
        return hydra_main()

    return main


def work(function: str, name: str):
    """The work's function (`module:function`), its module imported now; a missing optional package is one line
    naming its extra."""
    module, _, attribute = function.partition(":")
    try:
        task = getattr(importlib.import_module(module), attribute)
    except ImportError as error:
        missing = error.name or "a package"
        extra = EXTRAS.get(missing.split(".")[0])
        install = f"pip install 'lenet[{extra}]'" if extra else f"pip install {missing}"
        raise UserError(f"lenet.{name} needs {missing}: {install}") from None
    if not gc.get_freeze_count():
        # The stack's imports (torch, Lightning, SciPy, matplotlib: millions of objects) live as long as the process:
        # out of the collector's sight, its full collections stop walking them, and the interpreter's exit, which
        # walks them several times, takes 0.1-0.2 s instead of 1 s. Once: in a sweep's later jobs, what the earlier
        # ones left is garbage to collect, not to keep.
        gc.freeze()
    return task


@contextlib.contextmanager
def held(run_dir: Path, name: str):
    """The run dir held by this process while its work runs (lenet.runs.holder): no other process writes there
    meanwhile, and a dir that keeps a finished run's record is refused. Yields what an earlier attempt left there
    (lenet.runs.rundir.earlier_attempt): a finished job of a continued sweep is kept as it is (lenet.training.fit),
    an interrupted run's record stays as it is while it resumes."""
    if not holder.is_rank_zero():  # the other ranks of a distributed run write under rank 0's hold
        yield "ranks"
        return
    taken_over = holder.take(run_dir)
    try:
        if taken_over:
            log.info("%s: %s", run_dir, taken_over)
        earlier = rundir.earlier_attempt(run_dir, RECORD)
        if earlier == "finished" and not (name == "train" and in_multirun()):
            longer = f"; to train it longer or on other data, start that run from its weights: init_from={run_dir}"
            raise RunDirTaken(
                f"{run_dir} holds a finished run ({rundir.METRICS}), kept as it is: run lenet.{name} in a new run dir "
                f"(leave out hydra.run.dir){longer if name == 'train' else ''}"
            )
        yield earlier
    finally:
        holder.release(run_dir)


def record(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of the run (.hydra/: its config, Hydra's, the overrides), written once the run dir is this
    process's (`run` says when: a new dir's at once, a failed attempt's once the config is checked, an interrupted
    one's never). Hydra itself writes none (hydra.output_subdir: null): it would write over the record of a finished
    run, or of one another process is running, before any check."""
    folder = run_dir / RECORD
    folder.mkdir(exist_ok=True)
    hydra_config = HydraConfig.instance().cfg
    for name, node in (("config", cfg), ("hydra", hydra_config), ("overrides", hydra_config.hydra.overrides.task)):
        atomic.write_text(folder / f"{name}.yaml", OmegaConf.to_yaml(node))


def check(cfg: DictConfig, saved: str | None = None) -> None:
    """What the frame checks before a task runs: `validate`, with the nulls of the `saved` node dropped first."""
    if saved:
        cfg[saved] = {key: value for key, value in cfg[saved].items() if value is not None}
    validate(cfg)


def command_line_refusal(config_name: str, args: list[str]) -> str | None:
    """Why the command line cannot run: two modes at once, or a setting or group option that does not exist, in
    words that name the one meant; or None."""
    if modes := _modes(args):
        return modes
    if NOT_CHECKED & set(args):
        return None
    flags = [(i, arg) for i, arg in enumerate(args) if arg.startswith("-") and "=" not in arg]
    if unknown := next(((i, arg) for i, arg in flags if arg not in HYDRA_FLAGS), None):
        return _flag_refusal(config_name, *unknown, args)
    overrides = [arg for arg in args if not arg.startswith("-") and not _is_value_of_a_flag(arg, args)]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None  # a syntax error: Hydra's own message shows where
    if config_name in TAKES and (not_taken := _not_taken(config_name, parsed)):
        return not_taken
    choices = [o for o in parsed if _is_group(o.key_or_group)]
    if choices and (unknown := _unknown_option(config_name, choices)):
        return unknown
    given = [o.key_or_group for o in parsed if o.type.name == "CHANGE" and not _is_group(o.key_or_group)]
    given = [key for key in given if key.split(".")[0] != "hydra"]
    if not given:
        return None
    settings = _keys(config_name, [f"{o.key_or_group}={_first(o)}" for o in choices])
    if settings is None:
        return None  # the choices themselves do not compose: Hydra says why
    nodes = {key.rsplit(".", depth)[0] for key in settings for depth in range(1, key.count(".") + 1)}
    missing = next((key for key in given if key not in settings.keys() | nodes), None)
    return _unknown_key(missing, settings) if missing else None


def _not_taken(config_name: str, parsed: list) -> str | None:
    """`optimizer.lr=0.1` on lenet.eval: a setting its config may hold but the command does not use, and what it
    takes (TAKES). Hydra's own settings (hydra.run.dir, hydra/launcher=...) are Hydra's business."""
    takes = TAKES[config_name]
    for override in parsed:
        key = override.key_or_group
        if key.split("/")[0].split(".")[0] == "hydra" or override.type.name == "DEL":
            continue
        if key in takes and override.type.name != "CHANGE":  # +data=NAME: the option is there to choose
            return f"{key} is a setting of lenet.{config_name} already: pass {key}={_first(override)}, without +"
        if key not in takes:
            close = difflib.get_close_matches(key, takes, n=1, cutoff=0.8)
            meant = f": did you mean {close[0]}?" if close else ""
            shown = ", ".join(f"{take}=NAME" if _is_group(take) else take for take in takes)
            return f"{key} is not a setting of lenet.{config_name}{meant} (it takes {shown})"
    return None


def _modes(args: list[str]) -> str | None:
    """Hydra runs one mode a command (a run, a multirun, --cfg, --info, completion) and says so with a traceback."""
    given = list(dict.fromkeys(arg for arg in args if arg in MODES))
    if len(given) < 2:
        return None
    refusal = f"{given[0]} and {given[1]} cannot go together: pass one of them"
    if {MODES[arg] for arg in given[:2]} == {"--multirun", "--cfg"}:
        refusal += " (--cfg job shows one job's config: drop -m and give one value of each swept key)"
    return refusal


def _unknown_option(config_name: str, choices: list) -> str | None:
    """`optimizer=adamm`: an option its config group does not have (Hydra's groups included), and the one meant."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for choice in (c for c in choices if c.type.name != "DEL"):
            group = choice.key_or_group
            options = sorted(loader.get_group_options(group))
            values = list(choice.sweep_string_iterator()) if choice.is_sweep_override() else [choice.value()]
            values = [item for value in values for item in (value if isinstance(value, list) else [value])]
            wrong = next(("null" if v is None else str(v) for v in values if v is None or str(v) not in options), None)
            if wrong is not None and options:
                close = difflib.get_close_matches(wrong, options, n=1, cutoff=0.6)
                close = close or ["none"] * (wrong == "null" and "none" in options)  # the option that means no group
                meant = f"did you mean {group}={close[0]}? " if close else ""
                return f"{group}={wrong} is not an option of {group}: {meant}({group}: {', '.join(options)})"
    return None


def _is_value_of_a_flag(arg: str, args: list[str]) -> bool:
    index = args.index(arg)
    return index > 0 and args[index - 1] in {"-c", "--cfg", "-p", "--package", "--info", "-i"}


def _is_group(key: str) -> bool:
    """A config group (optimizer, hydra/launcher), chosen by name, rather than a setting."""
    return "/" in key or (Path(CONFIG_DIR) / key).is_dir()


def _first(override) -> str:
    return next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else override.value()


def _keys(config_name: str, choices: list[str]) -> dict | None:
    """The config composed with these group choices, as dotted keys and their values; None if it fails."""
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            config = compose(config_name=config_name, overrides=choices)
    except (HydraException, OmegaConfBaseException):
        return None
    return keys.flatten(OmegaConf.to_container(config, resolve=False))


def _unknown_key(key: str, settings: dict) -> str:
    parent, name = key.rsplit(".", 1) if "." in key else ("", key)
    siblings = (
        sorted(k.rsplit(".", 1)[-1] for k in settings if k.rsplit(".", 1)[0] == parent and "." in k) if parent else []
    )
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6) or [
        k.rsplit(".", 1)[-1] for k in difflib.get_close_matches(key, sorted(settings), n=1, cutoff=0.8)
    ]
    if close:
        return f"{key} is not a setting: did you mean {f'{parent}.' if parent else ''}{close[0]}?"
    off = next((p for p in _prefixes(key) if p in settings and settings[p] is None), None)
    if off:
        group = off.split(".")[0]
        options = sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        return f"{key} is not a setting: {off} is null here; an option of {group} sets it ({', '.join(options)})"
    known = f"; the settings of {parent}: {', '.join(siblings)}" if siblings else ""
    return f"{key} is not a setting{known} (to add a new one on purpose: +{key}=VALUE)"


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def _flag_refusal(config_name: str, index: int, flag: str, args: list[str]) -> str:
    """`--lr 0.01` written the way lenet takes it: optimizer.lr=0.01."""
    name = flag.lstrip("-").replace("-", "_")
    value = args[index + 1] if index + 1 < len(args) and not args[index + 1].startswith("-") else "VALUE"
    settings = _keys(config_name, []) or {}
    meant = sorted(key for key in settings if key.rsplit(".", 1)[-1] == name) or difflib.get_close_matches(
        name, sorted(settings), n=1, cutoff=0.6
    )
    if not meant:
        return f"{flag} is not an option: settings are written key=value (--help lists them)"
    return f"{flag} is not an option: settings are written key=value, e.g. {meant[0]}={value}"


def report_user_errors(task):
    """Wrap a Hydra task so a UserError ends the process with one line and a non-zero exit status.

    The line also goes into the run's log; a run refused before it wrote anything but that log leaves no run dir.
    HYDRA_FULL_ERROR=1 shows the full traceback instead, as it does for Hydra's own errors. In a multirun the error
    is logged and raised instead: Hydra marks that job failed, runs the others, then exits non-zero. An
    interruption (exit status above 1) still ends the whole sweep.
    """

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            if isinstance(error, RunDirTaken):  # the run dir is another's: its files, its log, stay as they are
                if in_multirun():
                    raise SweepError(f"error: {error}") from None
                print(f"error: {error}", file=sys.stderr)
                raise SystemExit(1) from None
            # A failure; above 1, an interruption, and a refused resume: what was saved continues the run.
            if error.exit_status == 1 and not getattr(error, "keeps_the_earlier_attempt", False):
                rundir.record_failure(run_dir, f"error: {error}")
            if in_multirun() and error.exit_status == 1:
                log.error("error: %s", error)  # into the job's log
                raise SweepError(f"error: {error}") from error
            _log_to_file(f"error: {error}", logging.ERROR if error.exit_status == 1 else logging.WARNING)
            _remove_if_empty(run_dir, Path(cfg.get("outputs_dir", "outputs")))
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(error.exit_status) from None

    return wrapper


def _log_to_file(message: str, level: int) -> None:
    """Into the run's log file only: the console gets the line on stderr."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _remove_if_empty(run_dir: Path, outputs_dir: Path) -> None:
    """A run dir holding only Hydra's .hydra/ and the log records nothing but the refusal the user just saw.

    Its parents under outputs_dir (the day's folder, eval/, predict/) go too when it was all they held.
    """
    refusal_only = (RECORD, rundir.ERROR)
    if not run_dir.is_dir() or any(p.name not in refusal_only and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.resolve().parents:
        if parent == outputs_dir.resolve() or not parent.is_relative_to(outputs_dir.resolve()):
            break
        with contextlib.suppress(OSError):
            parent.rmdir()


class CheckOutputDir(Callback):
    """Hydra makes the run dir before any task code runs, and fails there with a traceback: try first."""

    def on_run_start(self, config, **kwargs):
        self._make(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs):
        self._make(config.hydra.sweep.dir)

    @staticmethod
    def _make(path: str) -> None:
        """The dir made, with room for Hydra's first files (a full disk: one line, where Hydra left empty ones)."""
        try:
            make_with_room(path)
        except NoSpace as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(error.exit_status) from None
        except OSError as error:
            print(
                f"error: cannot write the run dir {path} ({error.strerror}); pass outputs_dir=FOLDER", file=sys.stderr
            )
            raise SystemExit(1) from None
