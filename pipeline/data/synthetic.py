"""Synthetic fundus photographs in the public DR sets' layouts (the course labs' Kaggle EyePACS
subset by default; ``layouts`` reads each).

The real EyePACS data cannot be redistributed or downloaded in every environment, so tests,
the demo and the benchmarks run on generated photos instead.  They imitate the things a model
(and the preprocessing code) actually depends on:

* geometry: a round orange-red fundus on black, optic disc on the nasal side (mirrored between
  left and right eyes), macula near the centre, vessel arcades leaving the disc;
* photometry: vignetting, per-photo colour and brightness variation, texture and soft focus;
* the label signal: DR lesions whose number, size and kind grow with the grade, sized relative
  to the fundus diameter so that a photo looks the same at 512x384 and at 3888x2592.

Rendering is done with PIL drawing primitives and vectorised numpy at a reduced working
resolution for the smooth background, so even full-size photos take well under two seconds.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from pipeline.catalog import NUM_GRADES
from pipeline.data import photo_defects
from pipeline.data.eyepacs import SPLITS as LABS_SPLITS
from pipeline.data.eyepacs import SYNTHETIC_MARKER
from pipeline.data.layouts import (
    APTOS_IMAGES,
    APTOS_LABELS,
    APTOS_TEST_IMAGES,
    APTOS_TEST_LIST,
    DDR_ROOT,
    DDR_SPLITS,
    DDR_UNGRADABLE,
    EYEPACS_FOLDERS,
    EYEPACS_TEST_LABELS,
    EYEPACS_TRAIN_LABELS,
    FOLDER_COLUMNS,
    FOLDER_LABELS,
    FOLDER_OPTIONAL,
    IDRID_COLUMNS,
    IDRID_ID_PREFIX,
    IDRID_IMAGES,
    IDRID_LABELS,
    IDRID_ROOT,
    LAYOUTS,
    MESSIDOR_COLUMNS,
    MESSIDOR_IMAGES,
    MESSIDOR_LABELS,
    MESSIDOR_PAIR_COLUMNS,
    MESSIDOR_PAIR_DELIMITER,
    MESSIDOR_PAIRS,
    UNGRADED,
)
from pipeline.data.fov import FieldOfView

logger = logging.getLogger(__name__)

EYES: tuple[str, str] = ("left", "right")

# Class shares of the Kaggle EyePACS training set (25810/2443/5292/873/708 of 35126 images).
EYEPACS_GRADE_SHARES: tuple[float, ...] = (0.735, 0.07, 0.15, 0.025, 0.02)
UNIFORM_GRADE_SHARES: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)


def shares_in_percent(shares: Sequence[float]) -> str:
    """``(0.735, 0.07, ...)`` -> ``73.5/7/15/2.5/2 %``: how help texts and the README write shares."""
    return "/".join(f"{100 * share:g}" for share in shares) + " %"


MIN_SIDE = 64
# In real data the two eyes of a patient usually share a grade; this is the chance that the
# second eye simply copies the first eye's grade instead of being drawn independently.
SAME_GRADE_PROBABILITY = 0.6
_SHARES_TOLERANCE = 0.02
# The smooth background is computed at most at this size (longest side) and upscaled.
_WORK_MAX_SIDE = 900
# Photos this large (longest side) stand for what a fundus camera writes: per-pixel sensor noise
# and the camera's JPEG settings. Smaller ones stand for downscaled copies, where the noise has
# averaged out, and stay as cheap to render and as small as tests need them.
CAMERA_MIN_SIDE = 1024
# Sensor noise in grey levels: a luminance part shared by the channels and a per-channel (chroma)
# part. With the camera's JPEG settings it gives 3888x2592 files of ~2 MB (real EyePACS: 1-4 MB).
_SENSOR_LUMA_NOISE = 2.5
_SENSOR_CHROMA_NOISE = 1.0
CAMERA_JPEG_QUALITY = 95
CAMERA_SUBSAMPLING = "4:2:2"  # what most fundus cameras (Canon, Topcon) write: half-width chroma
COPY_JPEG_QUALITY = 90  # a downscaled copy, re-saved at the usual library default quality


class SyntheticDataError(ValueError):
    """Invalid argument for the synthetic data generator."""


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Positions in full-resolution pixel coordinates (x right, y down)."""

    width: int
    height: int
    cx: float
    cy: float
    radius: float  # fundus radius
    side: int  # +1: optic disc on the right of the image (right eye), -1: on the left
    disc_x: float
    disc_y: float
    disc_r: float
    mac_x: float
    mac_y: float
    mac_r: float

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius


def _sample_geometry(width: int, height: int, eye: str, rng: np.random.Generator) -> _Geometry:
    short = min(width, height)
    aspect = max(width, height) / short
    # Wide camera frames (3:2) fill the height and clip the fundus a little, 4:3 ones don't.
    factor = rng.uniform(0.95, 1.06) if aspect >= 1.4 else rng.uniform(0.90, 1.0)
    diameter = min(short * factor, 0.98 * max(width, height))
    radius = diameter / 2.0
    cx = width / 2.0 + rng.normal(0.0, 0.01 * short)
    cy = height / 2.0 + rng.normal(0.0, 0.01 * short)
    # Seen from the front, the nasal side of a right eye is on the viewer's right.
    side = 1 if eye == "right" else -1
    disc_r = diameter * rng.uniform(1 / 7, 1 / 6) / 2.0
    disc_x = cx + side * radius * rng.uniform(0.54, 0.62)
    disc_y = cy + radius * rng.normal(-0.03, 0.03)
    # The fovea lies about 2.5 disc diameters temporal to the disc and slightly below it.
    mac_x = disc_x - side * diameter * rng.uniform(0.36, 0.40)
    mac_y = disc_y + diameter * rng.uniform(0.0, 0.03)
    mac_r = diameter * rng.uniform(0.075, 0.095)
    return _Geometry(width, height, cx, cy, radius, side, disc_x, disc_y, disc_r, mac_x, mac_y, mac_r)


# --------------------------------------------------------------------------------------------
# Smooth background (working resolution)
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, cells: int, size: tuple[int, int], channels: int = 1) -> np.ndarray:
    """Zero-mean noise of roughly unit amplitude varying over ``cells`` blobs per side."""
    w, h = size
    gw = max(2, int(round(cells * w / max(w, h))))
    gh = max(2, int(round(cells * h / max(w, h))))
    out = np.empty((h, w, channels), dtype=np.float32)
    for c in range(channels):
        grid = rng.normal(0.0, 1.0, (gh, gw)).astype(np.float32)
        # Bicubic upscaling of a coarse grid is a cheap, smooth value-noise.
        img = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
        out[..., c] = np.asarray(img)
    return out


def _render_background(geo: _Geometry, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """Returns (albedo RGB, illumination L) at full size.

    Both are smooth, so they are computed at a reduced working resolution and upscaled; the
    illumination also carries the round fundus aperture, so everything outside is black.
    """
    scale = min(1.0, _WORK_MAX_SIDE / max(geo.width, geo.height))
    w = max(1, int(round(geo.width * scale)))
    h = max(1, int(round(geo.height * scale)))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs = (xs + 0.5) / scale
    ys = (ys + 0.5) / scale
    d_ref = geo.diameter

    base = np.array(
        [rng.uniform(195, 235), rng.uniform(80, 118), rng.uniform(28, 58)], dtype=np.float32
    )
    r = np.hypot(xs - geo.cx, ys - geo.cy) / geo.radius
    # Periphery is slightly more orange than the posterior pole.
    albedo = base * (1.0 + np.stack([0.0 * r, 0.10 * r, 0.15 * r], axis=-1))
    # Low-frequency colour variation and choroidal mottling.
    albedo *= 1.0 + 0.05 * _smooth_noise(rng, 5, (w, h), 3)
    # Choroidal mottling: fine (a few pixels at 512 px) so it reads as texture, not as clouds.
    mottle = _smooth_noise(rng, max(8, int(d_ref * scale / 6)), (w, h), 1)
    albedo *= 1.0 + np.float32(rng.uniform(0.02, 0.04)) * mottle * np.array([1.0, 1.3, 1.3], np.float32)

    # Macula: darker and browner, with a tiny foveal reflex in some photos.
    dm2 = ((xs - geo.mac_x) ** 2 + (ys - geo.mac_y) ** 2) / geo.mac_r**2
    mac = np.exp(-dm2)[..., None]
    albedo *= 1.0 - rng.uniform(0.3, 0.45) * mac * np.array([0.85, 1.0, 0.9], np.float32)
    if rng.random() < 0.5:
        fov = np.exp(-dm2 / 0.015)[..., None]
        albedo += 40.0 * fov * np.array([1.0, 1.0, 0.8], np.float32)

    # Optic disc: pale yellow rim with soft margin, brighter cup offset to the temporal side.
    dd = np.hypot(xs - geo.disc_x, ys - geo.disc_y)
    edge = max(geo.disc_r * 0.18, 1.0 / scale)
    rim = np.clip((geo.disc_r - dd) / edge + 0.5, 0.0, 1.0)
    rim = rim * rim * (3.0 - 2.0 * rim)
    disc_col = np.array([rng.uniform(240, 255), rng.uniform(190, 220), rng.uniform(110, 150)], np.float32)
    halo = np.exp(-(np.maximum(dd - geo.disc_r, 0.0) / (0.35 * geo.disc_r)) ** 2) * (1.0 - rim)
    albedo = albedo * (1.0 - 0.85 * rim[..., None]) + disc_col * 0.85 * rim[..., None]
    albedo += 20.0 * halo[..., None] * np.array([1.0, 0.8, 0.5], np.float32)
    cup_r = geo.disc_r * rng.uniform(0.3, 0.5)
    cup_x = geo.disc_x - geo.side * geo.disc_r * 0.15
    dc2 = ((xs - cup_x) ** 2 + (ys - geo.disc_y) ** 2) / cup_r**2
    albedo += np.exp(-dc2)[..., None] * np.array([30.0, 45.0, 60.0], np.float32)

    # Illumination: vignetting with a random power, a slight tilt and a global brightness.
    vig = rng.uniform(0.35, 0.6)
    power = rng.uniform(2.0, 3.2)
    tilt = rng.normal(0.0, 0.06, 2)
    illum = rng.uniform(0.72, 1.0) * (
        1.0 - vig * np.minimum(r, 1.0) ** power
        + tilt[0] * (xs - geo.cx) / geo.radius
        + tilt[1] * (ys - geo.cy) / geo.radius
    )
    px = 1.0 / scale  # one working pixel in full-resolution units, for an anti-aliased edge
    aperture = np.clip((geo.radius - r * geo.radius) / px + 0.5, 0.0, 1.0)
    illum = np.clip(illum * aperture, 0.0, 1.0)

    albedo_img = Image.fromarray(np.clip(albedo, 0, 255).astype(np.uint8), mode="RGB")
    illum_img = Image.fromarray((illum * 255.0 + 0.5).astype(np.uint8), mode="L")
    full = (geo.width, geo.height)
    if (w, h) != full:
        albedo_img = albedo_img.resize(full, Image.Resampling.BICUBIC)
        illum_img = illum_img.resize(full, Image.Resampling.BILINEAR)
    return albedo_img, illum_img


# --------------------------------------------------------------------------------------------
# Vessels
# --------------------------------------------------------------------------------------------


@dataclass
class _Vessel:
    points: np.ndarray  # (n, 2) float, full-resolution pixels
    widths: np.ndarray  # (n,) float, pixels
    kind: str  # "artery" or "vein"


def _walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    step: float,
    total_turn: float,
    tau: float,
    wiggle: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random-walk curve; returns (points, headings).

    ``total_turn`` radians of systematic turning are spent mostly early (decay ``tau`` in units
    of the curve length), which gives the characteristic arcade shape.
    """
    n = max(3, int(length / step) + 1)
    t = np.linspace(0.0, 1.0, n - 1)
    weights = np.exp(-t / max(tau, 1e-3))
    turn = total_turn * weights / weights.sum()
    noise = rng.normal(0.0, wiggle, n - 1 + 6)
    noise = np.convolve(noise, np.array([1, 2, 3, 3, 2, 1], float) / 12.0, mode="valid")[: n - 1]
    angles = heading + np.cumsum(turn + noise)
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    pts = np.vstack([np.asarray(start, float)[None], np.asarray(start, float) + np.cumsum(steps, axis=0)])
    return pts, np.concatenate([[angles[0]], angles])


def _clip_to_fundus(pts: np.ndarray, geo: _Geometry) -> int:
    """Number of leading points that lie inside the fundus (vessels stop at the aperture)."""
    inside = np.hypot(pts[:, 0] - geo.cx, pts[:, 1] - geo.cy) <= geo.radius * 1.01
    if inside.all():
        return len(pts)
    return int(np.argmin(inside))


def _make_vessels(geo: _Geometry, rng: np.random.Generator, beading: bool) -> list[_Vessel]:
    d = geo.diameter
    step = d * 0.008
    vessels: list[_Vessel] = []
    vein_w = d * rng.uniform(0.011, 0.014)

    def add_tree(start, heading, length, total_turn, tau, w0, kind, depth, n_branch):
        pts, ang = _walk(rng, start, heading, length, step, total_turn, tau, wiggle=0.05)
        keep = _clip_to_fundus(pts, geo)
        if keep < 2:
            return
        # Taper over the planned length, so a vessel cut by the aperture is not thinned early.
        t = np.arange(keep) / (len(pts) - 1)
        pts, ang = pts[:keep], ang[:keep]
        widths = w0 * (1.0 - 0.6 * t)
        if beading and kind == "vein" and depth == 0:
            # Venous beading: sausage-like calibre changes along the vein.
            phase = rng.uniform(0, 2 * math.pi)
            cycles = rng.uniform(6, 10)
            widths = widths * (1.0 + 0.45 * np.maximum(0.0, np.sin(2 * math.pi * cycles * t + phase)) ** 2)
        vessels.append(_Vessel(pts, widths, kind))
        if depth >= 2 or len(pts) < 8:
            return
        for _ in range(n_branch):
            k = int(rng.integers(int(len(pts) * 0.15), max(int(len(pts) * 0.85), int(len(pts) * 0.15) + 1)))
            dev = rng.uniform(0.45, 1.2) * rng.choice([-1.0, 1.0])
            remaining = step * (len(pts) - k)
            child_len = max(remaining * rng.uniform(0.35, 0.8), d * 0.06)
            add_tree(
                tuple(pts[k]),
                float(ang[k] + dev),
                child_len,
                rng.normal(0.0, 0.4),
                0.5,
                widths[k] * rng.uniform(0.45, 0.7),
                kind,
                depth + 1,
                max(0, n_branch - 2),
            )

    for vert in (-1, 1):  # superior, inferior
        turn_sign = geo.side * vert
        for kind in ("vein", "artery"):
            w0 = vein_w if kind == "vein" else vein_w * rng.uniform(0.7, 0.8)
            off = rng.normal(0.0, 0.25 * geo.disc_r, 2)
            start = (geo.disc_x + off[0] * 0.5, geo.disc_y + vert * abs(off[1]) * 0.6)
            heading = vert * math.pi / 2 + turn_sign * math.radians(rng.uniform(-10, 15))
            # Temporal arcades: leave the disc vertically and sweep around the macula.
            add_tree(
                start,
                heading,
                d * rng.uniform(0.6, 0.75),
                turn_sign * math.radians(rng.uniform(85, 105)),
                rng.uniform(0.35, 0.5),
                w0,
                kind,
                0,
                int(rng.integers(3, 6)),
            )
            # Nasal vessels: thinner and straighter, towards the nasal periphery.
            nasal_heading = vert * math.radians(rng.uniform(35, 70))
            if geo.side < 0:
                nasal_heading = math.pi - nasal_heading
            add_tree(
                start,
                nasal_heading,
                d * rng.uniform(0.3, 0.45),
                rng.normal(0.0, 0.3),
                0.5,
                w0 * rng.uniform(0.6, 0.75),
                kind,
                1,
                int(rng.integers(2, 4)),
            )
    # Small papillomacular vessels heading straight for the macula.
    towards_mac = math.atan2(geo.mac_y - geo.disc_y, geo.mac_x - geo.disc_x)
    for _ in range(int(rng.integers(2, 5))):
        add_tree(
            (geo.disc_x, geo.disc_y),
            towards_mac + rng.normal(0.0, 0.45),
            d * rng.uniform(0.12, 0.25),
            rng.normal(0.0, 0.5),
            0.5,
            vein_w * rng.uniform(0.25, 0.4),
            str(rng.choice(["artery", "vein"])),
            2,
            0,
        )
    return vessels


def _draw_polyline(draw: ImageDraw.ImageDraw, pts: np.ndarray, widths: np.ndarray, alpha: float, w_ref: float) -> None:
    """Draws a polyline of varying width, grouping runs of equal integer width into one call."""
    seg_w = 0.5 * (widths[:-1] + widths[1:])
    iw = np.maximum(1, np.rint(seg_w)).astype(int)
    # Thin vessels are fainter; sub-pixel widths fade instead of vanishing (cheap anti-aliasing).
    a = alpha * np.minimum(1.0, seg_w) * (0.55 + 0.45 * np.minimum(1.0, seg_w / w_ref))
    a = (np.rint(a / 8.0) * 8.0).clip(0, 255).astype(int)
    start = 0
    n = len(seg_w)
    for i in range(1, n + 1):
        if i == n or iw[i] != iw[start] or a[i] != a[start]:
            coords = [(float(x), float(y)) for x, y in pts[start : i + 1]]
            draw.line(coords, fill=int(a[start]), width=int(iw[start]), joint="curve")
            if iw[start] >= 3:
                rad = iw[start] / 2.0
                x, y = coords[-1]
                draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=int(a[start]))
            start = i


# --------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------


def _lesion_position(
    geo: _Geometry, rng: np.random.Generator, margin: float, quadrant: int | None = None, max_r: float = 0.85
) -> tuple[float, float]:
    """A random point inside the fundus, away from the optic disc (optionally in a quadrant)."""
    for _ in range(100):
        if quadrant is None:
            theta = rng.uniform(0.0, 2 * math.pi)
        else:
            theta = (quadrant + rng.uniform(0.05, 0.95)) * math.pi / 2
        rad = geo.radius * max_r * math.sqrt(rng.uniform(0.0, 1.0))
        x = geo.cx + rad * math.cos(theta)
        y = geo.cy + rad * math.sin(theta)
        if math.hypot(x - geo.disc_x, y - geo.disc_y) > geo.disc_r * 1.3 + margin:
            return x, y
    return geo.mac_x, geo.mac_y  # practically unreachable; the macula is always a valid spot


def _ellipse_polygon(x: float, y: float, a: float, b: float, angle: float, n: int = 20) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    ex, ey = a * np.cos(t), b * np.sin(t)
    return [(float(x + ca * u - sa * v), float(y + sa * u + ca * v)) for u, v in zip(ex, ey)]


def _draw_blot(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, r: float, alpha: int) -> None:
    """Irregular blot: a few overlapping ellipses."""
    for _ in range(int(rng.integers(2, 5))):
        ox, oy = rng.normal(0.0, 0.35 * r, 2)
        a = r * rng.uniform(0.6, 1.0)
        b = a * rng.uniform(0.65, 1.0)
        draw.polygon(_ellipse_polygon(x + ox, y + oy, a, b, rng.uniform(0, math.pi)), fill=alpha)


def _draw_dot(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, alpha: int) -> None:
    r = max(r, 0.5)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=alpha)


@dataclass
class _Layers:
    """Grey-level opacity masks, one per lesion colour, all at full resolution."""

    haem: Image.Image  # microaneurysms, dot and blot haemorrhages (intraretinal, under vessels)
    exudate: Image.Image
    cotton: Image.Image
    neo: Image.Image
    surface: Image.Image  # flame and preretinal haemorrhages (cover the vessels)
    scar: Image.Image  # laser photocoagulation scars


def _draw_lesions(geo: _Geometry, grade: int, rng: np.random.Generator) -> _Layers:
    size = (geo.width, geo.height)
    layers = _Layers(*(Image.new("L", size, 0) for _ in range(6)))
    d = geo.diameter
    if grade == 0:
        return layers
    haem = ImageDraw.Draw(layers.haem)

    n_ma = {1: (3, 11), 2: (8, 21), 3: (15, 36), 4: (12, 31)}[grade]
    for _ in range(int(rng.integers(*n_ma))):
        r = d * rng.uniform(0.0025, 0.0045)
        x, y = _lesion_position(geo, rng, r, max_r=0.7)
        _draw_dot(haem, x, y, r, int(rng.integers(200, 250)))
    if grade == 1:
        return layers

    # Dot and blot haemorrhages; severe grades spread large blots over all four quadrants.
    if grade == 2:
        n_dot, n_blot, blot_r = int(rng.integers(4, 10)), int(rng.integers(2, 6)), (0.010, 0.018)
    else:
        n_dot, n_blot, blot_r = int(rng.integers(6, 13)), int(rng.integers(10, 21)), (0.013, 0.025)
    for _ in range(n_dot):
        r = d * rng.uniform(0.006, 0.011)
        x, y = _lesion_position(geo, rng, r)
        _draw_dot(haem, x, y, r, int(rng.integers(190, 245)))
    for i in range(n_blot):
        r = d * rng.uniform(*blot_r)
        x, y = _lesion_position(geo, rng, r, quadrant=i % 4 if grade >= 3 else None)
        _draw_blot(haem, rng, x, y, r, int(rng.integers(190, 245)))

    # Hard exudates: bright yellow specks in clusters, often around the macula.
    exu = ImageDraw.Draw(layers.exudate)
    n_clusters = {2: (1, 4), 3: (2, 6), 4: (2, 6)}[grade]
    for c in range(int(rng.integers(*n_clusters))):
        spread = d * rng.uniform(0.02, 0.045)
        if c == 0 or rng.random() < 0.4:
            ang = rng.uniform(0, 2 * math.pi)
            off = geo.mac_r * rng.uniform(0.6, 2.0)
            cx, cy = geo.mac_x + off * math.cos(ang), geo.mac_y + off * math.sin(ang)
        else:
            cx, cy = _lesion_position(geo, rng, spread)
        n_spots = int(rng.integers(6, 16 if grade == 2 else 26))
        for _ in range(n_spots):
            r = d * rng.uniform(0.002, 0.0065)
            ox, oy = rng.normal(0.0, spread * 0.5, 2)
            _draw_dot(exu, cx + ox, cy + oy, r, int(rng.integers(210, 255)))

    # Cotton-wool spots: soft, fluffy pale patches (rare in moderate, common in severe DR).
    cot = ImageDraw.Draw(layers.cotton)
    n_cws = int(rng.integers(0, 2)) if grade == 2 else int(rng.integers(1, 5))
    for _ in range(n_cws):
        r = d * rng.uniform(0.014, 0.028)
        x, y = _lesion_position(geo, rng, r, max_r=0.6)
        _draw_blot(cot, rng, x, y, r, int(rng.integers(150, 210)))
    if grade == 2:
        return layers

    surf = ImageDraw.Draw(layers.surface)
    # Flame haemorrhages follow the nerve fibres, i.e. point roughly away from the disc.
    for _ in range(int(rng.integers(2, 7))):
        r = d * rng.uniform(0.02, 0.035)
        x, y = _lesion_position(geo, rng, r, max_r=0.6)
        ang = math.atan2(y - geo.disc_y, x - geo.disc_x) + rng.normal(0.0, 0.2)
        surf.polygon(_ellipse_polygon(x, y, r, r * rng.uniform(0.25, 0.4), ang), fill=int(rng.integers(170, 225)))
    if grade == 3:
        return layers

    # Proliferative: neovascularisation at the disc (NVD) and/or elsewhere (NVE).
    neo = ImageDraw.Draw(layers.neo)
    sites: list[tuple[float, float, float]] = []
    has_nvd = rng.random() < 0.75
    if has_nvd:
        sites.append((geo.disc_x, geo.disc_y, geo.disc_r * 1.3))
    for _ in range(int(rng.integers(0 if has_nvd else 1, 3))):
        x, y = _lesion_position(geo, rng, d * 0.05, max_r=0.75)
        sites.append((x, y, d * rng.uniform(0.035, 0.06)))
    for sx, sy, extent in sites:
        for _ in range(int(rng.integers(12, 25))):
            ang = rng.uniform(0, 2 * math.pi)
            start = (sx + rng.normal(0, extent * 0.4), sy + rng.normal(0, extent * 0.4))
            # Strong, noisy turning makes the fine tangled loops typical of new vessels.
            pts, _ = _walk(
                rng, start, ang, extent * rng.uniform(1.0, 2.2), d * 0.004,
                rng.choice([-1, 1]) * rng.uniform(4.0, 9.0), 2.0, wiggle=0.5,
            )
            w = max(1, int(round(d * rng.uniform(0.0015, 0.003))))
            neo.line([(float(x), float(y)) for x, y in pts], fill=int(rng.integers(170, 235)), width=w, joint="curve")

    if rng.random() < 0.5:
        # Preretinal haemorrhage: blood pools under gravity into a boat shape with a flat top.
        bw = d * rng.uniform(0.08, 0.16)
        bh = bw * rng.uniform(0.5, 0.8)
        x, y = _lesion_position(geo, rng, bw * 0.5, max_r=0.55)
        surf.chord((x - bw / 2, y - bh, x + bw / 2, y + bh), 0, 180, fill=int(rng.integers(190, 230)))

    if rng.random() < 0.35:
        # Panretinal laser scars: rows of round pigmented spots in the periphery.
        sc = ImageDraw.Draw(layers.scar)
        for _ in range(int(rng.integers(40, 120))):
            r = d * rng.uniform(0.006, 0.011)
            theta = rng.uniform(0, 2 * math.pi)
            rad = geo.radius * rng.uniform(0.62, 0.93)
            _draw_dot(sc, geo.cx + rad * math.cos(theta), geo.cy + rad * math.sin(theta), r, int(rng.integers(120, 200)))
    return layers


# --------------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------------


def _paste_colour(img: Image.Image, mask: Image.Image, colour: tuple[int, int, int], blur: float = 0.0) -> None:
    """Blends a solid colour into ``img`` through ``mask``, touching only the drawn region."""
    bbox = mask.getbbox()
    if bbox is None:
        return
    if blur > 0:
        pad = int(math.ceil(blur * 3)) + 1
        bbox = (max(0, bbox[0] - pad), max(0, bbox[1] - pad), min(img.width, bbox[2] + pad), min(img.height, bbox[3] + pad))
        m = mask.crop(bbox).filter(ImageFilter.GaussianBlur(blur))
    else:
        m = mask.crop(bbox)
    img.paste(colour, bbox, m)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size)
    ):
        raise SyntheticDataError(f"size must be a (width, height) pair of integers, got {size!r}")
    w, h = int(size[0]), int(size[1])
    if w < MIN_SIDE or h < MIN_SIDE:
        raise SyntheticDataError(f"size {size!r} is too small: both sides must be at least {MIN_SIDE} px")
    return w, h


def render_fundus(grade: int, eye: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One RGB synthetic fundus photo of width x height = ``size`` for eye 'left' or 'right'.

    All randomness comes from ``rng``, so the same generator state gives the same pixels.
    """
    return render_photo(grade, eye, size, rng)[0]


def render_photo(grade: int, eye: str, size: tuple[int, int], rng: np.random.Generator) -> tuple[Image.Image, FieldOfView]:
    """``render_fundus``'s photo and its field of view, as drawn (the aperture's circle, cut by the frame)."""
    if isinstance(grade, bool) or not isinstance(grade, numbers.Integral) or not 0 <= grade < NUM_GRADES:
        raise SyntheticDataError(f"grade must be an integer in 0..{NUM_GRADES - 1}, got {grade!r}")
    if eye not in EYES:
        raise SyntheticDataError(f"eye must be 'left' or 'right', got {eye!r}")
    width, height = _check_size(size)
    grade = int(grade)

    geo = _sample_geometry(width, height, eye, rng)
    d = geo.diameter
    img, illum = _render_background(geo, rng)
    # Everything grade-independent is drawn from the generator before the lesions, so the same
    # generator state renders the same eye at every grade and only the lesions differ.
    beading = rng.random() < 0.6 and grade >= 3
    vessels = _make_vessels(geo, rng, beading)
    jitter = rng.integers(-12, 13, 3)
    # Multiplicative sensor grain goes into the illumination, a single channel, to stay cheap.
    gain = np.asarray(illum, dtype=np.int16)
    grain = rng.normal(0.0, 3.0, gain.shape).astype(np.int16)
    gain = np.clip(gain + grain * (gain > 0), 0, 255).astype(np.uint8)
    layers = _draw_lesions(geo, grade, rng)

    art_mask = Image.new("L", img.size, 0)
    vein_mask = Image.new("L", img.size, 0)
    art_draw, vein_draw = ImageDraw.Draw(art_mask), ImageDraw.Draw(vein_mask)
    w_ref = d * 0.012
    for v in vessels:
        if v.kind == "vein":
            _draw_polyline(vein_draw, v.points, v.widths, 235.0, w_ref)
        else:
            _draw_polyline(art_draw, v.points, v.widths, 215.0, w_ref)

    soft = max(0.0, d * 0.0012)

    def col(c: tuple[int, int, int]) -> tuple[int, int, int]:
        # Per-photo colour jitter keeps lesion colours from being a fixed, trivially learnable value.
        return tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(c, jitter))  # type: ignore[return-value]

    _paste_colour(img, layers.scar, col((95, 60, 30)), blur=soft)
    _paste_colour(img, layers.haem, col((120, 16, 10)), blur=soft)
    _paste_colour(img, layers.exudate, col((255, 235, 110)), blur=soft * 0.5)
    # Vessel masks span the whole fundus; the final blur softens them enough and is much cheaper
    # than blurring two more full-size layers.
    _paste_colour(img, vein_mask, col((115, 22, 16)))
    _paste_colour(img, art_mask, col((165, 38, 26)))
    _paste_colour(img, layers.cotton, col((240, 225, 195)), blur=d * 0.008)
    _paste_colour(img, layers.neo, col((175, 32, 28)), blur=soft * 0.5)
    _paste_colour(img, layers.surface, col((100, 10, 8)), blur=soft)

    gain_img = Image.fromarray(gain, mode="L")
    img = ImageChops.multiply(img, Image.merge("RGB", (gain_img, gain_img, gain_img)))
    # Real fundus photos are never razor sharp.
    img = img.filter(ImageFilter.GaussianBlur(max(0.5, d * 0.0011)))
    # The sensor's noise comes after the optics' blur; it is what makes real files 1-4 MB.
    img = _add_sensor_noise(img, rng) if is_camera_size((width, height)) else img
    # The aperture is the circle of radius geo.radius about (cx, cy), in pixel-edge coordinates.
    return img, FieldOfView(geo.cx, geo.cy, geo.radius, 0.0, 0.0, float(width), float(height))


def is_camera_size(size: tuple[int, int]) -> bool:
    """Whether a photo of ``size`` is rendered as a camera writes it (sensor noise, camera JPEG)."""
    return max(size) >= CAMERA_MIN_SIDE


def _add_sensor_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian luminance and chroma noise, drawn from ``rng`` in float32 (half the cost of float64)."""
    pixels = np.asarray(img, dtype=np.float32)
    luma = rng.standard_normal(pixels.shape[:2], dtype=np.float32)
    luma *= _SENSOR_LUMA_NOISE
    chroma = rng.standard_normal(pixels.shape, dtype=np.float32)
    chroma *= _SENSOR_CHROMA_NOISE
    pixels += luma[..., None]
    pixels += chroma
    pixels += 0.5  # round, not truncate, on the way back to uint8
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def save_photo(img: Image.Image, path: str | Path, quality: int | None = None) -> None:
    """Writes a rendered photo as JPEG: with the camera's settings at camera sizes, unless
    ``quality`` is given."""
    if quality is not None:
        img.save(path, format="JPEG", quality=quality)
    elif is_camera_size(img.size):
        img.save(path, format="JPEG", quality=CAMERA_JPEG_QUALITY, subsampling=CAMERA_SUBSAMPLING)
    else:
        img.save(path, format="JPEG", quality=COPY_JPEG_QUALITY)


# --------------------------------------------------------------------------------------------
# Dataset layout
# --------------------------------------------------------------------------------------------


def _validate_shares(grade_shares: Sequence[float]) -> np.ndarray:
    try:
        shares = np.asarray([float(s) for s in grade_shares], dtype=float)
    except (TypeError, ValueError):
        raise SyntheticDataError(f"grade_shares must be {NUM_GRADES} numbers, got {grade_shares!r}") from None
    if shares.shape != (NUM_GRADES,):
        raise SyntheticDataError(f"grade_shares must have {NUM_GRADES} entries (grades 0-4), got {grade_shares!r}")
    if not np.all(np.isfinite(shares)) or np.any(shares < 0):
        raise SyntheticDataError(f"grade_shares must be non-negative finite numbers, got {grade_shares!r}")
    if abs(shares.sum() - 1.0) > _SHARES_TOLERANCE:
        raise SyntheticDataError(f"grade_shares must sum to 1, got {grade_shares!r} (sum {shares.sum():.4g})")
    return shares / shares.sum()


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SyntheticDataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _patient_grades(n_patients: int, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) grades for (left, right) eyes, correlated within a patient as in real data."""
    first = rng.choice(NUM_GRADES, size=n_patients, p=shares)
    other = rng.choice(NUM_GRADES, size=n_patients, p=shares)
    same = rng.random(n_patients) < SAME_GRADE_PROBABILITY
    second = np.where(same, first, other)
    # Which eye is the "first" one is random, so neither eye is systematically the worse one.
    swap = rng.random(n_patients) < 0.5
    left = np.where(swap, second, first)
    right = np.where(swap, first, second)
    return np.stack([left, right], axis=1)


# What clinics' exports do to a photo (``photo_defects``), each as the generator applies it; a
# share of the photos (``defects``) gets one, drawn per photo.
DEFECTS: dict[str, Callable[[photo_defects.Photo], photo_defects.Photo]] = {
    "grey frame and text": lambda p: _with_text(photo_defects.on_frame(p, photo_defects.DARK_GREY, 0.35)),
    "navy frame": lambda p: photo_defects.on_frame(p, photo_defects.NAVY, 0.15),
    "white bar over a clipped field": lambda p: photo_defects.edge_bar(
        photo_defects.clip(p, top=0.12, bottom=0.12), "bottom", 0.06),
    "corner marker": lambda p: photo_defects.corner_marker(photo_defects.on_frame(p, (0, 0, 0), 0.15)),
    "clipped side": lambda p: photo_defects.clip(p, left=0.2),
    "dark rim": lambda p: photo_defects.dark_rim(p, 0.12),
    "dark photo": lambda p: photo_defects.darken(p, 0.35),
    "small in frame": lambda p: photo_defects.small_in_frame(p, 0.5, 1.4),
}
# Written beside the CSVs: every photo's field of view as drawn, and its defect.
FIELDS_FILE = "fields.csv"


def _with_text(photo: photo_defects.Photo) -> photo_defects.Photo:
    try:
        return photo_defects.burn_text(photo)
    except ValueError:  # a frame too narrow for the text at this size: the frame alone
        return photo


# Photos a set labels ungradable (DDR's grade 5, Messidor-2's adjudicated_gradable 0, the folder
# layout's gradable false) are this share of its photos, at least one, and ungradable in their
# pixels too: blurred by this share of the photo's short side, so vessels and lesions smear away,
# and darkened to this share of their exposure (the grader refuses 1.5% blur or 15% exposure alone).
UNGRADABLE_SHARE = 0.1
_UNGRADABLE_BLUR = 0.03
_UNGRADABLE_EXPOSURE = 0.3
# The share of the Kaggle EyePACS test photos on its public leaderboard (the rest are Private).
_EYEPACS_PUBLIC_SHARE = 0.2
# What ``generate_layout`` returns: every photo written, as ``layouts.read_layout`` must read it
# back (``file`` is its path under the output folder).
RECORD_COLUMNS = ("id", "grade", "gradable", "patient", "split", "file")
# The split of the photos a set lists without grades (APTOS's test.csv): no reader returns them.
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class _Eye:
    """A photo as drawn: one eye of a patient of the train or test split, and its grade."""

    split: str
    patient: int
    eye: str
    grade: int


@dataclass(frozen=True)
class _RenderTask:
    """One photo to render and write (a worker's unit of work, so it pickles)."""

    path: str
    image_id: str
    grade: int
    eye: str
    size: tuple[int, int]
    seed: int
    index: int
    quality: int | None
    defects: float
    ungradable: bool


def _render_task(task: _RenderTask) -> dict[str, object]:
    """Worker entry point: renders one image, writes it and returns its field's record (top level so it pickles)."""
    rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(task.index,)))
    img, field = render_photo(task.grade, task.eye, task.size, rng)
    defect = ""
    # Drawn after the rendering, so a photo's rendering never depends on ``defects``.
    if task.defects > 0 and rng.random() < task.defects:
        defect = list(DEFECTS)[int(rng.integers(len(DEFECTS)))]
        photo = DEFECTS[defect](photo_defects.Photo.of(np.asarray(img), field))
        img, field = photo.image, photo.field
    if task.ungradable:
        img = _make_ungradable(img, field)
    _save(img, Path(task.path), task.quality)
    return {"id": task.image_id, **field.record(), "defect": defect}


def _make_ungradable(img: Image.Image, field: FieldOfView) -> Image.Image:
    blurred = img.filter(ImageFilter.GaussianBlur(_UNGRADABLE_BLUR * min(img.size)))
    return photo_defects.darken(photo_defects.Photo.of(np.asarray(blurred), field), _UNGRADABLE_EXPOSURE).image


def _save(img: Image.Image, path: Path, quality: int | None) -> None:
    """PNG where the set's file is a PNG (APTOS, Messidor-Original), else ``save_photo``'s JPEG."""
    if path.suffix.lower() == ".png":
        img.save(path, format="PNG")
    else:
        save_photo(img, path, quality)


def _render_all(tasks: list[_RenderTask], workers: int) -> list[dict[str, object]]:
    workers = min(workers, len(tasks), os.cpu_count() or 1) if workers > 1 else 1
    logger.info("Rendering %d synthetic fundus images (%dx%d) with %d worker(s)", len(tasks), *tasks[0].size, workers)
    if workers == 1:
        return [_render_task(task) for task in tasks]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Consuming the iterator re-raises any worker exception here.
        return list(pool.map(_render_task, tasks, chunksize=max(1, len(tasks) // (workers * 8))))


def _draw_eyes(train_patients: int, test_patients: int, shares: np.ndarray, rng: np.random.Generator) -> list[_Eye]:
    """Both eyes of every patient, train patients first; train and test patients are disjoint."""
    n_total = train_patients + test_patients
    # Sparse, increasing patient numbers like the real ones (10, 13, 15, 16, ...).
    patient_numbers = 10 + np.cumsum(rng.integers(1, 5, n_total))
    order = rng.permutation(n_total)
    splits = {
        "train": np.sort(patient_numbers[order[:train_patients]]),
        "test": np.sort(patient_numbers[order[train_patients:]]),
    }
    eyes = []
    for split, patients in splits.items():
        for patient, pair in zip(patients, _patient_grades(len(patients), shares, rng)):
            eyes += [_Eye(split, int(patient), eye, int(grade)) for eye, grade in zip(EYES, pair)]
    return eyes


def _row(eye: _Eye, image_id: str, file: str, split: str, patient: str = "",
         gradable: bool = True) -> dict[str, object]:
    """A photo's record: what the reader must give (``RECORD_COLUMNS``) and what to render."""
    return {"id": image_id, "grade": eye.grade if gradable else UNGRADED, "gradable": gradable,
            "patient": patient or image_id, "split": split, "file": file, "eye": eye.eye, "drawn": eye.grade}


def _ungradable(n: int, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n`` photos the set labels ungradable: ``UNGRADABLE_SHARE``, at least one."""
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, size=max(1, round(UNGRADABLE_SHARE * n)), replace=False)] = True
    return chosen


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _write_labs(out: Path, eyes: list[_Eye], rng: np.random.Generator) -> list[dict[str, object]]:
    rows = [_row(eye, f"{eye.patient}_{eye.eye}", f"images/{eye.patient}_{eye.eye}.jpeg", eye.split, str(eye.patient))
            for eye in eyes]
    for split in LABS_SPLITS:
        pd.Series([row["id"] for row in rows if row["split"] == split]).to_csv(
            out / f"{split}_img.csv", header=False, index=False)
        pd.Series([row["grade"] for row in rows if row["split"] == split], dtype=int).to_csv(
            out / f"{split}_label.csv", header=False, index=False)
    return rows


def _write_kaggle_eyepacs(out: Path, eyes: list[_Eye], rng: np.random.Generator) -> list[dict[str, object]]:
    rows = [_row(eye, f"{eye.patient}_{eye.eye}", f"{EYEPACS_FOLDERS[eye.split]}/{eye.patient}_{eye.eye}.jpeg",
                 eye.split, str(eye.patient)) for eye in eyes]
    for split, name in (("train", EYEPACS_TRAIN_LABELS), ("test", EYEPACS_TEST_LABELS)):
        mine = [row for row in rows if row["split"] == split]
        table = pd.DataFrame({"image": [row["id"] for row in mine], "level": [row["grade"] for row in mine]})
        if split == "test":
            table["Usage"] = np.where(rng.random(len(mine)) < _EYEPACS_PUBLIC_SHARE, "Public", "Private")
        table.to_csv(out / name, index=False)
    return rows


def _write_aptos2019(out: Path, eyes: list[_Eye], rng: np.random.Generator) -> list[dict[str, object]]:
    """Train patients' photos graded in train.csv; test patients' listed ungraded in test.csv."""
    codes = [f"{code:012x}" for code in rng.choice(16 ** 12, size=len(eyes), replace=False)]
    rows = [_row(eye, code, f"{APTOS_IMAGES}/{code}.png", "") if eye.split == "train"
            else _row(eye, code, f"{APTOS_TEST_IMAGES}/{code}.png", UNLABELLED) for eye, code in zip(eyes, codes)]
    graded = [row for row in rows if row["split"] == ""]
    pd.DataFrame({"id_code": [row["id"] for row in graded], "diagnosis": [row["grade"] for row in graded]}).to_csv(
        out / APTOS_LABELS, index=False)
    pd.DataFrame({"id_code": [row["id"] for row in rows if row["split"] == UNLABELLED]}).to_csv(
        out / APTOS_TEST_LIST, index=False)
    return rows


def _messidor_names(exam: int) -> tuple[str, str]:
    """An examination's (left, right) file names: Messidor-Original's PNGs for every other one,
    Messidor-Extension's JPGs (upper-case extension) for the rest."""
    if exam % 2 == 0:
        number = 43808 + 24 * exam
        return f"20051020_{number:05d}_0100_PP.png", f"20051020_{number + 1:05d}_0100_PP.png"
    number = 12 + 2 * exam
    return f"IM{number + 1:06d}.JPG", f"IM{number:06d}.JPG"


def _write_messidor2(out: Path, eyes: list[_Eye], rng: np.random.Generator) -> list[dict[str, object]]:
    """Every patient one examination (the set fixes no split); the grades name the JPGs ``.jpg``."""
    ungradable = _ungradable(len(eyes), rng)
    edema = (rng.random(len(eyes)) < 0.5) & [eye.grade >= 2 for eye in eyes]  # referable DME: some moderate+ DR
    rows, table, exams = [], [], []
    for exam, first in enumerate(range(0, len(eyes), 2)):  # _draw_eyes: each patient's left, then right eye
        names = _messidor_names(exam)
        exams.append(MESSIDOR_PAIR_DELIMITER.join(names))
        for index, name in enumerate(names, first):
            eye, bad, stem = eyes[index], bool(ungradable[index]), Path(name).stem
            rows.append(_row(eye, stem, f"{MESSIDOR_IMAGES}/{name}", "", Path(names[0]).stem, gradable=not bad))
            graded = ["", ""] if bad else [eye.grade, int(edema[index])]
            table.append([name if name.endswith(".png") else f"{stem}.jpg", *graded, int(not bad)])
    pd.DataFrame(table, columns=list(MESSIDOR_COLUMNS)).to_csv(out / MESSIDOR_LABELS, index=False)
    _write_text(out / MESSIDOR_PAIRS, [MESSIDOR_PAIR_DELIMITER.join(MESSIDOR_PAIR_COLUMNS), *exams])
    return rows


def _write_idrid(out: Path, eyes: list[_Eye], rng: np.random.Generator) -> list[dict[str, object]]:
    """Each split numbered from IDRiD_001; the CSVs with the set's stray space, empty columns and empty last row."""
    rows = []
    for split in ("train", "test"):
        mine = [eye for eye in eyes if eye.split == split]
        names = [f"IDRiD_{number:03d}" for number in range(1, len(mine) + 1)]
        # Risk of macular edema 0-2, none below moderate DR.
        edema = np.where([eye.grade >= 2 for eye in mine], rng.integers(1, 3, len(mine)), 0)
        lines = [",".join(IDRID_COLUMNS) + ",,,",
                 *(f"{name},{eye.grade},{risk},,," for name, eye, risk in zip(names, mine, edema)), ",,,,,"]
        _write_text(out / IDRID_ROOT / IDRID_LABELS[split], lines)
        rows += [_row(eye, IDRID_ID_PREFIX[split] + name, f"{IDRID_ROOT}/{IDRID_IMAGES[split]}/{name}.jpg", split)
                 for name, eye in zip(names, mine)]
    return rows


def _write_ddr(out: Path, eyes: list[_Eye], rng: np.random.Generator) -> list[dict[str, object]]:
    """The last quarter of the train patients are DDR's valid split; a share of photos graded 5."""
    ungradable = _ungradable(len(eyes), rng)
    train = sorted({eye.patient for eye in eyes if eye.split == "train"})
    valid = set(train[len(train) - len(train) // 4:])
    lists: dict[str, list[str]] = {name: [] for name in DDR_SPLITS}
    rows = []
    for index, (eye, bad) in enumerate(zip(eyes, ungradable)):
        folder = "test" if eye.split == "test" else "valid" if eye.patient in valid else "train"
        # Both of the set's naming schemes: hospital-patient-photo numbers, and capture times.
        name = (f"007-{eye.patient:04d}-{EYES.index(eye.eye):03d}.jpg" if eye.patient % 2
                else f"{20170323093305605 + 7919 * index}.jpg")
        lists[folder].append(f"{name} {DDR_UNGRADABLE if bad else eye.grade}")
        rows.append(_row(eye, Path(name).stem, f"{DDR_ROOT}/{folder}/{name}", DDR_SPLITS[folder], gradable=not bad))
    for folder, lines in lists.items():
        _write_text(out / DDR_ROOT / f"{folder}.txt", lines)
    return rows


def _write_folder(out: Path, eyes: list[_Eye], rng: np.random.Generator) -> list[dict[str, object]]:
    """Every optional column, photos in a folder per split, a share ungradable with a blank grade."""
    ungradable = _ungradable(len(eyes), rng)
    rows, table = [], []
    for eye, bad in zip(eyes, ungradable):
        image_id = f"{eye.patient}_{eye.eye}"
        file = f"photos/{eye.split}/{image_id}.jpg"
        rows.append(_row(eye, image_id, file, eye.split, str(eye.patient), gradable=not bad))
        table.append([file, "" if bad else eye.grade, eye.patient, eye.split, "false" if bad else "true"])
    pd.DataFrame(table, columns=[*FOLDER_COLUMNS, *FOLDER_OPTIONAL]).to_csv(out / FOLDER_LABELS, index=False)
    return rows


_WRITERS: dict[str, Callable[[Path, list[_Eye], np.random.Generator], list[dict[str, object]]]] = {
    "labs": _write_labs,
    "kaggle_eyepacs": _write_kaggle_eyepacs,
    "aptos2019": _write_aptos2019,
    "messidor2": _write_messidor2,
    "idrid": _write_idrid,
    "ddr": _write_ddr,
    "folder": _write_folder,
}


def layout_counts(record: pd.DataFrame) -> dict[str, int]:
    """Photos per split of a generator's record, in the order written (``unsplit``: the caller's to split)."""
    return {split or "unsplit": count for split, count in Counter(record["split"]).items()}


def generate_layout(
    out_dir: str | Path,
    *,
    layout: str = "labs",
    train_patients: int,
    test_patients: int,
    size: tuple[int, int] = (512, 384),
    grade_shares: Sequence[float] = EYEPACS_GRADE_SHARES,
    seed: int = 0,
    jpeg_quality: int | None = None,
    workers: int = 1,
    defects: float = 0.0,
) -> pd.DataFrame:
    """Writes a synthetic copy of a public set in its own layout (``layouts.LAYOUTS``) and returns
    the record of every photo written (``RECORD_COLUMNS``).

    Both eyes of ``train_patients`` + ``test_patients`` patients are drawn as for every layout;
    each layout then names, lists and splits them as its set does (``layouts`` draws each tree):

    * ``labs``: ``{train,test}_img.csv`` / ``_label.csv``, ``images/<patient>_<eye>.jpeg``;
    * ``kaggle_eyepacs``: ``trainLabels.csv`` + ``train/``, the test patients in
      ``retinopathy_solution.csv`` (Usage Public | Private) + ``test/``;
    * ``aptos2019``: the train patients' photos graded in ``train.csv`` + ``train_images/*.png``,
      the test patients' listed ungraded in ``test.csv`` + ``test_images/`` (split ``unlabelled``);
    * ``messidor2``: every patient an examination (PNG and ``.JPG`` names, the grades calling the
      JPGs ``.jpg``), ``messidor_data.csv``, ``messidor-2.csv``, ``IMAGES/``;
    * ``idrid``: each split numbered from ``IDRiD_001``, the CSVs with the set's quirks;
    * ``ddr``: ``DR_grading/{train,valid,test}.txt``, the last quarter of the train patients valid;
    * ``folder``: ``labels.csv`` with every optional column, ``photos/<split>/<patient>_<eye>.jpg``.

    ``UNGRADABLE_SHARE`` of the ``messidor2``, ``ddr`` and ``folder`` photos are labelled
    ungradable and rendered so. ``synthetic.json`` (the arguments and counts) lies in ``out_dir``.

    The output depends only on the arguments other than ``workers``: image ``i`` is rendered from
    ``SeedSequence(seed, spawn_key=(i,))``, so any worker count produces byte-identical files.

    ``jpeg_quality`` None writes as a camera does at camera sizes (longest side >=
    ``CAMERA_MIN_SIDE``: sensor noise, q95 with 4:2:2 chroma, ~2 MB at 3888x2592) and q90 below.

    ``defects`` is the share of photos given one of clinics' defects (``DEFECTS``: frames, text,
    bars, markers, clipping, dark photos, a small fundus); ``fields.csv`` records every photo's
    field of view as drawn (in its pixels, by id) and its defect.
    """
    if layout not in _WRITERS:
        raise SyntheticDataError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    train_patients = _check_count("train_patients", train_patients)
    test_patients = _check_count("test_patients", test_patients)
    width, height = _check_size(size)
    shares = _validate_shares(grade_shares)
    seed = _check_count("seed", seed, minimum=0)
    if jpeg_quality is not None and _check_count("jpeg_quality", jpeg_quality) > 100:
        raise SyntheticDataError(f"jpeg_quality must be in 1..100, got {jpeg_quality!r}")
    workers = _check_count("workers", workers)
    if not isinstance(defects, numbers.Real) or not 0 <= defects <= 1:
        raise SyntheticDataError(f"defects must be a share in [0, 1], got {defects!r}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    eyes = _draw_eyes(train_patients, test_patients, shares, rng)
    record = pd.DataFrame(_WRITERS[layout](out, eyes, rng))
    for folder in sorted({(out / file).parent for file in record["file"]}):
        folder.mkdir(parents=True, exist_ok=True)
    tasks = [_RenderTask(str(out / row.file), row.id, row.drawn, row.eye, (width, height), seed, index,
                         jpeg_quality, float(defects), not row.gradable)
             for index, row in enumerate(record.itertuples(index=False))]
    pd.DataFrame(_render_all(tasks, workers)).to_csv(out / FIELDS_FILE, index=False)
    counts = layout_counts(record)
    (out / SYNTHETIC_MARKER).write_text(json.dumps({
        "generator": "retina-flow synthetic fundus generator (pipeline/data/synthetic.py)",
        "size": [width, height], "camera_format": is_camera_size((width, height)), "grade_shares": [float(s) for s in shares], "seed": seed, "counts": counts,
        "defects": float(defects),
        "jpeg_quality": jpeg_quality,  # None: the camera's settings at camera sizes (save_photo)
    }, indent=2))
    logger.info("Synthetic %s layout written to %s: %s", layout, out, counts)
    return record[list(RECORD_COLUMNS)]


def generate_eyepacs_layout(out_dir: str | Path, **options: Any) -> dict[str, int]:
    """Writes the Kaggle EyePACS course-lab layout (or the ``layout`` option's, see
    ``generate_layout``, whose options it takes) and returns the image count per split.

    Layout: ``{train,test}_img.csv`` (image ids, no header), ``{train,test}_label.csv`` (grades
    0-4, same rows, no header) and ``images/<id>.jpeg``.  Ids are ``<patient>_left`` and
    ``<patient>_right``; train and test patients are disjoint.
    """
    return layout_counts(generate_layout(out_dir, **options))
