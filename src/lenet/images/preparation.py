"""A user's image (a photo, a scan, a drawing) prepared as its model's dataset made its images: 28x28 uint8, the
object light on black, laid out as the dataset lays out its objects. What a model sees, and what a preview shows."""

import warnings
from io import BytesIO

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin, UnidentifiedImageError
from scipy import ndimage

from lenet.frame.errors import UserError
from lenet.frame.mnist_family import LAYOUTS, Layout

SIZE = 28
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_SIDE = 1024  # larger photos are shrunk first: the object ends up 20 or 28 pixels tall whatever the start
STRIP = 2**20  # pixels: a large image is reduced this many at a time (4 MB in most modes)
MB = 2**20
I16 = ("I;16", "I;16B", "I;16L", "I;16N")  # 16-bit greyscale, as Pillow names it
# EXIF orientation -> the transposition that sets the image upright (as ImageOps.exif_transpose does)
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
MIN_CONTRAST = 24  # grey levels between background and ink below which an image counts as blank (JPEG noise: ~5)
PAPER_SIDE = 128  # the paper's level is estimated on the image shrunk to this many pixels: light varies slowly
PAPER_WINDOW = 1 / 4  # of the shorter side: wider than a stroke, narrower than a shadow or a flash's bright middle
POLARITY_SIDE = 16  # dark ink or light ink is told on an image this small
OBJECT_LEVEL = 0.2  # an object's parts fainter than this share of its brightest pixel may be left out of its crop
SPECK = 0.1  # a part of the ink with less than this share of the largest part's ink is dust, not a stroke
# Pixel modes Pillow cannot convert to grey levels, and the grey levels they hold.
GREY_CHANNEL = {
    "LAB": lambda image: image.getchannel("L"),  # CIELAB's L is lightness
    "La": lambda image: image.convert("LA"),  # premultiplied alpha: Pillow converts it only to LA
}


class ImageError(UserError):
    """An image that cannot be read or holds nothing to classify."""


class ImageTooLarge(ImageError):
    """An image with more pixels (max_megapixels) or decoded bytes (max_decoded_mb) than allowed, refused from its
    header before it is decoded."""


def prepare(
    image, layout: Layout = LAYOUTS["strokes"], max_pixels: int | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """One image as its dataset's images were made: 28x28 uint8, the object light on black.

    `image` is a path, the file's bytes, a binary file object or a PIL image; one of more than `max_pixels` pixels
    (None: Pillow's own limit) or more than `max_bytes` once decoded is refused from its header, before it is
    decoded. Greyscale (transparent pixels are background); light on dark, the background's level removed
    (`light_on_dark`); cropped to the object; scaled to fit `layout.box` keeping its aspect ratio; placed by centre
    of mass or bounding box; the brightest pixel stretched to 255, as in MNIST and Fashion-MNIST.
    """
    ink = light_on_dark(greyscale(open_image(image, max_pixels, max_bytes)), layout)
    return place(fit(crop(ink, layout), layout.box), layout)


def resize(image) -> np.ndarray:
    """What a plain script does: greyscale, squashed to 28x28. Kept to show what `prepare` is worth."""
    grey = open_image(image).convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)


def open_image(image, max_pixels: int | None = None, max_bytes: int | None = None) -> Image.Image:
    """Decoded in full, so a damaged file fails here; the first frame; at most MAX_SIDE pixels a side; upright as the
    camera was held.

    Refused from its header, before it is decoded: more than `max_pixels` pixels, or more than `max_bytes` of memory
    once decoded (`decoded_bytes`, after a JPEG's reduced scale). Shrinking costs little more than the decoded image.
    """
    try:
        if isinstance(image, Image.Image):
            image = image.copy()  # shrunk in place below: the caller's image stays as it was
        else:
            with warnings.catch_warnings():  # Pillow's decompression-bomb warning: the limit below says it better
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(BytesIO(image) if isinstance(image, bytes | bytearray) else image)
        if max_pixels and image.width * image.height > max_pixels:  # Image.open has read the header only
            raise ImageTooLarge(
                f"{image.width}x{image.height} pixels is more than the limit, {max_pixels / 1e6:g} megapixels "
                "(max_megapixels): scale the image down"
            )
        image.draft(None, (MAX_SIDE, MAX_SIDE))  # JPEG only: decode at a reduced scale, much faster
        if max_bytes and decoded_bytes(image) > max_bytes:
            raise ImageTooLarge(
                f"{image.width}x{image.height} pixels of mode {image.mode} take {decoded_bytes(image) / MB:.0f} MB "
                f"decoded, more than the limit, {max_bytes / MB:g} MB (max_decoded_mb): scale the image down"
            )
        image.load()
        orientation = image.getexif().get(ExifTags.Base.Orientation)  # read now: a shrunk copy has no EXIF
        image = shrunk(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # beyond twice Pillow's own limit, whatever max_pixels says
        raise ImageTooLarge(str(error).split(",")[0]) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (or a format Pillow cannot read)") from None
    except Exception as error:  # Pillow's decoders fail on damaged files with OSError, SyntaxError, ValueError, ...
        raise ImageError(f"cannot read it ({error})") from None
    return image.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else image


def limit_png_text(most_bytes: int) -> None:
    """Pillow keeps a PNG's text chunks (its metadata) decompressed, up to 64 MB of them: a 68 KB file costs that
    much before a pixel is decoded. lenet reads none of them. This is a setting of Pillow's: for the whole process."""
    PngImagePlugin.MAX_TEXT_MEMORY = most_bytes


def decoded_bytes(image: Image.Image) -> int:
    """The memory `image` takes once decoded: Pillow keeps a pixel in 1 byte (modes 1, L, P), 2 (16-bit greyscale)
    or 4 (every other mode, 3-band RGB included)."""
    return image.width * image.height * (1 if image.mode in ("1", "L", "P") else 2 if image.mode in I16 else 4)


def shrunk(image: Image.Image) -> Image.Image:
    """At most MAX_SIDE pixels a side, keeping the aspect ratio.

    An image of twice that or more is first reduced by a whole factor (a box filter), a strip of rows at a time: at
    once, Pillow's reduce copies an RGBA or LA image whole (to premultiply its alpha) and cannot reduce 16-bit
    greyscale at all (so thumbnail() refused those from 4096 pixels a side up). What is left, under 2*MAX_SIDE, is
    resized in one piece, in a mode whose pixels average (thumbnail() averages palette indices of mode PA).
    """
    if max(image.size) <= MAX_SIDE:
        return image
    factor = max(image.size) // MAX_SIDE
    image = reduced(image, factor) if factor >= 2 else reducible(image)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return image


def reduced(image: Image.Image, factor: int) -> Image.Image:
    """`image` reduced `factor` times, a strip of about STRIP pixels at a time, so no full-size copy is ever made."""
    width, height = image.size
    rows = factor * max(1, STRIP // (width * factor))  # whole blocks of factor x factor pixels in each strip
    whole = None
    for top in range(0, height, rows):
        strip = reducible(image.crop((0, top, width, min(top + rows, height)))).reduce(factor)
        if whole is None:
            whole = Image.new(strip.mode, (-(-width // factor), -(-height // factor)))
        whole.paste(strip, (0, top // factor))
    return whole


def reducible(strip: Image.Image) -> Image.Image:
    """`strip` in a mode whose pixels Pillow's reduce averages: grey levels (and alpha), not bits, palette indices or
    a colour keyed as transparent. Grey is all `greyscale` keeps; bilevel and palette images shrink faster as grey."""
    if strip.mode in I16:
        return strip.convert("I")
    if strip.mode == "PA" or "transparency" in strip.info:
        return strip.convert("LA")
    if strip.mode in ("1", "P"):
        return strip.convert("L")
    return strip


def greyscale(image: Image.Image) -> np.ndarray:
    """Float grey levels 0..255; transparent pixels become background, whatever colour they hide."""
    if image.mode in ("I", "F", *I16):  # 16-bit and float scans: rescale to 0..255
        return _rescaled(np.asarray(image, dtype=np.float32))
    try:
        if image.mode in GREY_CHANNEL:
            image = GREY_CHANNEL[image.mode](image)
        if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
            return np.asarray(image.convert("L"), dtype=np.float32)
        rgba = image.convert("RGBA")
    except ValueError as error:  # a mode Pillow cannot convert ("conversion from X to L not supported")
        raise ImageError(f"its pixels ({image.mode}) cannot be read as grey levels ({error})") from None
    grey = np.asarray(rgba.convert("L"), dtype=np.float32)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    # Lay it on the shade opposite to its visible pixels: black ink on white, white ink on black.
    ink = float((grey * alpha).sum() / max(float(alpha.sum()), 1e-6))
    background = 255.0 if ink < 128 else 0.0
    return grey * alpha + background * (1 - alpha)


def _rescaled(grey: np.ndarray) -> np.ndarray:
    """A 16-bit or float scan's values stretched to 0..255."""
    if bad := int((~np.isfinite(grey)).sum()):
        raise ImageError(f"{bad} of its {grey.size} pixels are NaN or infinite")
    low, high = float(grey.min()), float(grey.max())
    return (grey - low) * (255 / (high - low or 1))


def light_on_dark(grey: np.ndarray, layout: Layout) -> np.ndarray:
    """The object light on black, its background at 0, whichever way round it was."""
    return strokes_off_paper(grey) if layout.strokes else object_off_border(grey)


def object_off_border(grey: np.ndarray) -> np.ndarray:
    """An object that fills its frame (a garment): only the border shows the background, inverted when light."""
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    background = float(np.median(border))
    if background > 127.5:
        grey, background = 255 - grey, 255 - background
    return np.clip(grey - background, 0, None)


def strokes_off_paper(grey: np.ndarray) -> np.ndarray:
    """Thin strokes against the paper's level around them, so that a shadow across the page or a flash's fall-off
    is not taken for ink.

    The paper is what a morphological closing (dark ink) or opening (light ink) leaves of the image: every stroke
    narrower than the window filled in with the paper beside it, while the edge of a shadow wider than the window
    stays where it is. Light varies slowly, so this is done on the image shrunk to PAPER_SIDE, then scaled back.
    """
    small = _shrunk(grey, PAPER_SIDE)
    window = max(3, round(min(small.shape) * PAPER_WINDOW) | 1)
    dark_ink = _dark_ink(small)
    paper = (ndimage.grey_closing if dark_ink else ndimage.grey_opening)(small, size=window, mode="nearest")
    paper = np.asarray(Image.fromarray(paper).resize(grey.shape[::-1], Image.Resampling.BILINEAR))
    if not dark_ink:
        return np.clip(grey - paper, 0, None)
    # Light falls on ink and paper alike: in a shadow both darken by the same factor, their ratio stays.
    return np.clip(255 * (paper - grey) / np.maximum(paper, 1), 0, None)


def _dark_ink(grey: np.ndarray) -> bool:
    """Whether the strokes are darker than the paper: whether the image departs further below its local median
    (over a third of the image, which strokes never fill) than above it."""
    small = _shrunk(grey, POLARITY_SIDE)
    window = round(min(small.shape) / 3) | 1
    local = ndimage.median_filter(small, size=window, mode="nearest")
    below, above = (
        np.clip(local - small - MIN_CONTRAST / 2, 0, None),
        np.clip(small - local - MIN_CONTRAST / 2, 0, None),
    )
    return float(below.sum()) >= float(above.sum())


def _shrunk(grey: np.ndarray, side: int) -> np.ndarray:
    """Grey levels averaged down to at most `side` pixels on the longer side."""
    height, width = grey.shape
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(grey.astype(np.float32)).resize(size, Image.Resampling.BOX))


def crop(ink: np.ndarray, layout: Layout) -> np.ndarray:
    """The bounding box of what is brighter than Otsu's threshold: ink apart from paper texture and shadows.

    An object's threshold is at most OBJECT_LEVEL of its brightest pixel: Otsu alone splits a garment with a bright
    print (or a bag with a light handle) between the two, and keeps the print. Measured on 3,000 Fashion-MNIST test
    images written as files, a model trained on the originals: 87.9% of them right with Otsu alone, 88.3% so (88.7%
    on the originals); on them photographed in even light 88.8% and 89.1%."""
    if ink.max() < MIN_CONTRAST:
        raise ImageError("nothing to classify: the image is blank")
    threshold = otsu_threshold(ink)
    mask = ink > (threshold if layout.strokes else min(threshold, OBJECT_LEVEL * float(ink.max())))
    if layout.strokes:
        mask = without_specks(mask, ink)
        ink = np.where(mask, ink, 0)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def without_specks(mask: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """The mask without what lies beside the strokes: dust and noise (parts with less than SPECK of the ink of the
    largest part; a digit's own parts, such as the bar of a 5 drawn apart, hold far more), and parts that lie wholly
    along the border, where the paper's level is judged from one side only (strokes_off_paper)."""
    parts, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count < 2:
        return mask
    mass = np.bincount(parts.ravel(), weights=ink.ravel(), minlength=count + 1)
    band = max(1, round(min(mask.shape) * PAPER_WINDOW / 2))
    inside = np.zeros(count + 1, dtype=bool)
    inside[np.unique(parts[band:-band, band:-band])] = True
    kept = (mass >= SPECK * mass[1:].max()) & inside
    kept[0] = False  # the background
    return kept[parts] if kept.any() else mask


def otsu_threshold(ink: np.ndarray) -> float:
    """The grey level that best splits the pixels in two groups (the largest between-class variance)."""
    counts = np.bincount(ink.astype(np.uint8).ravel(), minlength=256)  # ink is 0..255: whole levels suffice
    levels = np.arange(256)
    below = np.cumsum(counts)[:-1]
    above = counts.sum() - below
    mass_below = np.cumsum(counts * levels)[:-1]
    total = (counts * levels).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below, mean_above = mass_below / below, (total - mass_below) / above
        spread = below * above * (mean_below - mean_above) ** 2
    if np.isnan(spread).all():  # one grey level only: everything above it is ink
        return float(ink.min()) - 0.5
    return float(np.nanargmax(spread)) + 0.5  # between level t (below) and t + 1 (above)


def fit(ink: np.ndarray, box: int) -> np.ndarray:
    """Scaled so its longer side is `box` pixels, keeping the aspect ratio (anti-aliased when shrinking)."""
    height, width = ink.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))


def place(ink: np.ndarray, layout: Layout) -> np.ndarray:
    """Put in the 28x28 frame, centred as `layout` says; the brightest pixel stretched to 255."""
    height, width = ink.shape
    if layout.by_mass:
        total = ink.sum()
        centre_y = (ink.sum(axis=1) * np.arange(height)).sum() / total
        centre_x = (ink.sum(axis=0) * np.arange(width)).sum() / total
        top = min(max(round(SIZE / 2 - centre_y), 0), SIZE - height)
        left = min(max(round(SIZE / 2 - centre_x), 0), SIZE - width)
    else:
        top, left = (SIZE - height) // 2, (SIZE - width) // 2
    frame = np.zeros((SIZE, SIZE), dtype=np.float32)
    frame[top : top + height, left : left + width] = ink
    return np.clip(np.rint(frame * (255 / frame.max())), 0, 255).astype(np.uint8)
