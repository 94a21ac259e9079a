"""A `.pt2` file of lenet.export read as a Predictor, once checked: loading a torch.export archive can run code.

torch.export.load unpickles weights and constants marked `use_pickle` (with weights_only=False), retries the sample
inputs with an unrestricted unpickler when a safe load refuses them, unpickles custom and opaque objects, loads
compiled AOTInductor libraries, compiles the program's `guards_code` into a function, and parses symbolic shapes with
sympy's eval-based parser. A file of lenet.export needs none of that: plain tensors, a graph of aten operators, shapes
that are symbols and numbers. `check` accepts only that, reading the archive's JSON itself before anything in it is
unpickled, compiled or parsed; a file it passes loads without running anything but torch's own operators.
"""

import ast
import io
import json
import re
import zipfile
from pathlib import Path

import torch

from lenet.frame.errors import ModelError
from lenet.frame.model_bytes import read_model_file
from lenet.inference.torch_forward import device_of, forward_numpy
from lenet.inference.trained_model import METADATA_FILE, Predictor, from_metadata

MODEL = "model"  # the one program lenet.export saves
MAX_BYTES = 256 * 2**20  # unpacked: LeNet's program is under a megabyte; a zip bomb is refused before it is read
PLAIN_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
PROGRAM = f"models/{MODEL}.json"
SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
OPERATORS = "torch.ops.aten."  # what LeNet's graph calls; anything else (higher-order ops, custom ops) is refused
SYMBOL = re.compile(r"[a-z]+\d+")  # torch's shape symbols: s0, s31, u2
# What a shape expression may call, as sympy's own printer (srepr) and torch's sympy functions write them.
SHAPE_FUNCTIONS = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt",
    "Ge", "And", "Or", "Not", "FloorDiv", "CeilDiv", "CleanDiv", "PythonMod", "ModularIndexing", "FloorToInt",
    "CeilToInt", "Where", "true", "false",
}  # fmt: skip
SHAPE_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp)
SHAPE_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub)


class UnsafeModel(ModelError):
    """A model file lenet will not load: loading it could run code, or it is not a file of lenet.export."""


def read(path: Path, device: str = "auto") -> Predictor:
    """A .pt2 file of lenet.export as a Predictor, once `check` has passed it."""
    archive = read_model_file(path)
    check(path, archive)  # before torch reads it: loading some .pt2 files runs code
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(io.BytesIO(archive), extra_files=extra)
    except Exception as error:  # a damaged archive
        raise ModelError(f"{path} is not a torch.export program ({type(error).__name__}: {error})") from None
    metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    torch_device = device_of(device)
    if torch_device.type != "cpu":
        program = torch.export.passes.move_to_device_pass(program, torch_device)
    module = program.module()
    return from_metadata(path, metadata, module, forward_numpy(module, torch_device))


def check(path, archive: bytes) -> None:
    """Refuse, in one line, a .pt2 whose loading could run code or that is not a plain lenet.export program."""
    try:
        files = _files(archive)
    except (zipfile.BadZipFile, ValueError) as error:
        raise UnsafeModel(f"{path} is not a torch.export archive ({error})") from None
    refuse = _refusal(files)
    if refuse:
        raise UnsafeModel(f"{path}: {refuse}; lenet loads only .pt2 files as lenet.export writes them")


def _files(archive: bytes) -> dict[str, bytes]:
    """The archive's files by their names below its one top-level folder."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        names = zipped.namelist()
        tops = {name.split("/", 1)[0] for name in names}
        if len(tops) != 1 or any("/" not in name for name in names):
            raise ValueError("its files are not under one folder")
        if sum(info.file_size for info in zipped.infolist()) > MAX_BYTES:
            raise ValueError(f"it unpacks to more than {MAX_BYTES // 2**20} MB")
        return {name.split("/", 1)[1]: zipped.read(name) for name in names if not name.endswith("/")}


def _refusal(files: dict[str, bytes]) -> str | None:
    """Why the archive's files are not those of a plain program, or None."""
    if missing := {PROGRAM, WEIGHTS_CONFIG, SAMPLE_INPUTS} - files.keys():
        return f"it lacks {', '.join(sorted(missing))}"
    weights = _payloads(files[WEIGHTS_CONFIG], "data/weights/", "weight_")
    constants = _payloads(files.get(CONSTANTS_CONFIG, b'{"config": {}}'), "data/constants/", "tensor_")
    if isinstance(weights, str) or isinstance(constants, str):
        return weights if isinstance(weights, str) else constants
    known = PLAIN_FILES | {PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS} | weights | constants
    if others := sorted(name for name in files if name not in known and not name.startswith("extra/")):
        return f"it holds {others[0]}, which is neither a plain tensor nor part of an exported program"
    return _program_refusal(json.loads(files[PROGRAM])) or _sample_inputs_refusal(files[SAMPLE_INPUTS])


def _payloads(config: bytes, folder: str, prefix: str) -> set[str] | str:
    """The tensor files a weights or constants config names, or why it is refused."""
    entries = json.loads(config).get("config", {})
    for name, entry in entries.items():
        if entry.get("use_pickle", True):
            return f"its {name} is a pickle, which can run code when it is loaded"
        if not str(entry.get("path_name", "")).startswith(prefix):
            return f"its {name} is not a plain tensor ({entry.get('path_name')})"
    return {folder + entry["path_name"] for entry in entries.values()}


def _program_refusal(program: dict) -> str | None:
    if program.get("guards_code"):
        return "it carries guards_code, Python code that torch compiles when the program is loaded"
    graph = program.get("graph_module", {}).get("graph", {})
    if graph.get("custom_obj_values"):
        return "it holds custom objects, which are unpickled when it is loaded"
    if calls := sorted({node["target"] for node in graph.get("nodes", []) if not node["target"].startswith(OPERATORS)}):
        return f"its graph calls {calls[0]}, not an aten operator"
    shapes = [*program.get("range_constraints", {}), *_expressions(program)]
    if bad := next((shape for shape in shapes if not _plain_shape(shape)), None):
        return f"its shape expression {bad[:60]!r} is not one of symbols and numbers (sympy would evaluate it)"
    return None


def _expressions(tree):
    """Every `expr_str` in the program: torch parses each with sympy."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "expr_str":
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _expressions(value)


def _plain_shape(expression) -> bool:
    """Whether a shape expression holds only sympy constructors, symbols, numbers and arithmetic."""
    try:
        tree = ast.parse(str(expression), mode="eval")
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            if not isinstance(node.op, SHAPE_OPERATORS):
                return False
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in SHAPE_FUNCTIONS:
                return False
        elif isinstance(node, ast.Name):
            if node.id not in SHAPE_FUNCTIONS and not SYMBOL.fullmatch(node.id):
                return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not SYMBOL.fullmatch(node.value):
                return False
        elif not isinstance(node, SHAPE_NODES + SHAPE_OPERATORS):
            return False
    return True


def _sample_inputs_refusal(sample_inputs: bytes) -> str | None:
    """torch.export.load retries sample inputs without weights_only when a safe load fails: fail here first."""
    try:
        torch.load(io.BytesIO(sample_inputs), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for objects beyond tensors; anything else for a damaged file
        return f"its sample inputs do not load as plain tensors ({type(error).__name__})"
    return None
