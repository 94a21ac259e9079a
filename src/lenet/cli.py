"""The frame every lenet command runs in: its command line checked, then Hydra, then the task with one-line errors.

Hydra meets a mistyped key (`optimizer.lrr=0.1`) with advice to add it (`+optimizer.lrr=0.1`), and a flag a user
knows from other tools (`--lr 0.01`) with argparse's usage text. Both are caught here first and answered in one line
that names the setting they meant.
"""

import difflib
import functools
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet import CONFIG_DIR
from lenet.console import report_user_errors
from lenet.runs import flatten

# Hydra's own flags: what they do is Hydra's business, and --help and tab completion must stay instant.
HYDRA_FLAGS = {
    "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p", "--package", "-r", "--run", "-m",
    "--multirun", "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
    "--experimental-rerun", "-i", "--info",
}  # fmt: skip
NOT_CHECKED = {"-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion", "-i", "--info", "-cn",
               "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun"}  # fmt: skip


def command(config_name: str):
    """`@command("config")` makes a task a lenet command: `main()` reads the command line, as Hydra's do."""

    def decorate(task):
        run = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(report_user_errors(task))

        @functools.wraps(task)
        def main():
            if refusal := command_line_refusal(config_name, sys.argv[1:]):
                print(f"error: {refusal}", file=sys.stderr)
                raise SystemExit(1)
            return run()

        return main

    return decorate


def command_line_refusal(config_name: str, args: list[str]) -> str | None:
    """Why the command line names a setting that does not exist, in words that name the one meant; or None."""
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
    choices = [o for o in parsed if _is_group(o.key_or_group)]
    settings = [o.key_or_group for o in parsed if o.type.name == "CHANGE" and not _is_group(o.key_or_group)]
    settings = [key for key in settings if key.split(".")[0] != "hydra"]
    if not settings:
        return None
    keys = _keys(config_name, [f"{o.key_or_group}={_first(o)}" for o in choices])
    if keys is None:
        return None  # the choices themselves do not compose: Hydra says why
    nodes = {key.rsplit(".", depth)[0] for key in keys for depth in range(1, key.count(".") + 1)}
    missing = next((key for key in settings if key not in keys.keys() | nodes), None)
    return _unknown_key(missing, keys) if missing else None


def _is_value_of_a_flag(arg: str, args: list[str]) -> bool:
    index = args.index(arg)
    return index > 0 and args[index - 1] in {"-c", "--cfg", "-p", "--package", "--info", "-i"}


def _is_group(key: str) -> bool:
    """A config group (optimizer, hydra/launcher), chosen by name, rather than a setting."""
    return "/" in key or (Path(CONFIG_DIR) / key).is_dir()


def _first(override) -> str:
    return next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else override.value()


def _keys(config_name: str, choices: list[str]) -> dict[str, str] | None:
    """The config composed with these group choices, as dotted keys and their values; None if it fails."""
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            config = compose(config_name=config_name, overrides=choices)
    except (HydraException, OmegaConfBaseException):
        return None
    return flatten(OmegaConf.to_container(config, resolve=False))


def _unknown_key(key: str, keys: dict[str, str]) -> str:
    parent, name = key.rsplit(".", 1) if "." in key else ("", key)
    siblings = (
        sorted(k.rsplit(".", 1)[-1] for k in keys if k.rsplit(".", 1)[0] == parent and "." in k) if parent else []
    )
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6) or [
        k.rsplit(".", 1)[-1] for k in difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.8)
    ]
    if close:
        return f"{key} is not a setting: did you mean {f'{parent}.' if parent else ''}{close[0]}?"
    off = next((p for p in _prefixes(key) if keys.get(p) == "null"), None)
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
    keys = _keys(config_name, []) or {}
    meant = sorted(key for key in keys if key.rsplit(".", 1)[-1] == name) or difflib.get_close_matches(
        name, sorted(keys), n=1, cutoff=0.6
    )
    if not meant:
        return f"{flag} is not an option: settings are written key=value (--help lists them)"
    return f"{flag} is not an option: settings are written key=value, e.g. {meant[0]}={value}"
