"""The code's layout, as a newcomer relies on it: imports run one way, down the floors (a module named in a string
counts as imported), every config key is declared, a model file is read once, and an exported .onnx is used without
torch or Lightning."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config, glyph_split
from lenet import CONFIG_DIR
from lenet.frame import keys
from lenet.inference import portable
from lenet.inference.model_files import load
from lenet.inference.portable import export
from lenet.training import network

PACKAGE = Path(__file__).parents[1] / "src" / "lenet"
COMMANDS = {"train", "eval", "export", "predict", "serve", "report", "reproduce"}  # python -m lenet.<command>


def module_name(path: Path) -> str:
    """src/lenet/training/fit.py -> training.fit"""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def is_module(name: str) -> bool:
    return (PACKAGE / name.replace(".", "/")).with_suffix(".py").is_file()


def lenet_imports(tree: ast.Module) -> set[str]:
    """The lenet modules a module imports, wherever in it (top level or inside a function), as `training.fit`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lenet":
            name = node.module.removeprefix("lenet").removeprefix(".")
            found |= {n for n in (f"{name}.{a.name}".lstrip(".") for a in node.names) if is_module(n)} or {name}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("lenet.") for a in node.names if a.name.startswith("lenet.")}
    return {name for name in found if is_module(name)}


def string_links(tree: ast.Module) -> set[str]:
    """The lenet modules a module names in its code's strings (`"lenet.training.fit:train"`, `"lenet.x.y.NAME"`):
    imported by name, they are links all the same. Docstrings are prose, and a file name (`"lenet.json"`) names no
    module."""
    prose = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    strings = (node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str))
    texts = [node.value for node in strings if id(node) not in prose]
    return {module for text in texts if (module := module_named(text))}


def module_named(text: str) -> str | None:
    if not re.fullmatch(r"lenet(\.\w+)+(:\w+)?", text):
        return None
    parts = text.split(":")[0].split(".")[1:]
    while parts and not is_module(".".join(parts)):
        parts.pop()  # an attribute: lenet.runs.rundir.METRICS names runs.rundir
    return ".".join(parts) or None


TREES = {module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py") if path.stem != "__init__"}
STRING_LINKS = {module: string_links(tree) - {module} for module, tree in TREES.items()}  # itself: no link
GRAPH = {module: lenet_imports(tree) | STRING_LINKS[module] for module, tree in TREES.items()}

# The floors, from the ground up, by package: what each may import besides itself. The commands (train.py, ...) are
# the top floor; cli.py is the frame they run in.
MAY_IMPORT = {
    "frame": set(),  # keys, validate, errors: what everything stands on
    "runs": {"frame"},  # run dirs, sweeps, reports: what runs leave behind, read as data, never training's code
    "images": {"frame"},  # a user's image prepared as a data set made its own: for training and for predicting
    "training": {"frame", "runs", "images"},  # runs: a run dir's layout (rundir), a sweep's job dirs (multirun)
    "inference": {"frame", "runs", "images", "training"},  # training: export and a .ckpt start from its checkpoints
    "cli": {"frame", "runs", "images", "training", "inference"},  # training, inference: named in COMMANDS only
    "commands": {"frame", "runs", "images", "training", "inference", "cli"},
}
# Links up a floor, each for a reason.
UPWARD = {
    # lenet.reproduce reruns `python -m lenet.train` in a child process, the command line a user would type.
    ("runs.replay", "train"),
}


# Strings that name a module as data, not to load it: the command a child process runs (UPWARD), and the `_target_`s
# an old checkpoint's config is renamed to (training.checkpoints.MOVED: config values, as conf/*.yaml's).
NAMED_AS_DATA = {"runs.replay -> train", "training.checkpoints -> training.network",
                 "training.checkpoints -> training.datamodule"}  # fmt: skip


def floor(module: str) -> str:
    head = module.split(".")[0]
    return head if head in MAY_IMPORT else "commands"


def test_imports_run_down_the_floors():
    """A lower floor never names a higher one, not even in a string: the frame stands on nothing of lenet's, and no
    work reaches up to the frame its command runs in (lenet.cli) or to a command."""
    upward = [
        f"{module} -> {imported}"
        for module, links in sorted(GRAPH.items())
        for imported in sorted(links)
        if floor(imported) not in MAY_IMPORT[floor(module)] | {floor(module)} and (module, imported) not in UPWARD
    ]
    assert upward == [], "links up a floor:\n" + "\n".join(upward)


def test_imports_have_no_cycle():
    def visit(module, path):
        if module in path:
            return path[path.index(module) :] + [module]
        return next((cycle for imported in GRAPH[module] if (cycle := visit(imported, [*path, module]))), None)

    def named(cycle):  # each cycle once, from its first module in sorted order
        start = cycle.index(min(cycle[:-1]))
        return " -> ".join(cycle[start:-1] + cycle[: start + 1])

    cycles = sorted({named(cycle) for module in GRAPH if (cycle := visit(module, []))})
    assert cycles == [], "import cycles (a module named in a string counts):\n" + "\n".join(cycles)


def test_only_the_command_table_names_modules_in_strings():
    """Lazy loading for a fast --help is the command table's (lenet.cli.COMMANDS); elsewhere a link is an import."""
    named = {f"{module} -> {link}" for module, links in STRING_LINKS.items() if module != "cli" for link in links}
    outside = sorted(named - NAMED_AS_DATA)
    assert outside == [], "modules named in strings outside lenet.cli.COMMANDS:\n" + "\n".join(outside)


def test_the_choices_keys_declares_are_those_the_code_implements():
    """model.activation, model.pooling and format are checked against lenet.frame.keys' names at start-up: each
    must have its implementation, and each implementation its name."""
    assert sorted(network.ACTIVATIONS) == sorted(keys.ACTIVATIONS)
    assert sorted(network.POOLINGS) == sorted(keys.POOLINGS)
    assert sorted(portable.WRITERS) == sorted(keys.FORMATS)


def test_what_every_command_loads_imports_neither_torch_nor_matplotlib():
    """The frame and Hydra's callbacks (conf/hydra/default.yaml) load for every command, a single run's too: the
    report's matplotlib comes when a multirun starts, torch and Lightning with the work."""
    callbacks = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "default.yaml").callbacks
    modules = ["lenet.cli", *(callback._target_.rsplit(".", 1)[0] for callback in callbacks.values())]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    code += "print(*(name in sys.modules for name in ('torch', 'lightning', 'matplotlib')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False", "False"], done.stderr


@pytest.mark.parametrize("config", ["config", "eval", "export", "predict", "serve"])
def test_every_key_a_command_takes_is_declared_in_lenet_keys(config):
    """Its rule and roles live in one place; a new setting without a line there fails here."""
    top_level = set(compose_config("run_dir=x", config_name=config)) - {"hydra"}
    assert sorted(top_level - keys.KEYS.keys()) == []


def test_key_roles_follow_the_nearest_declaration():
    assert keys.role("trainer.precision").resume == keys.CHANGEABLE  # as trainer
    assert keys.role("trainer.max_epochs").resume == keys.RUN_LENGTH
    assert keys.role("callbacks.ema.multi_avg_fn.decay").resume == keys.FIXED  # as callbacks.ema, not callbacks
    assert not keys.role("callbacks.checkpoint.dirpath").recipe and keys.role("callbacks.checkpoint.monitor").recipe
    assert keys.role("model.compile").own and not keys.role("model.dropout").own
    assert keys.role("hparams_search.storage").search and not keys.role("seed").search


@pytest.fixture(scope="module")
def onnx_file(glyph_checkpoint, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("onnx")
    export(compose_config(f"ckpt_path={glyph_checkpoint}", f"run_dir={run_dir}", "format=onnx", config_name="export"))
    return run_dir / "lenet.onnx"


# Runs a command in this process, counting the opens of one file (Python's audit hook sees every open()), and says
# which of the heavy libraries it imported.
RUN_COUNTING_OPENS = """
import json, runpy, sys
command, watched, *overrides = sys.argv[1:]
opens = []
sys.addaudithook(lambda event, args: opens.append(args[0]) if event == "open" and str(args[0]) == watched else None)
sys.argv = [f"lenet.{command}", *overrides]
try:
    runpy.run_module(f"lenet.{command}", run_name="__main__")
except SystemExit as end:
    assert end.code in (None, 0), end.code
print(json.dumps({"opens": len(opens), "torch": "torch" in sys.modules, "lightning": "lightning" in sys.modules}))
"""


def run_counting_opens(command: str, model: Path, *overrides: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN_COUNTING_OPENS, command, str(model), f"ckpt_path={model}", *overrides],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def digit(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray(glyph_split(1, seed=0)[0][0]).save(path)
    return path


@pytest.mark.parametrize(
    "command, overrides",
    [
        ("eval", ["hydra.run.dir={tmp}/eval"]),
        ("export", ["hydra.run.dir={tmp}/export", "format=pt2"]),
        ("predict", ["hydra.run.dir={tmp}/predict", "inputs={digit}"]),
    ],
)
def test_a_command_opens_its_checkpoint_once(command, overrides, glyph_checkpoint, digit, tmp_path):
    result = run_counting_opens(command, glyph_checkpoint, *(o.format(tmp=tmp_path, digit=digit) for o in overrides))
    assert result["opens"] == 1


def test_predicting_with_an_onnx_file_imports_neither_torch_nor_lightning(onnx_file, digit, tmp_path):
    result = run_counting_opens("predict", onnx_file, f"inputs={digit}", f"hydra.run.dir={tmp_path}")
    assert result == {"opens": 1, "torch": False, "lightning": False}


def test_serving_an_onnx_file_imports_neither_torch_nor_lightning(onnx_file):
    code = (
        "import sys; from hydra import compose, initialize_config_dir; from lenet import CONFIG_DIR\n"
        "from lenet.inference import http_api, request_limits\n"
        "from lenet.inference.model_files import load\n"
        "with initialize_config_dir(config_dir=CONFIG_DIR, version_base='1.3'):\n"
        "    cfg = compose('serve', overrides=['run_dir=x'])\n"
        f"hosts = request_limits.allowed_hosts(None, '127.0.0.1', '127.0.0.1')\n"
        f"http_api.create_app(load({str(onnx_file)!r}), cfg, hosts)\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_a_predictor_gives_the_same_answers_from_either_file(onnx_file, glyph_checkpoint):
    images = np.stack(glyph_split(16, seed=2)[0])
    np.testing.assert_allclose(load(onnx_file).logits(images), load(glyph_checkpoint).logits(images), atol=1e-4)


def test_the_config_dir_is_the_checkouts_own():
    assert Path(CONFIG_DIR) == PACKAGE.parents[1] / "conf"


def test_no_module_name_is_another_with_a_suffix():
    """predict, prediction and predictor side by side made a reader open three files to find one: each module's name
    says its own job, not its neighbour's with an ending added (a word added, trained_model beside train, is a name)."""
    names = sorted({module.rsplit(".", 1)[-1] for module in GRAPH})
    twins = [(a, b) for a in names for b in names if a != b and b.startswith(a) and "_" not in b[len(a) :]]
    assert twins == []
