"""The files of run dirs and sweep dirs read back as data, never as code: whoever made the folder wrote them.

Read: YAML as plain values by libyaml's safe loader (no tags, no OmegaConf: an interpolation such as
`${oc.env:SECRET}` stays that text, never resolved), only regular files (a link to /dev/zero or a FIFO is no record),
each within a size. What is not as lenet writes it is one line: the file and why (`Unreadable`).

Trusted: an override read from them is rerun (lenet.reproduce) or printed as a command (lenet.report) only when lenet
would run it (`distrust`): it sets a key lenet.frame.keys declares to values the key's rule accepts, or chooses options
conf/ holds. Anything else (a `_target_`, an interpolation, `+key`/`~key`, Hydra's callbacks) can run code or read
the machine it runs on: refused in one line naming it (`trusted`).
"""

import functools
import json
import os
import re
import stat
from fnmatch import fnmatchcase
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, OverrideType, QuotedString
from hydra.errors import HydraException

from lenet.frame import keys
from lenet.frame.configs import CONFIG_DIR
from lenet.frame.errors import UserError
from lenet.frame.quoting import shown

RECORD_LIMIT = 4 << 20  # a run's YAML and JSON records are kilobytes: a larger file is none of lenet's
MOST_VALUES = 100_000  # a record holds hundreds; more is an alias bomb (aliases of aliases, a few lines of YAML)
LOG_TAIL = 1 << 20  # of a log, the end is read: where its last error is
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's C loader where PyYAML has it: 10x faster
COMMAND = re.compile(r"[a-z]+")  # a Hydra job name that is a lenet command: python -m lenet.<name>
GROUP = re.compile(r"\w+(/\w+)*")  # a config group as a folder of conf/: no `..`, no absolute path
_NONE = object()  # next() found none (None is a value)


class Unreadable(UserError):
    """A file that does not hold what lenet writes there: which, and why, in one line."""


def read_yaml(path: Path, name: str):
    """A YAML file as plain values; `name` is how messages call it (`.hydra/config.yaml`)."""
    text = read_text(path, name)
    try:
        value = yaml.load(text, Loader=YAML_LOADER if "&" in text else _TreeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise Unreadable(f"{name}: not YAML ({getattr(error, 'problem', None) or 'unreadable'}{where})") from None
    if "&" in text and _count(value, MOST_VALUES) > MOST_VALUES:  # no alias without an anchor (&name)
        raise Unreadable(f"{name}: more than {MOST_VALUES:,} values, none of lenet's records")
    return value


class _Unusual(Exception):
    """A node _TreeLoader leaves to the safe loader's own constructor."""


class _TreeLoader(YAML_LOADER):
    """The safe loader, for a document without anchors (a tree: no node is used twice): its plain values built in
    one pass, the same as the safe loader's constructor builds them, which spends a generator and a dozen calls on
    each node (half of reading a run's records). A tag of its own, a merge key (`<<`) or a key that is a list or
    a mapping: the document is built by that constructor instead, which accepts or refuses it as ever."""

    SCALARS = {f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "float", "bool", "null")}
    RESOLVED: dict[str, str] = {}  # a plain scalar's tag by its text: the resolver's, remembered
    MOST_RESOLVED = 1 << 16

    def resolve(self, kind, value, implicit):
        """The resolver's tag for a node the document gives none. A plain scalar's depends on its text alone, which
        the resolver tries against its patterns each time: remembered, for a sweep's records repeat their keys and
        most values (a third of reading them)."""
        if kind is not yaml.ScalarNode or not implicit[0] or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        tag = self.RESOLVED.get(value)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(self.RESOLVED) < self.MOST_RESOLVED:
                self.RESOLVED[value] = tag
        return tag

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        try:
            return self._built(node)
        except _Unusual:
            return self.construct_document(node)

    def _built(self, node):
        tag, kind = node.tag, type(node)
        if kind is yaml.ScalarNode and tag in self.SCALARS:
            return node.value if tag == "tag:yaml.org,2002:str" else self.yaml_constructors[tag](self, node)
        if kind is yaml.SequenceNode and tag == "tag:yaml.org,2002:seq":
            return [self._built(item) for item in node.value]
        if kind is yaml.MappingNode and tag == "tag:yaml.org,2002:map":
            built = {}
            for key, value in node.value:  # a key repeated: the last value, where the first was (as dict() does)
                if type(key) is not yaml.ScalarNode or key.tag not in self.SCALARS:
                    raise _Unusual
                built[self._built(key)] = self._built(value)
            return built
        raise _Unusual


def read_json(path: Path, name: str):
    try:
        return json.loads(read_text(path, name))
    except json.JSONDecodeError as error:
        raise Unreadable(f"{name}: not JSON ({error.msg} at line {error.lineno})") from None


def read_text(path: Path, name: str, tail: bool = False) -> str:
    """The text of `path` if it is a regular file of at most RECORD_LIMIT bytes; with `tail` (a log), its last
    LOG_TAIL bytes, whatever its size and encoding."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    except OSError as error:
        raise Unreadable(f"{name}: cannot be read ({error.strerror})") from None
    try:
        size = os.fstat(descriptor)
        if not stat.S_ISREG(size.st_mode):  # a folder, a FIFO, a device (a link to /dev/zero never ends)
            raise Unreadable(f"{name}: not a regular file")
        if size.st_size > RECORD_LIMIT and not tail:
            raise Unreadable(f"{name}: {size.st_size:,} bytes, too large for a record of lenet's")
        limit = LOG_TAIL if tail else RECORD_LIMIT
        os.lseek(descriptor, max(size.st_size - limit, 0), os.SEEK_SET)
        data = os.read(descriptor, limit)
    except OSError as error:
        raise Unreadable(f"{name}: cannot be read ({error.strerror})") from None
    finally:
        os.close(descriptor)
    try:
        return data.decode("utf-8", errors="replace" if tail else "strict")
    except UnicodeDecodeError:
        raise Unreadable(f"{name}: not UTF-8 text") from None


def mapping(value, what: str) -> dict:
    """`value` where a mapping must be (`what`: where, for the message)."""
    if not isinstance(value, dict):
        raise Unreadable(f"{what} is {shown(value)}, not a mapping")
    return value


def job_name(hydra: dict, name: str) -> str:
    """`hydra.job.name` of a Hydra record (`hydra`, its `hydra` node): the lenet command a job ran (train)."""
    task = mapping(hydra.get("job"), f"{name}: hydra.job").get("name")
    if not isinstance(task, str) or not COMMAND.fullmatch(task):
        raise Unreadable(f"{name}: hydra.job.name is {shown(task)}, no lenet command")
    return task


def _count(value, most: int) -> int:
    """The values in `value`, counted up to past `most` (aliases count each time they are used)."""
    count, stack = 0, [value]
    while stack and count <= most:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += [*item, *item.values()]
        elif isinstance(item, list):
            stack += item
    return count


@functools.lru_cache(maxsize=4096)  # a sweep's jobs repeat the same overrides: Hydra's parser is a millisecond each
def distrust(override: str, hydra: bool = False) -> str | None:
    """Why an override read from a file (a run's .hydra/overrides.yaml, a sweep's multirun.yaml) is not one lenet
    runs or prints, naming its key; None when it is one: it sets a key lenet.frame.keys declares (or one under it:
    trainer.*) to plain values its rule accepts, or chooses options that conf/<group>/ holds. Never `+`, `++`, `~`
    or `@package`, a `_target_`, an interpolation (`${oc.env:...}`) or, unless `hydra` (a sweep's launcher), a
    setting of Hydra's."""
    try:
        parsed = _parser().parse_override(override)
    except HydraException:
        return f"{override.split('=', 1)[0]} is no override Hydra reads"
    key = parsed.key_or_group
    if parsed.type is not OverrideType.CHANGE or parsed.package is not None:
        how = "deletes" if parsed.type is OverrideType.DEL else "adds" if parsed.package is None else "moves"
        return f"{override.split('=', 1)[0]} {how} a setting: only lenet's own may be set from a file"
    values = _values(parsed)
    if values is None:
        return f"{key} takes a glob of options: only options named one by one are trusted"
    if "_target_" in key or any("_target_" in text for text in _texts(values)):
        return f"{key} names code to run (_target_)"
    if any("${" in text for text in _texts(values)):
        return f"{key} holds an interpolation (${{...}}): it would read what the machine running it holds"
    if re.split(r"[./]", key)[0] == "hydra":
        if hydra and key == "hydra/launcher":
            return _unknown_option(key, values)
        ok = hydra and key in keys.HYDRA_KEYS and all(map(keys.HYDRA_KEYS[key].test, values))
        return None if ok else f"{key} is a setting of Hydra's, not of lenet's"
    if GROUP.fullmatch(key) and (Path(CONFIG_DIR) / key).is_dir():
        return _unknown_option(key, values)
    if not keys.declares(key):
        return f"{key} is not a setting lenet declares"
    rule = next((keys.KEYS[p].rule for p in keys.KEYS if fnmatchcase(key, p) and keys.KEYS[p].rule), None)
    bad = next((value for value in values if rule and not rule.test(value)), _NONE)
    return None if bad is _NONE else f"{key}={bad!r} is not allowed: it must be {rule.text}"


def trusted(overrides: list[str], source: Path, hydra: list[str] = ()) -> list[str]:
    """`overrides`, read from `source`, when lenet would run every one of them (and of Hydra's `hydra`, a sweep's
    launcher); else a UserError naming the first it would not. What a command lenet runs or prints may hold: a user
    may paste a printed one."""
    if why := next(filter(None, (*(distrust(o, hydra=True) for o in hydra), *map(distrust, overrides))), None):
        raise UserError(f"{source} holds what lenet does not run: {why}")
    return overrides


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _values(parsed) -> list | None:
    """The plain values an override sets: each of a sweep's, an interval's two ends; None for a glob."""
    value = parsed.value()
    if isinstance(value, Glob):
        return None
    if isinstance(value, IntervalSweep):
        return [value.start, value.end]
    return [_plain(item) for item in (parsed.sweep_iterator() if parsed.is_sweep_override() else [value])]


def _plain(value):
    if isinstance(value, QuotedString):
        return value.text
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    return value


def _texts(value) -> list[str]:
    """Every string in `value`, dict keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = [*value, *value.values()]
    return [text for item in value for text in _texts(item)] if isinstance(value, list) else []


def _unknown_option(group: str, values: list) -> str | None:
    """`group=x`, `group=[x,y]`, `group=x,y`: each one of conf/<group>/'s option files."""
    options = {path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml")}
    options |= set(keys.HYDRA_LAUNCHERS) if group == "hydra/launcher" else set()
    chosen = [item for value in values for item in (value if isinstance(value, list) else [value])]
    bad = next((option for option in chosen if option not in options), _NONE)
    return None if bad is _NONE else f"{group}={bad} is no option of lenet's: one of {', '.join(sorted(options))}"
