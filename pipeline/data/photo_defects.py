"""What clinics' photos do to a fundus photo, applied to one whose field of view is known.

Real exports put the round field on grey or coloured frames, burn text into them, add bars along
an edge and markers in a corner, clip the field, or come out dark; each function here does one of
these to a photo and returns the new photo with its field of view worked out from the transform,
and the mask of what it added that is not retina (text, bars, markers). The tests derive their
hard cases from a real photograph with these, and the synthetic generator gives a share of its
photos one of them, so the demo meets them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.data.fov import FieldOfView

# Grey levels of the frames and bars the defects paint.
DARK_GREY = (46, 46, 46)
NAVY = (18, 28, 70)
WHITE = (255, 255, 255)
MARKER_YELLOW = (250, 230, 40)


@dataclass(frozen=True)
class Photo:
    """A photo, its field of view, and the mask of the non-retina things painted onto it."""

    pixels: np.ndarray  # (height, width, 3) uint8
    field: FieldOfView
    foreign: np.ndarray  # (height, width) bool: text, bars, markers

    @classmethod
    def of(cls, pixels: np.ndarray, field: FieldOfView) -> Photo:
        return cls(pixels, field, np.zeros(pixels.shape[:2], bool))

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    def field_mask(self) -> np.ndarray:
        """Pixels inside the true field (circle and cuts, no margin)."""
        height, width = self.pixels.shape[:2]
        return self.field.mask(width, height, margin=0.0)


def _moved(field: FieldOfView, dx: float, dy: float, width: int, height: int) -> FieldOfView:
    """``field`` in a photo whose content moved by (dx, dy), now ``width`` x ``height``: cuts
    that were the old border stay cuts where they were, others become the new border."""
    return FieldOfView(field.x + dx, field.y + dy, field.radius,
                       max(0.0, field.left + dx), max(0.0, field.top + dy),
                       min(float(width), field.right + dx), min(float(height), field.bottom + dy))


def on_frame(photo: Photo, colour: tuple[int, int, int] = DARK_GREY, margin: float = 0.0) -> Photo:
    """The field on a frame of ``colour`` instead of its surround, the photo widened by ``margin``
    radii of frame on every side."""
    pad = round(margin * photo.field.radius)
    width, height = photo.size[0] + 2 * pad, photo.size[1] + 2 * pad
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = colour
    f = photo.field
    # The old border becomes a cut where it cut the field: the frame lies beyond it now.
    field = FieldOfView(f.x + pad, f.y + pad, f.radius, f.left + pad, f.top + pad, f.right + pad, f.bottom + pad)
    canvas[pad:pad + photo.size[1], pad:pad + photo.size[0]] = photo.pixels
    foreign = np.zeros((height, width), bool)
    foreign[pad:pad + photo.size[1], pad:pad + photo.size[0]] = photo.foreign
    framed = Photo(canvas, field, foreign)
    canvas[~framed.field_mask()] = colour
    return framed


def burn_text(photo: Photo, lines: tuple[str, ...] = ("OD  2019-03-04  14:22", "ID 000000  CAM-2"),
              colour: tuple[int, int, int] = WHITE, height_share: float = 0.035) -> Photo:
    """``lines`` of text burnt into the frame's top-left and bottom-right corners, each line
    ``height_share`` of the photo's height tall.

    Raises:
        ValueError: when the text would reach into the field (the frame is too narrow for it).
    """
    image = photo.image
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, round(height_share * photo.size[1])))
    mask = Image.new("L", image.size)
    mask_draw = ImageDraw.Draw(mask)
    pad = round(0.01 * photo.size[0]) + 2
    text = "\n".join(lines)
    for anchor, xy in (("la", (pad, pad)), ("rd", (photo.size[0] - pad, photo.size[1] - pad))):
        align = "left" if anchor == "la" else "right"
        draw.multiline_text(xy, text, fill=colour, font=font, anchor=anchor, align=align)
        mask_draw.multiline_text(xy, text, fill=255, font=font, anchor=anchor, align=align)
    painted = np.asarray(mask) > 0
    if (painted & photo.field_mask()).any():
        raise ValueError("the text reaches into the field: widen the frame")
    return Photo(np.asarray(image).copy(), photo.field, photo.foreign | painted)


def edge_bar(photo: Photo, edge: str, thickness: float, colour: tuple[int, int, int] = WHITE) -> Photo:
    """A bar of ``colour`` along the photo's ``edge``, ``thickness`` radii thick, across the
    whole side; where it covers the field, the field ends at the bar."""
    pixels, field = photo.pixels.copy(), photo.field
    width, height = photo.size
    depth = round(thickness * field.radius)
    region = {"top": np.s_[:depth, :], "bottom": np.s_[height - depth:, :],
              "left": np.s_[:, :depth], "right": np.s_[:, width - depth:]}[edge]
    pixels[region] = colour
    foreign = photo.foreign.copy()
    foreign[region] = True
    bound = {"top": ("top", max, float(depth)), "bottom": ("bottom", min, float(height - depth)),
             "left": ("left", max, float(depth)), "right": ("right", min, float(width - depth))}[edge]
    name, pick, value = bound
    return Photo(pixels, replace(field, **{name: pick(getattr(field, name), value)}), foreign)


def corner_marker(photo: Photo, corner: str = "top right", size: float = 0.06,
                  colour: tuple[int, int, int] = MARKER_YELLOW) -> Photo:
    """A filled triangle of ``size`` radii in a corner of the frame (a camera's orientation mark).

    Raises:
        ValueError: when the marker would reach into the field.
    """
    image = photo.image
    side = max(4, round(size * photo.field.radius))
    width, height = photo.size
    vertical, horizontal = corner.split()
    x0 = 2 if horizontal == "left" else width - 2 - side
    y0 = 2 if vertical == "top" else height - 2 - side
    triangle = [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side)] if horizontal == "right" else \
        [(x0, y0), (x0 + side, y0), (x0, y0 + side)]
    ImageDraw.Draw(image).polygon(triangle, fill=colour)
    mask = Image.new("L", image.size)
    ImageDraw.Draw(mask).polygon(triangle, fill=255)
    painted = np.asarray(mask) > 0
    if (painted & photo.field_mask()).any():
        raise ValueError("the marker reaches into the field")
    return Photo(np.asarray(image).copy(), photo.field, photo.foreign | painted)


def clip(photo: Photo, *, top: float = 0.0, bottom: float = 0.0, left: float = 0.0, right: float = 0.0) -> Photo:
    """The photo cut short on each side, ``top`` etc. radii inside the field's circle (0: at the
    circle's extreme; the margin beyond goes too)."""
    f = photo.field
    x0 = max(0, round(f.x - f.radius + left * f.radius)) if left else 0
    y0 = max(0, round(f.y - f.radius + top * f.radius)) if top else 0
    x1 = min(photo.size[0], round(f.x + f.radius - right * f.radius)) if right else photo.size[0]
    y1 = min(photo.size[1], round(f.y + f.radius - bottom * f.radius)) if bottom else photo.size[1]
    region = np.s_[y0:y1, x0:x1]
    return Photo(photo.pixels[region].copy(), _moved(f, -x0, -y0, x1 - x0, y1 - y0), photo.foreign[region].copy())


def dark_rim(photo: Photo, floor: float = 0.12, start: float = 0.55) -> Photo:
    """The periphery darkened smoothly from ``start`` radii out to ``floor`` of its brightness at
    the rim (a myopic eye, or a small pupil)."""
    height, width = photo.pixels.shape[:2]
    yy, xx = np.ogrid[:height, :width]
    f = photo.field
    r = np.hypot(xx + 0.5 - f.x, yy + 0.5 - f.y) / f.radius
    t = np.clip((r - start) / (1 - start), 0, 1)
    gain = 1 - (1 - floor) * (1 - np.cos(np.pi * t)) / 2
    pixels = np.clip(photo.pixels * gain[..., None], 0, 255).round().astype(np.uint8)
    return replace(photo, pixels=pixels)


def darken(photo: Photo, factor: float = 0.25) -> Photo:
    """The whole photo at ``factor`` of its brightness (under-exposed)."""
    return replace(photo, pixels=np.clip(photo.pixels * factor, 0, 255).round().astype(np.uint8))


def small_in_frame(photo: Photo, scale: float = 0.3, canvas: float = 1.6, position: tuple[float, float] = (0.35, 0.6),
                   colour: tuple[int, int, int] = (0, 0, 0)) -> Photo:
    """The photo shrunk by ``scale`` on a canvas ``canvas`` times the photo's size, its centre at
    ``position`` (shares of the canvas' width and height)."""
    width, height = photo.size
    small_w, small_h = round(width * scale), round(height * scale)
    shrunk = photo.image.resize((small_w, small_h), Image.Resampling.LANCZOS)
    big_w, big_h = round(width * canvas), round(height * canvas)
    x0 = round(position[0] * big_w - small_w / 2)
    y0 = round(position[1] * big_h - small_h / 2)
    pixels = np.empty((big_h, big_w, 3), np.uint8)
    pixels[:] = colour
    pixels[y0:y0 + small_h, x0:x0 + small_w] = np.asarray(shrunk)
    sx, sy = small_w / width, small_h / height
    f = photo.field
    field = FieldOfView(x0 + f.x * sx, y0 + f.y * sy, f.radius * (sx + sy) / 2,
                        x0 + f.left * sx, y0 + f.top * sy, x0 + f.right * sx, y0 + f.bottom * sy)
    foreign = np.zeros((big_h, big_w), bool)
    foreign[y0:y0 + small_h, x0:x0 + small_w] = np.asarray(
        Image.fromarray(photo.foreign).resize((small_w, small_h), Image.Resampling.NEAREST))
    return Photo(pixels, field, foreign)


def rotate_shift(photo: Photo, degrees: float = 17.0, shift: tuple[float, float] = (0.1, -0.06)) -> Photo:
    """The photo rotated by ``degrees`` (counter-clockwise) about its centre, on a black canvas
    large enough for it, then moved by ``shift`` radii. For fields without cuts."""
    if photo.field.clipped:
        raise ValueError("rotate a field without cuts: a rotated cut is no longer straight")
    width, height = photo.size
    f = photo.field
    dx, dy = (round(s * f.radius) for s in shift)
    rotated = photo.image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)
    big_w, big_h = rotated.size[0] + 2 * abs(dx), rotated.size[1] + 2 * abs(dy)
    canvas = Image.new("RGB", (big_w, big_h))
    ox, oy = abs(dx) + dx, abs(dy) + dy
    canvas.paste(rotated, (ox, oy))
    # PIL rotates about the centre; with expand the old centre lands on the new one.
    angle = math.radians(degrees)
    rx, ry = f.x - width / 2, f.y - height / 2
    x = rotated.size[0] / 2 + rx * math.cos(angle) + ry * math.sin(angle) + ox
    y = rotated.size[1] / 2 - rx * math.sin(angle) + ry * math.cos(angle) + oy
    field = FieldOfView(x, y, f.radius, 0.0, 0.0, float(big_w), float(big_h))
    foreign = np.asarray(Image.fromarray(photo.foreign).rotate(degrees, expand=True))
    mask = np.zeros((big_h, big_w), bool)
    mask[oy:oy + foreign.shape[0], ox:ox + foreign.shape[1]] = foreign
    return Photo(np.asarray(canvas).copy(), field, mask)
