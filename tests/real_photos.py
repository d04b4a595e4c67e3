"""Real pictures with known answers: scikit-image's fundus photograph, the hard cases derived from it
(``photo_defects``, so their field of view is known from the transform), and its non-fundus pictures.

``skimage.data.retina()`` (CC0) is a 1411x1411 photo of a normal right eye: a full round field on
black, with a small tab of the camera's notch at the top right, outside the circle.

Its field was measured once by hand, independently of the code under test: along 24 rays from
(704, 703) every 15 degrees, the brightest channel was sampled (bilinear, every 0.25 px) from 600
to 720 px out, and the edge taken where the profile crosses halfway between the retina's level
(median at 640-670 px) and the black's (median beyond 705 px). The ray at 315 degrees runs into
the notch and was left out; a least-squares circle through the other 23 points has a largest
residual of 1.1 px (0.16% of the radius). In pixel-edge coordinates (a pixel's centre at +0.5):
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import skimage.data
from PIL import Image

from pipeline.data import photo_defects as defects
from pipeline.data.fov import FieldOfView

RETINA_SIZE = 1411
RETINA_FIELD = FieldOfView(704.71, 703.50, 695.19, 0.0, 0.0, float(RETINA_SIZE), float(RETINA_SIZE))
# The edge points of that measurement (pixel indices along each ray), for the record.
RETINA_EDGE_POINTS = (
    (1398.7, 703.0), (1374.6, 882.7), (1306.0, 1050.6), (1195.7, 1194.7), (1051.9, 1305.6), (884.1, 1375.2),
    (704.0, 1398.6), (524.0, 1374.8), (356.1, 1305.6), (212.3, 1194.7), (102.5, 1050.3), (33.3, 882.7),
    (9.5, 703.0), (33.5, 523.3), (102.6, 355.8), (212.6, 211.6), (356.5, 101.2), (523.8, 30.7),
    (704.0, 7.0), (884.2, 30.4), (1051.8, 100.5), (1305.9, 355.5), (1375.1, 523.2),
)

# Pictures of other things that ship with scikit-image: a grader must refuse each.
NON_FUNDUS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "text", "checkerboard")


def retina() -> defects.Photo:
    return defects.Photo.of(skimage.data.retina(), RETINA_FIELD)


# Each hard case: what clinics' photos do, applied to the real photo; the truth comes with it.
HARD_CASES: dict[str, Callable[[defects.Photo], defects.Photo]] = {
    "as published": lambda p: p,
    "grey frame": lambda p: defects.on_frame(p, defects.DARK_GREY, 0.15),
    "coloured frame": lambda p: defects.on_frame(p, defects.NAVY, 0.15),
    "text burnt into a grey frame": lambda p: defects.burn_text(defects.on_frame(p, defects.DARK_GREY, 0.35)),
    "white bar over a clipped edge": lambda p: defects.edge_bar(defects.clip(p, top=0.12, bottom=0.12), "bottom", 0.06),
    "white bar in the margin": lambda p: defects.edge_bar(defects.on_frame(p, (0, 0, 0), 0.2), "right", 0.08),
    "bright corner marker": lambda p: defects.corner_marker(defects.on_frame(p, (0, 0, 0), 0.15)),
    "clipped field on a grey band with a marker": lambda p: defects.corner_marker(
        defects.on_frame(defects.clip(p, top=0.1, bottom=0.1, left=0.05), defects.DARK_GREY, 0.3), "top right"),
    "clipped top and bottom": lambda p: defects.clip(p, top=0.15, bottom=0.15),
    "clipped at one side": lambda p: defects.clip(p, left=0.2),
    "periphery darkened toward the rim": lambda p: defects.dark_rim(p, 0.08),
    "whole photo darkened": lambda p: defects.darken(p, 0.15),
    "small fundus in a large frame": lambda p: defects.small_in_frame(p, 0.3, 1.5),
    "rotated and shifted": lambda p: defects.rotate_shift(p, 17.0, (0.1, -0.06)),
}


def hard_case(name: str) -> defects.Photo:
    return HARD_CASES[name](retina())


def non_fundus(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()
