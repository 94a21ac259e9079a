"""Model files from strangers: loading a checkpoint, a .pt2 or an .onnx never runs code, and a refusal is one line."""

import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import compose_config, glyph_split, lenet_command
from lenet.frame.errors import ModelError
from lenet.inference.model_files import load
from lenet.inference.portable import export
from lenet.inference.pt2_reader import UnsafeModel


class Payload:
    """Unpickled, it creates a file: the harmless stand-in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def pt2_file(glyph_checkpoint, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pt2")
    export(compose_config(f"ckpt_path={glyph_checkpoint}", f"run_dir={run_dir}", "format=pt2", config_name="export"))
    return run_dir / "lenet.pt2"


def rewrite(pt2: Path, out: Path, change) -> Path:
    """A copy of a .pt2 with its files {name below the top folder: bytes} changed by `change`."""
    with zipfile.ZipFile(pt2) as zipped:
        top = zipped.namelist()[0].split("/", 1)[0]
        files = {name.split("/", 1)[1]: zipped.read(name) for name in zipped.namelist()}
    change(files)
    with zipfile.ZipFile(out, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(f"{top}/{name}", data)
    return out


def pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def with_json(name: str, edit):
    def change(files):
        document = json.loads(files[name])
        edit(document)
        files[name] = json.dumps(document).encode()

    return change


WEIGHTS = "data/weights/model_weights_config.json"


def pickled_weight(marker):
    """What the issue found: one weight switched to a pickle runs its payload in torch.export.load."""

    def change(files):
        with_json(WEIGHTS, lambda config: config["config"]["0.weight"].update(use_pickle=True))(files)
        files["data/weights/weight_0"] = pickled(marker)

    return change


def code_in_guards(marker):
    return with_json("models/model.json", lambda p: p.update(guards_code=[f"open({str(marker)!r}, 'w')"]))


def code_in_a_shape(marker):
    def edit(program):
        sizes = program["graph_module"]["graph"]["tensor_values"]["input"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = f"open({str(marker)!r}, 'w') and Symbol('s31')"

    return with_json("models/model.json", edit)


def unsafe_sample_inputs(marker):
    def change(files):
        files["data/sample_inputs/model.pt"] = pickled(marker)

    return change


def compiled_library(marker):
    def change(files):
        files["data/aotinductor/model/model.so"] = b"\x7fELF"

    return change


def custom_operator(marker):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.lenet_evil.run.default"

    return with_json("models/model.json", edit)


@pytest.mark.parametrize(
    "attack, message",
    [
        (pickled_weight, "its 0.weight is a pickle, which can run code when it is loaded"),
        (code_in_guards, "it carries guards_code, Python code that torch compiles"),
        (code_in_a_shape, "its shape expression"),
        (unsafe_sample_inputs, "its sample inputs do not load as plain tensors (UnpicklingError)"),
        (compiled_library, "it holds data/aotinductor/model/model.so"),
        (custom_operator, "its graph calls torch.ops.lenet_evil.run.default, not an aten operator"),
    ],
)
def test_a_pt2_that_would_run_code_is_refused_before_anything_in_it_is_loaded(attack, message, pt2_file, tmp_path):
    marker = tmp_path / "ran"
    hostile = rewrite(pt2_file, tmp_path / "hostile.pt2", attack(marker))
    with pytest.raises(UnsafeModel) as refused:
        load(hostile, device="cpu")
    assert message in str(refused.value) and str(hostile) in str(refused.value)
    assert "lenet loads only .pt2 files as lenet.export writes them" in str(refused.value)
    assert not marker.exists()


def test_the_pt2_that_lenet_export_writes_passes_the_check(pt2_file, glyph_checkpoint):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    assert (load(pt2_file, device="cpu").logits(images) - load(glyph_checkpoint).logits(images)).max() < 1e-4


def hostile_checkpoint(checkpoint: Path, out: Path, marker: Path) -> Path:
    """A real checkpoint of lenet.train with one more entry: an object whose unpickling runs code."""
    contents = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({**contents, "payload": Payload(marker)}, out)
    return out


# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is documented by torch: it turns its default weights_only=True off. Only an
# explicit weights_only=True in every load keeps a checkpoint from running code then.
UNSAFE_DEFAULT = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "ckpt_path={ckpt}"],
        ["predict", "ckpt_path={ckpt}", "inputs={image}"],
        # The same reader serves every command (Checkpoint.open): the others run with the slow tests.
        pytest.param(["train", "ckpt_path={ckpt}", "data.root={root}", "trainer.max_epochs=9"], marks=pytest.mark.slow),
        pytest.param(["export", "ckpt_path={ckpt}"], marks=pytest.mark.slow),
        pytest.param(["serve", "ckpt_path={ckpt}", "port=0"], marks=pytest.mark.slow),
    ],
    ids=lambda command: command[0],
)
def test_a_checkpoint_that_would_run_code_is_one_line_and_exit_1(command, glyph_checkpoint, tmp_path):
    marker = tmp_path / "ran"
    ckpt = hostile_checkpoint(glyph_checkpoint, tmp_path / "hostile.ckpt", marker)
    root, image = glyph_checkpoint.parents[2] / "glyph-data", tmp_path / "digit.png"
    Image.fromarray(glyph_split(1, seed=0)[0][0]).save(image)
    module, *overrides = [part.format(ckpt=ckpt, root=root, image=image) for part in command]
    done = subprocess.run(
        lenet_command(module, *overrides, f"outputs_dir={tmp_path / 'outputs'}"),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **UNSAFE_DEFAULT},
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {ckpt} holds Python objects beyond tensors and plain values, which could run code when loaded: "
        "lenet loads only its own checkpoints"
    ]
    assert not marker.exists()


def test_a_foreign_file_as_checkpoint_is_one_line(tmp_path):
    foreign = tmp_path / "model.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelError, match=f"^{foreign} is not a checkpoint of lenet.train$"):
        load(foreign)


@pytest.mark.parametrize(
    "edit, line",
    [
        ({"std": 0}, "holds std=0, which is not allowed: it must be a number > 0"),
        ({"mean": "abc"}, "holds mean='abc', which is not allowed: it must be a number in [0, 1)"),
        ({"layout": "upright"}, "holds layout='upright', which is not allowed: it must be one of strokes, object"),
        ({"classes": "0123456789"},
         "holds classes='0123456789', which is not allowed: it must be a list of two or more class names"),
    ],
    ids=["std-0", "mean-abc", "unknown-layout", "classes-a-string"],
)  # fmt: skip
def test_an_exported_file_with_odd_metadata_is_one_line(edit, line, pt2_file, tmp_path):
    """Its metadata feeds the normalization and the class names: checked by the rules of the settings it came from."""
    odd = rewrite(pt2_file, tmp_path / "odd.pt2", with_json("extra/lenet.json", lambda metadata: metadata.update(edit)))
    with pytest.raises(ModelError) as refused:
        load(odd, device="cpu")
    assert str(refused.value) == f"{odd} {line}"
