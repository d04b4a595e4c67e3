"""The one place a photo becomes the pixels a network sees: preprocess writes these into the
processed cache, and predict and the served model prepare every new photo with them.

A photo is decoded at the smallest JPEG scale that keeps its field at least the cache's size, its
field of view is found (``fov``), the square around the field's circle is resized to the cache
size with everything outside the field black (so frames, text and bars never reach the network),
optionally enhanced (Ben Graham), and encoded as the cache's JPEG. No torch here.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pipeline.catalog import ENHANCEMENTS, NOT_A_FUNDUS, UNREADABLE
from pipeline.data.fov import FieldOfView, NotAFundusError, crop_field, crop_mask, find_field_of_view
from pipeline.data.photos import PhotoSource, decode, describe, load_rgb
from pipeline.data.quality import QUALITY_MEASURES, RIM_PIXELS, PhotoQuality, measure, reduction
from pipeline.errors import DataError

log = logging.getLogger(__name__)

CACHE_JPEG_QUALITY = 95  # q95 decodes ~60x faster than the raw photos and keeps lesion detail
# Ben Graham's recipe, in units of the fundus radius: the blur's sigma, and the circle kept (his
# rim mask hides the disc edge, where the local average mixes in the black background).
_BEN_GRAHAM_SIGMA = 1 / 30
_BEN_GRAHAM_RIM = 0.9


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo as the processed cache holds it, and what was found on the way."""

    jpeg: bytes  # the cache's JPEG file
    source_size: tuple[int, int]  # the photo's own (width, height)
    field: FieldOfView  # its field of view, in the photo's own pixels
    quality: PhotoQuality  # measured on the crop, before any enhancement


def find_field(source: PhotoSource, image_size: int) -> tuple[Image.Image, FieldOfView, tuple[int, int]]:
    """The photo decoded with its field at least ``image_size`` across, the field (in the decoded
    image's pixels) and the photo's own size.

    Raises:
        DataError: naming the photo when it cannot be read, or holds no fundus (``NotAFundusError``).
    """
    img, source_size = decode(source, (image_size, image_size))
    field = _field_of(source, img)
    if 2 * field.radius < image_size and img.size != source_size:
        # The reduced decode left the field smaller than the target (a fundus small in its frame):
        # decode again at the smallest scale that keeps it >= image_size, the field scaled along.
        scale = image_size / (2 * field.radius)
        finer, _ = decode(source, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        field = field.scaled(finer.width / img.width, finer.height / img.height)
        img = finer
    return img, field, source_size


def _field_of(source: PhotoSource, img: Image.Image) -> FieldOfView:
    try:
        return find_field_of_view(img)
    except NotAFundusError as exc:
        raise NotAFundusError(f"{describe(source)}: {exc}") from None


def crop_and_resize(source: PhotoSource, image_size: int) -> tuple[Image.Image, FieldOfView, tuple[int, int]]:
    """The field of ``source`` cropped square (black outside it) and resized; also the field in
    the photo's own pixels, and the photo's own size."""
    fundus, field, source_size, _ = _cropped(source, image_size)
    return fundus, field, source_size


def _cropped(source: PhotoSource, image_size: int) -> tuple[Image.Image, FieldOfView, tuple[int, int], PhotoQuality]:
    img, field, source_size = find_field(source, image_size)
    fundus = crop_field(img, field, image_size)
    return (fundus, field.scaled(source_size[0] / img.width, source_size[1] / img.height), source_size,
            photo_quality(fundus, field))


def photo_quality(fundus: Image.Image, field: FieldOfView) -> PhotoQuality:
    """``quality.measure`` of ``crop_field``'s crop of ``field`` (any coordinates: the crop's
    circle fills it), reduced by ``quality.reduction``."""
    factor = reduction(fundus.width)
    reduced = fundus.reduce(factor) if factor > 1 else fundus
    side = reduced.width  # reduce() rounds up: a 513 px crop becomes 257 px
    return measure(reduced, crop_mask(field, side), crop_mask(field, side, inset=RIM_PIXELS))


def ben_graham(img: Image.Image) -> Image.Image:
    """Ben Graham's preprocessing (Kaggle DR 2015) of a square fundus crop whose disc fills it.

    Subtracts the local average colour, ``4 * img - 4 * blur(img, sigma = radius / 30) + 128``,
    which evens out lighting and pigment and leaves lesions and vessels on a grey field; pixels
    outside 0.9 of the radius become black.
    """
    radius = img.width / 2  # the crop scales every disc to the same radius: the image's half side
    blurred = img.filter(ImageFilter.GaussianBlur(radius * _BEN_GRAHAM_SIGMA))
    pixels = np.asarray(img, dtype=np.int16)
    out = np.clip(4 * pixels - 4 * np.asarray(blurred, dtype=np.int16) + 128, 0, 255).astype(np.uint8)
    # Distances from pixel centres to the centre of the image.
    yy, xx = np.ogrid[:img.height, :img.width]
    outside = (xx + 0.5 - img.width / 2) ** 2 + (yy + 0.5 - img.height / 2) ** 2 > (_BEN_GRAHAM_RIM * radius) ** 2
    out[outside] = 0
    return Image.fromarray(out)


def cache_image(source: PhotoSource, cache_size: int, enhance: str = "none") -> PreparedPhoto:
    """What the processed cache holds for a photo: the JPEG of its cropped, resized (and with
    ``enhance``, enhanced) field, with the photo's size, field of view and quality measures.

    Raises:
        DataError: naming the photo when it cannot be read; ``NotAFundusError`` when it holds no
            fundus.
    """
    if enhance not in ENHANCEMENTS:
        raise ValueError(f"enhance={enhance!r} is not supported; choose one of {', '.join(ENHANCEMENTS)}")
    fundus, field, source_size, quality = _cropped(source, cache_size)
    if enhance == "ben_graham":
        fundus = ben_graham(fundus)
    buffer = io.BytesIO()
    fundus.save(buffer, format="JPEG", quality=CACHE_JPEG_QUALITY)
    return PreparedPhoto(buffer.getvalue(), source_size, field, quality)


def cached_pixels(cache_jpeg: bytes | str | Path, image_size: int) -> np.ndarray:
    """A processed-cache image as the network receives it: resized to ``image_size`` square
    (Pillow's bilinear, as the eval preset's resize does to a PIL image), uint8 (H, W, 3)."""
    img = load_rgb(cache_jpeg)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def network_input(source: PhotoSource, cache_size: int, image_size: int, enhance: str = "none"
                  ) -> tuple[np.ndarray, PhotoQuality]:
    """A new photo as the network sees it: exactly the pixels of its processed-cache image (see
    ``cache_image``) at the network's ``image_size``, uint8 (H, W, 3); and its quality measures.
    Every grader (torch or ONNX) prepares photos with this.

    Raises:
        DataError: naming the photo when it cannot be read (``NotAFundusError``: it holds no fundus).
    """
    prepared = cache_image(source, cache_size, enhance)
    return cached_pixels(prepared.jpeg, image_size), prepared.quality


def network_input_or_refused(source: PhotoSource, cache_size: int, image_size: int, enhance: str = "none",
                             name: str = "") -> tuple[np.ndarray, np.ndarray, str]:
    """``network_input`` with the measures as an array and "" for the reason to refuse it; or, for a
    photo with no fundus or that cannot be read, a black image, zero measures and the reason
    (``refusal_reason``). A bad photo is logged (after ``name``, such as its row), never raised:
    it must not stop the others."""
    try:
        pixels, quality = network_input(source, cache_size, image_size, enhance)
        return pixels, np.asarray(quality.values(), dtype=np.float64), ""
    except DataError as exc:
        log.warning("%s%s", f"{name}: " if name else "", exc)
        return (np.zeros((image_size, image_size, 3), np.uint8), np.zeros(len(QUALITY_MEASURES)),
                refusal_reason(exc))


def refusal_reason(error: DataError) -> str:
    """The grader's reason to refuse a photo ``cache_image`` could not prepare: no fundus in it, or
    a file it could not read (``catalog.UNGRADABLE_REASONS``)."""
    return NOT_A_FUNDUS if isinstance(error, NotAFundusError) else UNREADABLE


def blank_cache_image(cache_size: int) -> bytes:
    """The cache's stand-in for a photo refused before the network (black, as the grader's own)."""
    buffer = io.BytesIO()
    Image.new("RGB", (cache_size, cache_size)).save(buffer, format="JPEG", quality=CACHE_JPEG_QUALITY)
    return buffer.getvalue()


def warm_up() -> None:
    """Prepares a small drawn fundus once: the first photo a process prepares also pays for lazy
    imports and library set-up (~80 ms here), which worker processes forked after this inherit."""
    side = 96
    ys, xs = np.mgrid[0:side, 0:side]
    disc = np.zeros((side, side, 3), np.uint8)
    disc[(xs + 0.5 - side / 2) ** 2 + (ys + 0.5 - side / 2) ** 2 <= (0.45 * side) ** 2] = (190, 80, 40)
    buffer = io.BytesIO()
    Image.fromarray(disc).save(buffer, format="JPEG")
    cache_image(buffer.getvalue(), 64)
