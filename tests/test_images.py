"""Preparing a user's image (lenet.images.preparation.prepare): an odd file is one ImageError, and uneven light is
not ink."""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import ExifTags, Image

from conftest import glyph_split
from lenet.images.preparation import ImageError, ImageTooLarge, open_image, prepare
from lenet.inference.model_files import load

MB = 2**20


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def a_stroke(dtype=np.float32, width: int = 60) -> np.ndarray:
    """A bar, light on dark: something to classify."""
    pixels = np.zeros((60, width), dtype)
    pixels[10:50, width // 2 - 4 : width // 2 + 4] = 1
    return pixels


PNG_COLOUR_TYPES = {"L": (0, 1), "RGBA": (6, 4)}  # mode -> (PNG colour type, channels)


def bar_png(side: int, mode: str = "L", bits: int = 8) -> bytes:
    """A side x side PNG, black but for a white bar down its middle third. Compressed fast (zlib's level 1, Pillow's
    encoder takes seconds for this many pixels): about 230 times smaller than decoded."""
    colour_type, channels = PNG_COLOUR_TYPES[mode]
    size = channels * bits // 8
    black = bytes(1 + size * side)  # each row: its filter byte (0: none), then the pixels
    bar = bytearray(black)
    bar[1 + size * (side // 3) : 1 + size * (2 * side // 3)] = b"\xff" * (size * (2 * side // 3 - side // 3))
    compressor = zlib.compressobj(1)
    rows = (bytes(bar) if side // 6 <= y < 5 * side // 6 else black for y in range(side))
    data = b"".join(map(compressor.compress, rows)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, bits, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


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


@pytest.mark.parametrize("width", [60, 1500, 4100], ids=["small", "shrunk whole", "shrunk in strips"])
@pytest.mark.parametrize(
    "mode", ["1", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F", "LA", "PA", "La"]
)
def test_every_pixel_mode_gives_an_image_or_an_image_error(mode, width):
    """Shrunk, a PA image's palette indices were averaged (blank); from 4096 pixels wide Pillow's thumbnail() reduces
    the image first, which it cannot do in 16-bit grey ("image has wrong mode")."""
    stroke = a_stroke(width=width)
    if mode == "I;16":
        image = Image.fromarray((stroke * 65535).astype(np.uint16))
    else:
        image = Image.fromarray((stroke * 255).astype(np.uint8)).convert("RGB")
        try:
            image = image.convert(mode)
        except ValueError:
            image = Image.merge(mode, [image.getchannel(0)] * len(Image.new(mode, (1, 1)).getbands()))
    assert prepare(image).shape == (28, 28)


def test_a_16_bit_greyscale_png_of_5000_pixels_and_more_is_read_as_its_8_bit_copy():
    """Refused before ("image has wrong mode"), while 4000 pixels worked."""
    np.testing.assert_allclose(prepare(bar_png(5200, bits=16)), prepare(bar_png(5200, bits=8)), atol=2)


def test_an_image_is_read_upright_as_its_exif_orientation_says():
    upright = np.zeros((60, 90), np.uint8)
    upright[5:30, 10:20] = 255  # a bar in the top left corner of a landscape frame: wrong any other way round
    for side in (90, 4500):  # shrunk in place, or in strips (a new image, without the EXIF)
        image = Image.fromarray(upright).resize((side, side * 60 // 90))
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 6  # stored turned a quarter to the left: the viewer turns it right
        sideways = open_image(encoded(image.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif))
        expected = open_image(encoded(image, "PNG"))
        assert sideways.size == expected.size
        np.testing.assert_allclose(np.asarray(sideways), np.asarray(expected), atol=1)


def test_an_image_above_the_pixel_cap_is_refused_from_its_header():
    """13000 x 13000 RGBA: a PNG of 657 KB (3 MB here, compressed fast) that takes 676 MB and seconds to decode."""
    png = bar_png(13000, "RGBA")
    Image.core.reset_stats()
    with pytest.raises(ImageTooLarge, match="^13000x13000 pixels is more than the limit, 50 megapixels"):
        prepare(png, max_pixels=50_000_000)
    assert Image.core.get_stats()["new_count"] == 0, "decoded: Pillow made an image"


def test_an_image_that_would_take_more_memory_than_max_bytes_is_refused_from_its_header():
    """The issue's 7071 x 7071 16-bit RGBA PNG (under 50 megapixels) takes 191 MB decoded; in 16-bit grey, 95 MB."""
    Image.core.reset_stats()
    with pytest.raises(ImageTooLarge) as refused:
        prepare(bar_png(7071, "RGBA", bits=16), max_pixels=50_000_000, max_bytes=100 * MB)
    assert str(refused.value) == (
        "7071x7071 pixels of mode RGBA take 191 MB decoded, more than the limit, 100 MB (max_decoded_mb): "
        "scale the image down"
    )
    assert Image.core.get_stats()["new_count"] == 0, "decoded: Pillow made an image"
    assert prepare(bar_png(7071, "L", bits=16), max_pixels=50_000_000, max_bytes=100 * MB).shape == (28, 28)


MEASURE_PEAK = """
import re, sys
from pathlib import Path
from lenet.images.preparation import prepare
def peak():  # this process's highest RSS; ru_maxrss would count the parent's, from before exec
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
png = Path(sys.argv[1]).read_bytes()
before = peak()
prepare(png)
print(peak() - before)
"""


def test_a_large_image_costs_about_its_decoded_size(tmp_path):
    """The issue's 7071 x 7071 16-bit RGBA PNG: 191 MB decoded, but +415 MB at the peak, when the orientation step
    copied it whole and thumbnail() copied it again to premultiply its alpha. Measured in a process of its own."""
    path = tmp_path / "large.png"
    path.write_bytes(bar_png(7071, "RGBA", bits=16))
    decoded = 7071 * 7071 * 4
    peak = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(path)], capture_output=True, text=True, check=True)
    assert int(peak.stdout) < 1.25 * decoded, f"peak +{int(peak.stdout) / MB:.0f} MB for {decoded / MB:.0f} MB decoded"


def test_a_large_jpeg_is_decoded_at_a_reduced_scale():
    """Its limit on decoded bytes is checked at that scale: 192 MB in full, 12 MB as decoded."""
    jpeg = encoded(Image.new("RGB", (8000, 6000), "white"), "JPEG")
    image = open_image(jpeg, max_bytes=50 * MB)
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
