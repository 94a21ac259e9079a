"""lenet.predict and the image preparation of lenet.images.preparation, on files made as users' photos and scans
would be."""

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lenet.inference.classify
import lenet.inference.trained_model
from conftest import compose_config, glyph_split, lenet_command
from lenet.cli import check
from lenet.frame.errors import ConfigError, ModelError
from lenet.frame.mnist_family import LAYOUTS
from lenet.frame.quoting import spreadsheet_cell
from lenet.images import pool
from lenet.images.preparation import ImageError, prepare
from lenet.inference.classify import (
    PredictInterrupted,
    Prediction,
    PreviewPicks,
    UnreadableImages,
    predict,
)
from lenet.inference.input_files import InputError
from lenet.inference.model_files import load


@pytest.fixture(scope="module")
def classifier(glyph_checkpoint):
    return load(glyph_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def originals(classifier):
    """28x28 glyphs the checkpoint is sure of, and the class it gives each: what predict must reproduce."""
    images, _ = glyph_split(80, seed=7)
    probabilities = classifier.probabilities(images)
    sure = probabilities.max(axis=1) > 0.9
    assert sure.sum() >= 30, "the fixture checkpoint should be sure of most glyphs"
    return images[sure][:30], probabilities.argmax(axis=1)[sure][:30]


def scaled(image: np.ndarray, factor: float) -> Image.Image:
    side = round(28 * factor)
    return Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)


def on_canvas(glyph: Image.Image, size: tuple[int, int], at: tuple[int, int]) -> Image.Image:
    canvas = Image.new("L", size)
    canvas.paste(glyph, at)
    return canvas


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def inverted(image: Image.Image) -> Image.Image:
    return Image.eval(image, lambda v: 255 - v)


# Each turns a 28x28 light-on-dark glyph into a file as a user would have it: (bytes, suffix).
VARIANTS = {
    "larger, off-centre": lambda a: (encoded(on_canvas(scaled(a, 4), (200, 160), (10, 40)), "PNG"), ".png"),
    "dark on light": lambda a: (encoded(inverted(on_canvas(scaled(a, 3), (150, 150), (60, 50))), "PNG"), ".png"),
    "blue ink on cream paper, JPEG": lambda a: (encoded(ink_on_paper(scaled(a, 5)), "JPEG", quality=80), ".jpg"),
    "black ink on transparent": lambda a: (encoded(transparent(scaled(a, 3), ink=(0, 0, 0)), "PNG"), ".png"),
    "white ink on transparent": lambda a: (encoded(transparent(scaled(a, 3), ink=(255, 255, 255)), "PNG"), ".png"),
    "BMP": lambda a: (encoded(inverted(scaled(a, 2)), "BMP"), ".bmp"),
    "GIF": lambda a: (encoded(inverted(scaled(a, 2)), "GIF"), ".gif"),
    "WebP": lambda a: (encoded(scaled(a, 2).convert("RGB"), "WEBP", quality=90), ".webp"),
    "TIFF, 16 bit": lambda a: (encoded(Image.fromarray(np.asarray(scaled(a, 2), np.uint16) * 257), "TIFF"), ".tiff"),
}


def ink_on_paper(glyph: Image.Image) -> Image.Image:
    ink, paper = np.array([30, 40, 140]), np.array([235, 225, 200])
    alpha = np.asarray(glyph, dtype=np.float32)[..., None] / 255
    page = np.full((glyph.height + 90, glyph.width + 50, 3), paper, dtype=np.float32)
    page[70 : 70 + glyph.height, 20 : 20 + glyph.width] = paper + (ink - paper) * alpha
    return Image.fromarray(page.astype(np.uint8))


def transparent(glyph: Image.Image, ink: tuple[int, int, int]) -> Image.Image:
    rgba = Image.new("RGBA", glyph.size, (*ink, 0))
    rgba.putalpha(glyph)  # the glyph's intensity is the ink's opacity; what is not ink is transparent
    return rgba


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prepared_user_images_are_classified_as_their_28x28_originals(classifier, originals, variant):
    images, expected = originals
    prepared = np.stack([classifier.prepare(VARIANTS[variant](image)[0]) for image in images])
    assert classifier.probabilities(prepared).argmax(axis=1).tolist() == expected.tolist()


def test_preparation_lays_a_digit_out_as_mnist_does(originals):
    image = prepare(VARIANTS["dark on light"](originals[0][0])[0])
    assert image.shape == (28, 28) and image.dtype == np.uint8
    assert image.max() == 255 and image[0].max() == image[-1].max() == 0  # light on a black background
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)  # the 20x20 box, plus anti-aliasing
    ys, xs = np.mgrid[:28, :28]
    centre = (ys * image).sum() / image.sum(), (xs * image).sum() / image.sum()
    assert np.allclose(centre, 14, atol=1)  # centred by centre of mass


def test_fashion_mnist_images_fill_the_frame_centred_by_their_box():
    shirt = np.zeros((60, 40), dtype=np.uint8)
    shirt[5:55, 2:38] = 200
    image = prepare(encoded(inverted(Image.fromarray(shirt)), "PNG"), LAYOUTS["object"])
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    assert (rows[0], rows[-1]) == (0, 27) and abs((cols[0] + cols[-1]) / 2 - 13.5) <= 0.5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an image at all", "not an image"),
        (encoded(Image.new("RGB", (64, 64)), "PNG")[:60], "cannot read"),  # cut off
        (encoded(Image.new("L", (64, 64), 230), "JPEG"), "blank"),
    ],
)
def test_unreadable_or_blank_images_raise_one_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        prepare(data)


@pytest.fixture(scope="module")
def user_folder(originals, tmp_path_factory):
    """One file per original, the variants in turn; a corrupt image; a file that is not an image by name."""
    folder = tmp_path_factory.mktemp("photos")
    names = list(VARIANTS)
    for index, image in enumerate(originals[0]):
        data, suffix = VARIANTS[names[index % len(names)]](image)
        (folder / f"{index:02d}{suffix}").write_bytes(data)
    (folder / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "notes.txt").write_text("not an image, ignored")
    return folder


def test_predict_writes_the_csv_and_names_a_corrupt_file(
    glyph_checkpoint, classifier, originals, user_folder, tmp_path
):
    output = tmp_path / "preds.csv"
    command = lenet_command(
        "predict", f"ckpt_path={glyph_checkpoint}", f"inputs={user_folder}", f"output={output}", "preview=true"
    )
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: 1 of 31 images could not be read ({user_folder}")
    assert "zz-corrupt.png" in result.stderr and str(output) in result.stdout
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    header = ["path", "prediction", "confidence", "top1", "p1", "top2", "p2", "top3", "p3", "error"]
    assert list(rows[0]) == header
    assert len(rows) == 31 and not any(row["path"].endswith("notes.txt") for row in rows)
    corrupt = rows.pop()
    assert corrupt["path"].endswith("zz-corrupt.png") and corrupt["error"] and not corrupt["prediction"]
    assert [row["prediction"] for row in rows] == [classifier.classes[i] for i in originals[1]]
    assert all(not row["error"] and row["top1"] == row["prediction"] and row["p1"] == row["confidence"] for row in rows)
    assert all(1 >= float(row["p1"]) >= float(row["p2"]) >= float(row["p3"]) >= 0 for row in rows)
    assert (tmp_path / "preds_preview.png").is_file()


def predict_config(checkpoint, inputs, run_dir, *overrides):
    return compose_config(
        f"ckpt_path={checkpoint}", f"inputs={inputs}", f"run_dir={run_dir}", *overrides, config_name="predict"
    )


def test_inputs_take_a_glob_or_a_list_and_the_csv_goes_to_the_run_dir(glyph_checkpoint, user_folder, tmp_path):
    predictions = predict(predict_config(glyph_checkpoint, f"'{user_folder}/*.jp*g'", tmp_path))
    assert [p.path.rsplit(".", 1)[1] for p in predictions] == ["jpg"] * len(predictions) and predictions
    assert (tmp_path / "predictions.csv").is_file()
    two = [str(path) for path in sorted(user_folder.glob("0[01].*"))]
    predictions = predict(predict_config(glyph_checkpoint, f"[{','.join(two)}]", tmp_path, "top_k=1"))
    assert [p.path for p in predictions] == two and all(len(p.top) == 1 for p in predictions)


@pytest.mark.parametrize(
    ("inputs", "overrides", "error", "message"),
    [
        ("'{folder}/*.tif'", [], InputError, r"inputs='.*\*.tif' matches no file"),
        ("{empty}", [], InputError, "the folder holds no images"),
        ("{folder}", ["top_k=0"], ConfigError, "top_k=0 is not allowed"),
        ("{folder}", ["top_k=11"], InputError, "more than the model's 10 classes"),
        ("{folder}", ["ckpt_path={folder}/00.png"], ModelError, "is not a checkpoint of lenet.train"),
    ],
)
def test_bad_inputs_are_refused(glyph_checkpoint, user_folder, tmp_path, inputs, overrides, error, message):
    (tmp_path / "empty").mkdir()
    fill = {"folder": user_folder, "empty": tmp_path / "empty"}
    cfg = predict_config(glyph_checkpoint, inputs.format(**fill), tmp_path, *(o.format(**fill) for o in overrides))
    with pytest.raises(error, match=message):
        check(cfg)  # as lenet.cli's frame does before every task
        predict(cfg)


def test_a_missing_path_is_one_line_and_a_non_zero_exit(glyph_checkpoint, tmp_path):
    command = lenet_command("predict", f"ckpt_path={glyph_checkpoint}", "inputs=missing.png")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: inputs=missing.png: no such file or folder"


# Odd input (issue 15): whatever one entry is, it gets its row and the others theirs; the CSV is written as it goes.


def glyph_file(originals, index: int = 0) -> bytes:
    return VARIANTS["dark on light"](originals[0][index])[0]


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def predicted(checkpoint, inputs, run_dir, *overrides) -> list[dict[str, str]]:
    """predict's CSV rows, whether or not it ended with UnreadableImages."""
    with contextlib.suppress(UnreadableImages):
        predict(predict_config(checkpoint, inputs, run_dir, *overrides))
    return read_rows(run_dir / "predictions.csv")


def test_float_tiffs_with_nan_or_inf_and_a_lab_tiff_get_their_rows(glyph_checkpoint, classifier, originals, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for index in range(3):
        (folder / f"good{index}.png").write_bytes(glyph_file(originals, index))
    glyph = np.asarray(scaled(originals[0][0], 2), dtype=np.float32) / 255
    for name, value in [("nan", np.nan), ("inf", np.inf)]:
        pixels = glyph.copy()
        pixels[0, 0] = value
        Image.fromarray(pixels).save(folder / f"{name}.tif")  # a float32 array: mode "F"
    grey = scaled(originals[0][0], 2)
    flat = Image.new("L", grey.size, 128)
    Image.merge("LAB", [grey, flat, flat]).save(folder / "lab.tif")

    with pytest.raises(UnreadableImages, match="of 6 images could not be read"):
        predict(predict_config(glyph_checkpoint, folder, tmp_path, "top_k=1"))
    rows = {Path(row["path"]).name: row for row in read_rows(tmp_path / "predictions.csv")}
    assert list(rows) == ["good0.png", "good1.png", "good2.png", "inf.tif", "lab.tif", "nan.tif"]
    expected = [classifier.classes[i] for i in originals[1][:3]]
    assert [rows[f"good{index}.png"]["prediction"] for index in range(3)] == expected
    assert all(rows[name]["error"] and not rows[name]["prediction"] for name in ("nan.tif", "inf.tif"))
    assert rows["lab.tif"]["prediction"] or rows["lab.tif"]["error"]  # its L channel, or why not: never lost


def glyph_folder(tmp_path: Path, originals, count: int) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(count):
        (folder / f"{index}.png").write_bytes(glyph_file(originals, index))
    return folder


def failing_at(call: int, error: BaseException):
    """lenet.images.preparation.prepare as predict calls it, but that its `call`-th call (from 0) raises `error`."""
    calls = iter(range(1_000_000))

    def failing(image, *args, **kwargs):
        if next(calls) == call:
            raise error
        return prepare(image, *args, **kwargs)

    return failing


def test_a_failure_prepare_does_not_foresee_is_that_images_row(glyph_checkpoint, originals, tmp_path, monkeypatch):
    folder = glyph_folder(tmp_path, originals, 3)
    monkeypatch.setattr(lenet.inference.trained_model, "prepare", failing_at(1, TypeError("a case nobody foresaw")))
    rows = predicted(glyph_checkpoint, folder, tmp_path)
    assert [row["error"] for row in rows] == ["", "cannot read it (TypeError: a case nobody foresaw)", ""]
    assert rows[0]["prediction"] and rows[2]["prediction"]


def test_entries_named_like_images_that_are_not_files_get_a_row_each(glyph_checkpoint, originals, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "good.png").write_bytes(glyph_file(originals))
    (folder / "folder.png").mkdir()
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "broken.png").symlink_to("gone.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "link.png").symlink_to("good.png")  # a regular file through a link: predicted
    os.mkfifo(folder / "fifo.png")
    expected = {
        "broken.png": "a broken symlink (to gone.png)",
        "fifo.png": "a FIFO, not a file",
        "folder.png": "a folder, not a file",
        "good.png": "",
        "link.png": "",
        "loop.png": "a symlink loop",
        "zero.png": "a device, not a file",
    }
    files = {name: error for name, error in expected.items() if name != "folder.png"}  # a folder named is listed
    named = "[" + ",".join(str(folder / name) for name in files) + "]"
    for inputs, rows_expected in [(folder, expected), (f"'{folder}/*.png'", expected), (named, files)]:
        rows = predicted(glyph_checkpoint, inputs, tmp_path)
        assert {Path(row["path"]).name: row["error"] for row in rows} == rows_expected, inputs
        assert all(bool(row["prediction"]) != bool(row["error"]) for row in rows)


def test_a_unix_socket_named_like_an_image_gets_a_row(glyph_checkpoint, originals, tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="sock"))  # a socket's path must be short (108 bytes)
    try:
        (folder / "good.png").write_bytes(glyph_file(originals))
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(folder / "s.png"))
            rows = predicted(glyph_checkpoint, folder, tmp_path)
    finally:
        shutil.rmtree(folder)
    assert [(Path(row["path"]).name, row["error"]) for row in rows] == [
        ("good.png", ""),
        ("s.png", "a socket, not a file"),
    ]


LOOPING_GLOB = """
import json, sys
from lenet.inference.input_files import image_paths
print(json.dumps([str(path) for path in image_paths(sys.argv[1])]))
"""


@pytest.mark.parametrize("loops", [1, 2])
def test_a_recursive_glob_ends_matches_each_file_once_and_stays_in_its_tree(tmp_path, loops):
    tree = tmp_path / "tree"
    (tree / "sub" / "deep").mkdir(parents=True)
    (tree / ".store").mkdir()
    (tmp_path / "other").mkdir()
    for name in ("a.png", "sub/b.png", "sub/deep/c.png", ".store/e.png", "../other/d.png"):
        (tree / name).write_bytes(b"")
    (tree / "loop").symlink_to(".")  # back to itself
    if loops == 2:
        (tree / "sub" / "back").symlink_to("..")  # and back up from below
    (tree / "shown").symlink_to(".store")  # a link inside the tree is searched (the hidden folder is not)
    (tree / "linked").symlink_to("../other")  # a folder outside the tree is not
    (tree / "root").symlink_to("/")  # nor the whole file system (31,506 PNGs on this machine), as /proc/self/root is
    # Python 3.11's glob ran these forever (two loops) or matched each file ~40 times (one): in a process of its own.
    found = subprocess.run(
        [sys.executable, "-c", LOOPING_GLOB, f"{tree}/**/*.png"], capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    names = [str(Path(path).relative_to(tree)) for path in json.loads(found.stdout)]
    assert names == ["a.png", "shown/e.png", "sub/b.png", "sub/deep/c.png"]
    assert found.stderr == (
        f"inputs='{tree}/**/*.png': 2 symlinked folders lead outside {tree} and were not searched "
        f"({tree}/linked -> {tmp_path}/other, {tree}/root -> /); to search one, add it to inputs\n"
    )


@pytest.mark.parametrize("pattern", ["*/*.png", "*/**/*.png"], ids=["wildcard folder", "wildcard folder, then **"])
def test_a_link_out_of_the_patterns_tree_is_named_and_not_searched(
    glyph_checkpoint, originals, tmp_path, caplog, pattern
):
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (photos / "2024" / "good.png").write_bytes(glyph_file(originals, 0))
    (tmp_path / "elsewhere" / "secret.png").write_bytes(glyph_file(originals, 1))
    (photos / "2025").symlink_to("../elsewhere")  # matched by the wildcard, and leads out of photos/
    (photos / "2024" / "linked.png").symlink_to("../../elsewhere/secret.png")  # a linked file is read
    with caplog.at_level(logging.WARNING, logger="lenet.inference.input_files"):
        rows = predicted(glyph_checkpoint, f"'{photos}/{pattern}'", tmp_path)
    assert [(Path(row["path"]).name, bool(row["prediction"])) for row in rows] == [
        ("good.png", True),
        ("linked.png", True),
    ]
    assert caplog.messages == [
        f"inputs='{photos}/{pattern}': 1 symlinked folder leads outside {photos} and was not searched "
        f"({photos}/2025 -> {tmp_path}/elsewhere); to search one, add it to inputs"
    ]


def test_cells_that_a_spreadsheet_would_run_as_formulas_start_with_a_quote(
    glyph_checkpoint, originals, tmp_path, monkeypatch
):
    folder = tmp_path / "names"
    folder.mkdir()
    names = ["+x.png", "-x.png", "=1+1.png", "@x.png"]
    for name in names:
        (folder / name).write_bytes(glyph_file(originals))
    real_load = lenet.inference.classify.load

    def load_with_formula_classes(*args, **kwargs):  # class names come from the model file: a .onnx names them
        classifier = real_load(*args, **kwargs)
        return dataclasses.replace(classifier, classes=[f"=c{name}" for name in classifier.classes])

    monkeypatch.setattr(lenet.inference.classify, "load", load_with_formula_classes)
    monkeypatch.chdir(folder)
    rows = predicted(glyph_checkpoint, "'*.png'", tmp_path)
    assert [row["path"] for row in rows] == [f"'{name}" for name in names]
    assert all(row["prediction"].startswith("'=c") and row["top3"].startswith("'=c") for row in rows)
    assert [spreadsheet_cell(text) for text in ("\tx", "\rx", "x=1", "", "'")] == ["'\tx", "'\rx", "x=1", "", "'"]


def test_file_names_that_are_not_utf8_or_hold_a_newline_get_readable_rows(glyph_checkpoint, originals, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    for name in (b"caf\xe9.png", b"two\nlines.png", b"\x1b[31mred.png"):
        (folder / os.fsdecode(name)).write_bytes(glyph_file(originals))
    rows = predicted(glyph_checkpoint, folder, tmp_path)
    assert [Path(row["path"]).name for row in rows] == ["\\x1b[31mred.png", "caf\\xe9.png", "two\\nlines.png"]
    assert all(row["prediction"] for row in rows)


@pytest.mark.parametrize("prepare", ["true", "false"])
def test_an_image_over_max_megapixels_gets_an_error_row(glyph_checkpoint, originals, tmp_path, prepare):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "small.png").write_bytes(glyph_file(originals))
    Image.new("L", (1500, 1000)).save(folder / "large.png")
    rows = predicted(glyph_checkpoint, folder, tmp_path, "max_megapixels=1", f"prepare={prepare}")
    assert [row["path"] for row in rows] == [str(folder / "large.png"), str(folder / "small.png")]
    assert "1500x1000 pixels is more than the limit, 1 megapixels" in rows[0]["error"] and rows[1]["prediction"]


def test_counts_are_singular_for_one_image(glyph_checkpoint, tmp_path, capsys, caplog):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n")
    with caplog.at_level(logging.INFO), pytest.raises(UnreadableImages, match=r"^1 of 1 image could not be read"):
        predict(predict_config(glyph_checkpoint, corrupt, tmp_path))
    assert "1 image, 1 unreadable." in capsys.readouterr().out
    assert caplog.messages[0].endswith(": 1 image")


def offered(picks: PreviewPicks, confidences: list[float | None]) -> PreviewPicks:
    """Rows with these confidences (None: unreadable) offered to `picks`, named by their index."""
    rows = [Prediction(str(i), [("7", c)] if c is not None else [], "" if c is not None else "x") for i, c in
            enumerate(confidences)]  # fmt: skip
    picks.offer([(row, None if row.error else np.zeros((28, 28), np.uint8)) for row in rows])
    return picks


def test_the_preview_says_which_images_it_shows_and_can_show_the_doubtful_first():
    confidences = [0.9 + i / 10_000 for i in range(150)]
    confidences[120], confidences[5], confidences[60] = None, 0.2, 0.5
    first = offered(PreviewPicks("input"), confidences)
    assert [p.path for p, _ in first.picks()] == [str(i) for i in range(100)]
    assert first.title() == "first 100 of 150 images"
    doubtful = offered(PreviewPicks("confidence"), confidences)
    assert [p.path for p, _ in doubtful.picks()][:5] == ["120", "5", "60", "0", "1"]
    assert len(doubtful.picks()) == 100 and doubtful.picks()[0][1] is None  # the unreadable: no image, its error
    assert doubtful.title() == "100 least confident of 150 images, unreadable first"
    assert offered(PreviewPicks("input"), [0.5]).title() == "1 image"


def test_the_preview_shows_unreadable_images_first_when_asked(glyph_checkpoint, user_folder, tmp_path, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(UnreadableImages):
        predict(predict_config(glyph_checkpoint, user_folder, tmp_path, "preview=true", "preview_order=confidence"))
    preview = tmp_path / "predictions_preview.png"
    assert f"Preview (31 images, unreadable and least confident first): {preview}" in caplog.messages
    assert Image.open(preview).size[0] > 1000


def test_a_ctrl_c_keeps_the_rows_so_far_and_says_how_many(glyph_checkpoint, originals, tmp_path, monkeypatch):
    folder = glyph_folder(tmp_path, originals, 5)
    monkeypatch.setattr(lenet.inference.trained_model, "prepare", failing_at(2, KeyboardInterrupt()))
    output = tmp_path / "predictions.csv"
    with pytest.raises(PredictInterrupted, match=f"^interrupted by Ctrl-C: 2 of 5 rows written to {output}$") as stop:
        predict(predict_config(glyph_checkpoint, folder, tmp_path, "batch_size=1"))
    assert stop.value.exit_status == 130
    assert [Path(row["path"]).name for row in read_rows(output)] == ["0.png", "1.png"]


class CountedPool(pool.ProcessPoolExecutor):
    started = 0

    def __init__(self, *args, **kwargs):
        CountedPool.started += 1
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("prepare", ["true", "false"])
def test_a_pool_of_workers_writes_the_rows_one_process_writes(
    glyph_checkpoint, originals, tmp_path, monkeypatch, prepare
):
    folder = glyph_folder(tmp_path, originals, 10)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    os.mkfifo(folder / "fifo.png")
    Image.new("L", (1500, 1000)).save(folder / "large.png")  # over max_megapixels
    overrides = ["max_megapixels=1", "batch_size=4", f"prepare={prepare}"]
    alone = predicted(glyph_checkpoint, folder, tmp_path / "alone", *overrides)
    monkeypatch.setattr(pool, "POOL_FROM", 2)  # a pool for these 13 files, in chunks of 3 (Python 3.11 has no batched)
    monkeypatch.setattr(pool, "CHUNK", 3)  # more chunks than workers and batches that cut across chunks
    monkeypatch.setattr(pool, "ProcessPoolExecutor", CountedPool)
    monkeypatch.setattr(CountedPool, "started", 0)
    pooled = predicted(glyph_checkpoint, folder, tmp_path / "pooled", *overrides)
    assert CountedPool.started == 1 and pooled == alone
    errors = {Path(row["path"]).name: row["error"] for row in pooled if row["error"]}
    assert list(errors) == ["corrupt.png", "fifo.png", "large.png"] and errors["fifo.png"] == "a FIFO, not a file"
    assert "more than the limit, 1 megapixels" in errors["large.png"] and len(pooled) == 13


def test_the_pools_workers_need_no_torch():
    """A worker imports the module of the function it runs (lenet.inference.input_files): torch or matplotlib there
    would cost each worker seconds."""
    code = "import sys, lenet.inference.input_files; print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.fixture(scope="module")
def many_images(originals, tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    data = glyph_file(originals)
    for index in range(1500):
        (folder / f"{index:04d}.png").write_bytes(data)
    return folder


@pytest.mark.parametrize(("stop", "status"), [("SIGINT", 130), ("SIGTERM", 143), ("SIGKILL", -9)])
def test_a_stopped_run_leaves_the_header_and_whole_rows(glyph_checkpoint, many_images, tmp_path, stop, status):
    output = tmp_path / "preds.csv"
    command = lenet_command(
        "predict", f"ckpt_path={glyph_checkpoint}", f"inputs={many_images}", f"output={output}", "batch_size=8"
    )
    # Ctrl-C raises KeyboardInterrupt only where SIGINT is not ignored: not inherited from whatever started pytest.
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (output.is_file() and output.read_text().count("\n") > 8) and time.monotonic() < deadline:
            time.sleep(0.02)  # until the first batch is written
        process.send_signal(getattr(signal, stop))
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == status, stderr
    text = output.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["path", "prediction", "confidence", "top1", "p1", "top2", "p2", "top3", "p3", "error"]
    assert text.endswith("\n") and all(len(row) == 10 and row[1] and not row[9] for row in rows[1:])
    assert 8 <= len(rows) - 1 < 1500
    assert [row[0] for row in rows[1:]] == [str(many_images / f"{index:04d}.png") for index in range(len(rows) - 1)]
    if stop != "SIGKILL":
        name = "Ctrl-C" if stop == "SIGINT" else "SIGTERM"
        assert "Traceback" not in stderr
        written = f"{len(rows) - 1} of 1500 rows written to {output}"
        assert stderr.strip().splitlines()[-1] == f"error: interrupted by {name}: {written}"
