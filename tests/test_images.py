"""Preparing a user's image (lenet.images.prepare): an odd file is one ImageError, and uneven light is not ink."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from conftest import glyph_split
from lenet.images import ImageError, ImageTooLarge, open_image, prepare
from lenet.predictor import load


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def a_stroke(dtype=np.float32) -> np.ndarray:
    """A bar, light on dark: something to classify."""
    pixels = np.zeros((60, 60), dtype)
    pixels[10:50, 26:34] = 1
    return pixels


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_scan_with_nan_or_infinite_pixels_is_an_image_error(bad):
    pixels = np.where(a_stroke() > 0, bad, 0).astype(np.float32)
    with pytest.raises(ImageError, match="^320 of its 3600 pixels are NaN or infinite$"):
        prepare(encoded(Image.fromarray(pixels, "F"), "TIFF"))


def test_a_lab_scan_is_read_by_its_lightness():
    lightness = (a_stroke() * 200 + 20).astype(np.uint8)
    neutral = Image.new("L", (60, 60), 128)
    lab = Image.merge("LAB", [Image.fromarray(lightness), neutral, neutral])
    np.testing.assert_array_equal(prepare(encoded(lab, "TIFF")), prepare(Image.fromarray(lightness)))


@pytest.mark.parametrize("mode", ["1", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "La"])
def test_every_pixel_mode_gives_an_image_or_an_image_error(mode):
    image = Image.fromarray((a_stroke() * 255).astype(np.uint8)).convert("RGB")
    try:
        image = image.convert(mode)
    except ValueError:
        image = Image.merge(mode, [image.getchannel(0)] * len(Image.new(mode, (1, 1)).getbands()))
    assert prepare(image).shape == (28, 28)


@pytest.mark.parametrize("shade", [0, 128, 255])
def test_an_image_of_one_shade_is_blank(shade):
    with pytest.raises(ImageError, match="^nothing to classify: the image is blank$"):
        prepare(Image.new("L", (64, 64), shade))


def test_an_image_above_the_pixel_cap_is_refused_from_its_header():
    """13000 x 13000 RGBA: a 657 KB PNG that takes 1.3 GB and seconds to decode."""
    png = encoded(Image.new("RGBA", (13000, 13000)), "PNG")
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="^13000x13000 pixels is more than the limit, 50 megapixels"):
        prepare(png, max_pixels=50_000_000)
    assert time.perf_counter() - start < 0.5  # a decode would take seconds


def test_a_large_jpeg_is_decoded_at_a_reduced_scale():
    jpeg = encoded(Image.new("RGB", (8000, 6000), "white"), "JPEG")
    image = open_image(jpeg)
    assert max(image.size) <= 1024 and image.size[0] / image.size[1] == pytest.approx(4 / 3, rel=0.01)


def photo(digit: np.ndarray, light: np.ndarray) -> Image.Image:
    """A light-on-dark 28x28 digit as dark ink on white paper, 7x larger on a page 1.5x that, under `light`."""
    side, page = 196, 294
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    paper = np.full((page, page), 235.0)
    top = left = (page - side) // 2
    paper[top : top + side, left : left + side] -= (235 - 40) * ink
    return Image.fromarray(np.clip(paper * light, 0, 255).astype(np.uint8)).convert("RGB")


def shadow(page: int = 294) -> np.ndarray:
    """A shadow with a soft edge over the left half of the page, at 40% of the light, crossing the digit."""
    x = np.arange(page)[None, :].repeat(page, 0)
    return 1 - 0.6 / (1 + np.exp((x - page / 2 + 20) / 6))


def flash(page: int = 294) -> np.ndarray:
    """A flash: full light in the middle, falling to 30% in the corners."""
    y, x = np.mgrid[0:page, 0:page] - page / 2
    return 1 - 0.7 * (np.hypot(y, x) / np.hypot(page / 2, page / 2)) ** 2


@pytest.mark.parametrize("light", [shadow, flash])
def test_digits_in_uneven_light_are_read_as_in_even_light(light, glyph_checkpoint):
    """Judged from the border alone, a shadow across half the page is ink, and a flash's dark corners make the
    paper look like a dark background: digits were read as 1s and 0s."""
    model = load(glyph_checkpoint)
    digits, labels = glyph_split(40, seed=11)
    even = model.probabilities(np.stack([prepare(photo(d, np.ones((294, 294)))) for d in digits])).argmax(1)
    uneven = model.probabilities(np.stack([prepare(photo(d, light())) for d in digits])).argmax(1)
    assert (even == labels).mean() >= 0.9
    assert (uneven == labels).mean() >= (even == labels).mean() - 0.05
