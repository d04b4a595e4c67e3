"""Measures of a photo's quality, each a number a person can read, taken on the field of view as the
network receives it: the crop (before any enhancement), inside the field, reduced by a whole factor
to about ``QUALITY_SIDE`` px (a smaller cache as it is).

- ``brightness``: the median grey level of the field, 0-255 (a well-exposed fundus is ~60-150);
- ``overexposed``: the share of the field burnt out, in % (a pixel with a channel at 250 or more);
- ``focus``: the fine detail, in % of the brightness: the standard deviation of the grey image's
  Laplacian (the classic focus measure: vessel edges, texture, lesions) over the median grey
  level; a blurred photo has little of it;
- ``contrast``: the spread of the field's grey levels, in % of the brightness (their standard
  deviation over their median): a hazy photo (cataract, a dirty lens) has little.

The grader refuses a photo whose measure lies beyond the thresholds fitted on the photos it
learnt from (``gradability``). No torch here: every grader measures photos with this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

# The crop is measured at about this side (box-reduced by a whole factor from larger caches): the
# measures mean much the same for every cache of at least this size, and cost ~1 ms.
QUALITY_SIDE = 128
OVEREXPOSED_LEVEL = 250  # a channel this bright has lost its detail to the sensor's ceiling
# The 3x3 Laplacian, offset to stay in PIL's 0-255 (inside a field it stays far from both ends).
_LAPLACIAN = ImageFilter.Kernel((3, 3), [0, 1, 0, 1, -4, 1, 0, 1, 0], scale=1, offset=128)
# The field's outermost pixels (at the measured size) are left out of focus and contrast: the
# crop's black rim would count as detail there.
RIM_PIXELS = 3
QUALITY_MEASURES = ("brightness", "overexposed", "focus", "contrast")


@dataclass(frozen=True)
class PhotoQuality:
    """The measures of one photo (see the module's docstring)."""

    brightness: float
    overexposed: float
    focus: float
    contrast: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def values(self) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in QUALITY_MEASURES)


def measure(crop: Image.Image, field: np.ndarray, inner: np.ndarray) -> PhotoQuality:
    """The measures of a crop (RGB) inside ``field``; focus and contrast inside ``inner``, the
    field less its outermost ``RIM_PIXELS`` (boolean masks of the crop's shape; ``prepare``
    reduces the cache's crop by ``reduction`` first)."""
    if not inner.any():  # a field with no pixels: it cannot happen to a found field
        return PhotoQuality(0.0, 0.0, 0.0, 0.0)
    grey_image = crop.convert("L")
    levels = np.asarray(grey_image)
    # The median grey level from the histogram: a sort of the field costs more than the rest.
    counts = np.cumsum(np.bincount(levels[field], minlength=256))
    brightness = float(np.searchsorted(counts, (counts[-1] + 1) / 2))
    grey = levels.astype(np.float32)
    # max(R, G, B) through PIL: numpy's max over a last axis of 3 is ~20x slower.
    red, green, blue = crop.split() if crop.mode == "RGB" else (grey_image,) * 3
    brightest = np.asarray(ImageChops.lighter(ImageChops.lighter(red, green), blue))
    overexposed = 100.0 * float((brightest[field] >= OVEREXPOSED_LEVEL).mean())
    scale = max(brightness, 1.0)  # a black field: no division by zero
    laplacian = np.asarray(grey_image.filter(_LAPLACIAN), dtype=np.float32)
    focus = 100.0 * float(laplacian[inner].std()) / scale
    contrast = 100.0 * float(grey[inner].std()) / scale
    return PhotoQuality(round(brightness, 4), round(overexposed, 4), round(focus, 4), round(contrast, 4))


def reduction(cache_size: int) -> int:
    """The whole factor a crop of ``cache_size`` is reduced by to be measured: to about
    ``QUALITY_SIDE`` px (from 128 to 255 px), never enlarged."""
    return max(1, cache_size // QUALITY_SIDE)
