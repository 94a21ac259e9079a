"""lenet.export: ONNX and torch.export files that compute what the checkpoint computes, and carry what predict needs."""

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from conftest import compose_config, glyph_split, lenet_command
from lenet.cli import check
from lenet.frame.errors import ConfigError
from lenet.inference.model_files import load
from lenet.inference.portable import ParityError, export, parity


def export_config(checkpoint, run_dir, *overrides):
    return compose_config(f"ckpt_path={checkpoint}", f"run_dir={run_dir}", *overrides, config_name="export")


@pytest.fixture(scope="module", params=["onnx", "pt2"])
def exported(request, glyph_checkpoint, tmp_path_factory):
    """(format, file, the record written next to it), exported once per format."""
    run_dir = tmp_path_factory.mktemp(f"export-{request.param}")
    record = export(export_config(glyph_checkpoint, run_dir, f"format={request.param}"))
    return request.param, run_dir / f"lenet.{request.param}", record


def test_every_export_checks_parity_on_the_test_images_and_writes_it_down(exported):
    fmt, path, record = exported
    assert json.loads(path.with_name(f"{path.name}.json").read_text()) == record
    result = record["parity"]
    assert result["passed"] and result["identical_class_share"] == 1.0
    assert result["max_abs_diff"] <= 1e-4 and result["images"] == 200  # the fixture's whole test split
    assert "test images" in result["inputs"] and record["format"] == fmt


def test_the_file_carries_classes_and_normalization(exported, glyph_checkpoint):
    fmt, path, _ = exported
    model, checkpoint = load(path, device="cpu"), load(glyph_checkpoint, device="cpu")
    assert (model.classes, model.mean, model.std, model.dataset) == (
        checkpoint.classes,
        checkpoint.mean,
        checkpoint.std,
        "mnist",
    )
    assert model.classes == [str(digit) for digit in range(10)]
    if fmt == "onnx":  # readable by any ONNX runtime, not only through lenet
        properties = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert json.loads(properties["classes"]) == model.classes and properties["output"] == "logits"


@pytest.mark.parametrize("batch", [1, 37])
def test_any_batch_size_gives_the_checkpoints_logits(exported, glyph_checkpoint, batch):
    _, path, _ = exported
    images, _ = glyph_split(batch, seed=3)
    expected = load(glyph_checkpoint, device="cpu").logits(images)
    got = load(path, device="cpu").logits(images)
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_predict_works_on_the_exported_file_alone(exported, glyph_checkpoint, tmp_path):
    """Copied away from its checkpoint and its JSON, the file predicts what the checkpoint predicts."""
    from PIL import Image

    from lenet.inference.classify import predict

    fmt, path, _ = exported
    alone = tmp_path / "alone" / f"model.{fmt}"
    alone.parent.mkdir()
    shutil.copy(path, alone)
    images, _ = glyph_split(12, seed=5)
    for index, image in enumerate(images):
        Image.fromarray(255 - image).resize((84, 84)).save(tmp_path / f"{index:02d}.png")  # dark on light, larger
    runs = {}
    for name, model in [("checkpoint", glyph_checkpoint), ("alone", alone)]:
        overrides = [f"ckpt_path={model}", f"inputs={tmp_path}", f"run_dir={tmp_path / name}"]
        runs[name] = [
            top for prediction in predict(compose_config(*overrides, config_name="predict")) for top in prediction.top
        ]
    assert len(runs["alone"]) == 12 * 3
    assert [name for name, _ in runs["alone"]] == [name for name, _ in runs["checkpoint"]]
    np.testing.assert_allclose([p for _, p in runs["alone"]], [p for _, p in runs["checkpoint"]], atol=1e-5)


def test_without_the_data_parity_runs_on_random_images(glyph_checkpoint, tmp_path):
    record = export(export_config(glyph_checkpoint, tmp_path, "format=pt2", f"data.root={tmp_path / 'gone'}"))
    assert record["parity"]["inputs"] == "1000 random images" and record["parity"]["passed"]


def test_a_parity_failure_fails_the_export_and_is_written_down(glyph_checkpoint, tmp_path, monkeypatch):
    def drifting(reference, exported, images):
        return parity(reference, Drift(exported), images)

    monkeypatch.setattr("lenet.inference.portable.parity", drifting)
    with pytest.raises(ParityError, match="differs from the checkpoint"):
        export(export_config(glyph_checkpoint, tmp_path, "format=pt2"))
    record = json.loads((tmp_path / "lenet.pt2.json").read_text())
    assert not record["parity"]["passed"] and record["parity"]["max_abs_diff"] > 1e-4


class Drift:
    """A model whose logits are off by 1e-3: more than parity allows."""

    def __init__(self, model):
        self.model = model

    def logits(self, images):
        return self.model.logits(images) + 1e-3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["format=tflite"], "format='tflite' is not allowed: it must be null, or one of onnx, pt2"),
        (["format=onnx", "output=model.pt2"], "must end in .onnx"),
    ],
)
def test_bad_format_or_output_is_refused(glyph_checkpoint, tmp_path, overrides, message):
    cfg = export_config(glyph_checkpoint, tmp_path, *overrides)
    with pytest.raises(ConfigError, match=message):
        check(cfg, saved="data")  # as lenet.export's frame does before its task
        export(cfg)


def test_export_from_the_command_line_infers_the_format_from_the_output(glyph_checkpoint, tmp_path):
    command = lenet_command("export", f"ckpt_path={glyph_checkpoint}", "output=model.pt2")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.pt2").is_file() and (tmp_path / "model.pt2.json").is_file()
    assert "identical classes 100.00%" in result.stdout + result.stderr
    assert list((tmp_path / "outputs" / "export").glob("*/*/export.log")), "a run dir like lenet.eval's"
