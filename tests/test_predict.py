"""lenet.predict and the image preparation of lenet.classifier, on files made as users' photos and scans would be."""

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config, glyph_split, lenet_command
from lenet.classifier import LAYOUTS, ImageError, ModelError, load, prepare
from lenet.config import ConfigError
from lenet.predict import InputError, predict


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
    prepared = np.stack([prepare(VARIANTS[variant](image)[0], classifier.layout) for image in images])
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
    image = prepare(encoded(inverted(Image.fromarray(shirt)), "PNG"), LAYOUTS["fashion_mnist"])
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
        predict(cfg)


def test_a_missing_path_is_one_line_and_a_non_zero_exit(glyph_checkpoint, tmp_path):
    command = lenet_command("predict", f"ckpt_path={glyph_checkpoint}", "inputs=missing.png")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: inputs=missing.png: no such file or folder"


@pytest.mark.parametrize("module", ["predict", "export", "serve"])
def test_help_and_cfg_need_no_torch(module):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['lenet.{module}', '--cfg', 'job']\n"
        "try:\n"
        f"    runpy.run_module('lenet.{module}', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False False", result.stderr
