"""The code's layout, as a newcomer relies on it: imports run one way, every config key is declared, a model file is
read once, and an exported .onnx is used without torch or Lightning."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config, glyph_split
from lenet import CONFIG_DIR
from lenet.frame import keys
from lenet.inference.portable import export

PACKAGE = Path(__file__).parents[1] / "src" / "lenet"
COMMANDS = {"train", "eval", "export", "predict", "serve", "report", "reproduce"}  # python -m lenet.<command>


def module_name(path: Path) -> str:
    """src/lenet/training/fit.py -> training.fit"""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def is_module(name: str) -> bool:
    return (PACKAGE / name.replace(".", "/")).with_suffix(".py").is_file()


def lenet_imports(module: Path) -> set[str]:
    """The lenet modules `module` imports, wherever in it (top level or inside a function), as `training.fit`."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lenet":
            name = node.module.removeprefix("lenet").removeprefix(".")
            found |= {n for n in (f"{name}.{a.name}".lstrip(".") for a in node.names) if is_module(n)} or {name}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("lenet.") for a in node.names if a.name.startswith("lenet.")}
    return {name for name in found if is_module(name)}


GRAPH = {module_name(path): lenet_imports(path) for path in PACKAGE.rglob("*.py") if path.stem != "__init__"}


def test_no_module_imports_a_command():
    """A command (python -m lenet.train) is the top floor: the modules that do the work never reach up to one."""
    assert {module: sorted(imported & COMMANDS) for module, imported in GRAPH.items() if imported & COMMANDS} == {}


def test_imports_have_no_cycle():
    def visit(module, path):
        if module in path:
            return path[path.index(module) :] + [module]
        return next((cycle for imported in GRAPH[module] if (cycle := visit(imported, [*path, module]))), None)

    assert [cycle for module in GRAPH if (cycle := visit(module, []))] == []


def test_the_ground_floor_imports_nothing_of_lenet_above_it():
    """lenet.frame is what every command and piece of work may use: it stands on nothing of lenet's but itself."""
    frame = {module: imported for module, imported in GRAPH.items() if module.startswith("frame.")}
    assert {
        module: sorted(i for i in imported if not i.startswith("frame.")) for module, imported in frame.items()
    } == (dict.fromkeys(frame, []))


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
        "from lenet.inference.trained_model import load\n"
        "with initialize_config_dir(config_dir=CONFIG_DIR, version_base='1.3'):\n"
        "    cfg = compose('serve', overrides=['run_dir=x'])\n"
        f"hosts = request_limits.allowed_hosts(None, '127.0.0.1', '127.0.0.1')\n"
        f"http_api.create_app(load({str(onnx_file)!r}), cfg, hosts)\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_a_predictor_gives_the_same_answers_from_either_file(onnx_file, glyph_checkpoint):
    from lenet.inference.trained_model import load

    images = np.stack(glyph_split(16, seed=2)[0])
    np.testing.assert_allclose(load(onnx_file).logits(images), load(glyph_checkpoint).logits(images), atol=1e-4)


def test_the_config_dir_is_the_checkouts_own():
    assert Path(CONFIG_DIR) == PACKAGE.parents[1] / "conf"
