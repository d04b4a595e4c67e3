"""The field of view of a fundus photo: the round patch of retina the camera saw, found on any camera's photo.

A fundus camera sees the retina through a round aperture, so a photo is a bright disc on a darker
surround, often cut by the sensor's edges (top and bottom on most 3:2 cameras). The surround is
black on most cameras but dark grey or coloured on others, and clinics' exports add burnt-in text,
bars along an edge and corner markers to it; a dim, myopic periphery may fade almost into it.
Brightness thresholds mistake all of these for retina. What every camera's photo keeps is the
aperture's round edge, so the field is found as that circle:

1. a working copy of the photo about ``WORK_SIDE`` px on its long side, box-averaged (burnt-in
   text and vessels, a few pixels thin, fade into their surroundings);
2. the light a retina returns, max(red, green), on a log scale: a blue or grey frame returns
   less of it, and a dim rim against black is as large a *ratio* as a bright retina against grey;
3. Canny edge points with the direction of their gradient (scikit-image);
4. a RANSAC circle fit (``skimage.measure.ransac`` with ``CircleModel``) over the edge points whose
   gradient points at the circle's centre (the retina is brighter than its surround): text,
   bars, markers, the optic disc and the notch of some cameras are outliers;
5. refined on a copy twice as fine: the steepest fall of ``RAYS`` radial profiles across the
   fitted edge, refitted by least squares without the rays that missed it;
6. straight cuts: where the circle leaves the photo, and where a bar or band along an edge covers
   the field (a straight edge across the field with no arc beyond it);
7. checks that it is a fundus at all (``NotAFundusError`` otherwise): enough of the visible
   circle has an edge, the disc is clearly brighter than its surround, and in a colour photo
   the disc is red as retina is.

Coordinates are the photo's pixels, x to the right and y down from the photo's top-left corner
(a pixel's centre is at +0.5). No torch here: the served graders prepare photos with this module.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageChops
from scipy import ndimage
from skimage.feature import canny
from skimage.measure import CircleModel, ransac

from pipeline.errors import DataError

# The four edges of a photo, in the order ``clipped`` lists them.
EDGES = ("top", "bottom", "left", "right")
# A field of view as the manifest (and the generator's fields.csv) records it: ``field_record``.
FIELD_COLUMNS = ("fundus_x", "fundus_y", "fundus_radius", "clipped")

# --- The numbers that tune the search, each explained once ----------------------------------
# The working copy's long side: the disc's edge then spans hundreds of pixels (a RANSAC fit of
# them is sub-pixel), while strokes of text and vessels average out and a fit costs ~1 ms.
WORK_SIDE = 192
# Grey levels added before the log: below it, sensor and JPEG noise in a black surround would
# make large ratios of its own.
LOG_OFFSET = 6.0
# Canny on the log image (gaussian sigma in working pixels; thresholds on the Sobel magnitude,
# about 3.2 x the log-ratio of a step across one sigma): a step of ratio ~1.6 starts an edge and
# one of ~1.3 continues it; the disc's edge is a ratio of 2-20 against black, 1.5-3 against grey.
CANNY_SIGMA = 1.0
CANNY_LOW, CANNY_HIGH = 0.8, 1.5
# An edge point belongs to the circle only if its gradient points within this angle of the centre.
MAX_NORMAL_ANGLE = math.radians(40)
# RANSAC: a point is an inlier within this share of the working copy's long side (~1 px), the
# fit stops once it is this sure it has seen an all-inlier sample, and never tries more often.
INLIER_SHARE = 1 / WORK_SIDE
RANSAC_STOP_PROBABILITY = 0.999
RANSAC_MAX_TRIALS = 400
MAX_EDGE_POINTS = 500  # an evenly thinned subset beyond this: the fit's cost grows with them
# The refinement: rays across the fitted edge, each sampled this far inside and outside it.
RAYS = 180
RAY_BAND = 0.12  # of the radius
RAY_SMOOTHING = 0.01  # of the radius (at least 1 px): the Gaussian along each ray
RAY_LAG = 0.02  # of the radius (at least 2 px): the fall is measured across this much of the ray
# A ray finds an edge where its profile falls by this much (log ratio ~1.13): a dark rim on a
# frame almost as bright; the edge as a whole must be a clearer step (MIN_EDGE_CONTRAST).
MIN_RAY_FALL = 0.12
# Most rays cross the aperture's edge itself, so a least-squares circle refitted without the
# points further from it than OUTLIER_SPREADS robust standard deviations (or 1 px) is exact.
REFIT_ROUNDS = 2
OUTLIER_SPREADS = 3.0
COARSE_TOLERANCE = 0.03  # of the radius: the coarse circle is within a working pixel
# A ray sees the edge where its steepest fall lies within this share of the radius (or 1 px) of
# the refined circle: on fundus photos 90-100% of the visible rays do, on other pictures < 45%.
SUPPORT_TOLERANCE = 0.01
# A plausible field: a radius of at least the first share of the photo's short side and at most
# the second of its long side, the centre no further outside the photo than this share of the radius.
MIN_RADIUS_SHARE, MAX_RADIUS_SHARE = 0.08, 1.0
MAX_CENTRE_OUTSIDE = 0.35
# A fundus: of the circle's visible length, at least this share shows the edge, which is at
# least this much of the whole circle; across it the retina is this much brighter (median log
# ratio over the edge, ~1.16: a dark synthetic rim on a grey frame comes to ~1.2).
MIN_SUPPORT = 0.7
MIN_VISIBLE_ARC = 0.2
MIN_EDGE_CONTRAST = 0.15
# A cut: a straight edge (a step of at least CUT_STEP) across at least this share of the field's
# chord, with no arc beyond it,
# no deeper than this share of the radius into the field; a photo's border cuts the field when
# the circle leaves it by more than CUT_TOLERANCE of the radius.
CUT_SPAN = 0.8
CUT_MAX_DEPTH = 0.6
CUT_STEP = 0.25  # the step (log ratio, ~1.28) across a cut at each point of its chord
CUT_TOLERANCE = 0.02
# A crop's resampling: antialiased bilinear (a triangle filter as wide as the reduction), as
# torchvision's Resize; bicubic kept a little more contrast at 1.8x its cost, the largest step of
# preparing a photo after the decode.
CROP_RESAMPLING = Image.Resampling.BILINEAR
# The outermost ring of the field left black in a crop: the fitted edge is within ~1% of the
# true one, and no pixel of the surround may reach the network.
EDGE_MARGIN = 0.02
# Colour photos: the retina's red exceeds its blue by this log ratio (a white cup or a grey
# frame does not); photos whose channels differ by less than CHROMA_LEVELS are greyscale.
MIN_RED_OVER_BLUE = 0.3
CHROMA_LEVELS = 4.0


class NotAFundusError(DataError):
    """No plausible fundus in the photo: the grader never guesses at one."""


@dataclass(frozen=True)
class FieldOfView:
    """The round field of a fundus photo, in the photo's pixels.

    The field is the circle (``x``, ``y``, ``radius``) seen through the rectangle ``left``..
    ``right`` x ``top``..``bottom``: the photo's border, or a straight cut (a bar or band
    covering the field along an edge) inside it.
    """

    x: float
    y: float
    radius: float
    left: float
    top: float
    right: float
    bottom: float

    @property
    def clipped(self) -> tuple[str, ...]:
        """The edges where a straight cut ends the field inside its circle: ``top``, ``bottom``, ..."""
        reach = {"top": self.y - self.radius, "bottom": self.y + self.radius,
                 "left": self.x - self.radius, "right": self.x + self.radius}
        bound = {"top": self.top, "bottom": self.bottom, "left": self.left, "right": self.right}
        sign = {"top": 1, "bottom": -1, "left": 1, "right": -1}
        return tuple(edge for edge in EDGES
                     if sign[edge] * (bound[edge] - reach[edge]) > CUT_TOLERANCE * self.radius)

    def scaled(self, sx: float, sy: float) -> FieldOfView:
        """The same field in a copy of the photo scaled by ``sx`` across and ``sy`` down."""
        return FieldOfView(self.x * sx, self.y * sy, self.radius * (sx + sy) / 2,
                           self.left * sx, self.top * sy, self.right * sx, self.bottom * sy)

    def contains(self, xs: np.ndarray, ys: np.ndarray, margin: float = EDGE_MARGIN) -> np.ndarray:
        """Whether the points (broadcast ``xs``, ``ys``) lie in the field, less ``margin`` of its
        radius (``EDGE_MARGIN``: the ring a crop leaves black)."""
        inside = (xs - self.x) ** 2 + (ys - self.y) ** 2 <= (self.radius * (1 - margin)) ** 2
        margin = margin * self.radius
        cut = {edge: margin if edge in self.clipped else 0.0 for edge in EDGES}
        return (inside & (xs >= self.left + cut["left"]) & (xs <= self.right - cut["right"])
                & (ys >= self.top + cut["top"]) & (ys <= self.bottom - cut["bottom"]))

    def mask(self, width: int, height: int, margin: float = EDGE_MARGIN) -> np.ndarray:
        """Boolean (height, width) mask of the pixels of a photo of that size whose centres lie in
        the field (less ``margin``, see ``contains``)."""
        ys, xs = np.ogrid[:height, :width]
        return self.contains(xs + 0.5, ys + 0.5, margin)

    def record(self) -> dict[str, float | str]:
        """``FIELD_COLUMNS``: the centre and radius (rounded to 0.01 px) and the cut edges, comma-separated."""
        return dict(zip(FIELD_COLUMNS, (round(self.x, 2), round(self.y, 2), round(self.radius, 2), ",".join(self.clipped))))


def crop_field(img: Image.Image, fov: FieldOfView, size: int) -> Image.Image:
    """The square around the field's circle, resized to ``size``, black outside the field.

    The square may extend past the photo (a clipped field): that part is black too.
    """
    left, top = fov.x - fov.radius, fov.y - fov.radius
    # PIL pads a crop that leaves the image with black; the float box then resamples the circle's
    # exact square out of it, so the field's centre is the crop's to a fraction of a pixel.
    box = (math.floor(left), math.floor(top), math.ceil(fov.x + fov.radius), math.ceil(fov.y + fov.radius))
    side = 2 * fov.radius
    square = img.crop(box).resize((size, size), CROP_RESAMPLING,
                                  box=(left - box[0], top - box[1], left - box[0] + side, top - box[1] + side))
    square = ImageChops.darker(square, _circle_mask(size, _reach(fov, size)))  # min() with a cached mask
    for region in _cut_regions(fov, size):
        square.paste((0, 0, 0), region)
    return square


def crop_mask(fov: FieldOfView, size: int, inset: float = 0.0) -> np.ndarray:
    """Boolean (size, size) mask of the pixels ``crop_field`` keeps (the field less its margin), or
    of those ``inset`` more pixels inside the field's edges."""
    reach = _reach(fov, size)
    mask = np.asarray(_circle_mask(size, reach + inset))[..., 0] > 0
    for left, top, right, bottom in _cut_regions(fov, size, inset):
        mask[top:bottom, left:right] = False
    return mask


def _reach(fov: FieldOfView, size: int) -> float:
    """How far (output pixels) the resampling filter reaches: an output pixel blends the photo's
    pixels within one output pixel (downscaling) or one photo pixel (upscaling) of its centre,
    and none of them may be the surround, so the kept field ends this much inside the margin."""
    return round(max(1.0, size / (2 * fov.radius)), 2)


def _cut_regions(fov: FieldOfView, size: int, inset: float = 0.0) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes of a ``size`` crop beyond each straight cut (less the
    margin, the filter's reach and ``inset``): black in the crop."""
    left, top = fov.x - fov.radius, fov.y - fov.radius
    scale = size / (2 * fov.radius)  # output pixels per photo pixel
    margin = EDGE_MARGIN * fov.radius * scale + _reach(fov, size) + inset
    regions = []
    for edge in fov.clipped:
        # A pixel goes when its centre is beyond the cut, less the margin.
        cut = (getattr(fov, edge) - (left if edge in ("left", "right") else top)) * scale
        if edge in ("top", "left"):
            first_kept = max(0, min(size, math.ceil(cut + margin - 0.5)))
            region = (0, 0, size, first_kept) if edge == "top" else (0, 0, first_kept, size)
        else:
            kept_end = max(0, min(size, math.floor(cut - margin - 0.5) + 1))
            region = (0, kept_end, size, size) if edge == "bottom" else (kept_end, 0, size, size)
        if region[2] > region[0] and region[3] > region[1]:
            regions.append(region)
    return regions


@functools.lru_cache(maxsize=16)
def _circle_mask(size: int, reach: float) -> Image.Image:
    """White inside the circle of a ``size`` crop, less ``EDGE_MARGIN`` and ``reach`` output
    pixels, black outside; RGB."""
    centre, radius = size / 2, size / 2 * (1 - EDGE_MARGIN) - reach
    ys, xs = np.ogrid[:size, :size]
    inside = (xs + 0.5 - centre) ** 2 + (ys + 0.5 - centre) ** 2 <= radius ** 2
    return Image.fromarray(np.where(inside, 255, 0).astype(np.uint8)).convert("RGB")


# --- Finding the field ---------------------------------------------------------------------------


def find_field_of_view(img: Image.Image) -> FieldOfView:
    """The field of view of an RGB fundus photo, in its pixels.

    Raises:
        NotAFundusError: no plausible fundus (its message says what was missing).
    """
    # The circle is found on the working copy and refined (cuts and checks too) on one twice as
    # fine; a pixel of a reduced copy is ``factor`` of the photo's (reduce() rounds sizes up).
    factor = max(1, round(max(img.size) / (2 * WORK_SIDE)))
    fine = img.reduce(factor) if factor > 1 else img
    circle = _coarse_circle(_log(_retina_light(fine.reduce(2))))
    if circle is None:
        raise NotAFundusError("not a fundus photograph: no round edge of a field of view was found")
    light = _log(_retina_light(fine))
    x, y, radius, support = _refine(light, *(value * 2 for value in circle))
    fov = FieldOfView(x, y, radius, 0.0, 0.0, float(fine.width), float(fine.height))
    channels = _Channels(light, fine)
    for edge in EDGES:
        cut = _straight_cut(fov, channels, support, edge)
        if cut is not None:
            fov = replace(fov, **{edge: cut})
    _check_plausible(fov, fine, support)
    # Back to the photo's pixels: cuts at the copy's border are the photo's border.
    photo = fov.scaled(factor, factor)
    return replace(photo, right=float(img.width) if fov.right == fine.width else photo.right,
                   bottom=float(img.height) if fov.bottom == fine.height else photo.bottom)


class _Channels:
    """The log light and, made when first asked for, the log of the dullest channel: so that a
    white bar on a red retina is a step too."""

    def __init__(self, light: np.ndarray, img: Image.Image) -> None:
        self.light, self.img, self._dullest = light, img, None

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.light
        if self._dullest is None:
            self._dullest = _log(_dullest(self.img))
        yield self._dullest

    @property
    def shape(self) -> tuple[int, int]:
        return self.light.shape


def _retina_light(img: Image.Image) -> Image.Image:
    """max(red, green) per pixel: a retina returns red and green light; blue carries little of it
    but noise, and the frames of some cameras' software are blue."""
    if img.mode != "RGB":
        return img.convert("L")
    red, green, _ = img.split()
    return ImageChops.lighter(red, green)


def _dullest(img: Image.Image) -> Image.Image:
    """min(R, G, B) per pixel: high only where all three are, as on a white bar or text."""
    if img.mode != "RGB":
        return img.convert("L")
    red, green, blue = img.split()
    return ImageChops.darker(ImageChops.darker(red, green), blue)


def _log(img: Image.Image) -> np.ndarray:
    """log(1 + level / LOG_OFFSET) of an L image, float32."""
    return _LOG_TABLE[np.asarray(img)]


_LOG_TABLE = np.log1p(np.arange(256, dtype=np.float32) / LOG_OFFSET).astype(np.float32)


class _InwardCircle:
    """A ``CircleModel`` whose points count only where their gradient points at its centre."""

    cos_limit = math.cos(MAX_NORMAL_ANGLE)

    def __init__(self, circle: CircleModel) -> None:
        self.circle = circle

    @classmethod
    def from_estimate(cls, points: np.ndarray, normals: np.ndarray) -> _InwardCircle | object:
        circle = CircleModel.from_estimate(points)
        return cls(circle) if circle else circle  # a failed estimate is falsy (skimage's FailedEstimation)

    def residuals(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        offset = self.circle.center - points
        distance = np.hypot(offset[:, 0], offset[:, 1])
        residual = np.abs(distance - self.circle.radius)
        facing = np.einsum("ij,ij->i", offset, normals) >= self.cos_limit * distance
        return np.where(facing, residual, np.inf)


def _coarse_circle(light: np.ndarray) -> tuple[float, float, float] | None:
    """(x, y, radius) of the circle most edge points of the log light image follow, in its pixels."""
    smoothed = ndimage.gaussian_filter(light, CANNY_SIGMA, mode="nearest")
    # Smoothed once for both: canny's own smoothing is off.
    edges = canny(smoothed, sigma=0, low_threshold=CANNY_LOW, high_threshold=CANNY_HIGH, mode="nearest")
    edges[[0, -1], :] = edges[:, [0, -1]] = False  # the central differences below need both neighbours
    rows, cols = np.nonzero(edges)
    if rows.size < 8:
        return None
    if rows.size > MAX_EDGE_POINTS:
        keep = np.linspace(0, rows.size - 1, MAX_EDGE_POINTS).astype(int)
        rows, cols = rows[keep], cols[keep]
    gx = smoothed[rows, cols + 1] - smoothed[rows, cols - 1]
    gy = smoothed[rows + 1, cols] - smoothed[rows - 1, cols]
    length = np.hypot(gx, gy)
    points = np.column_stack([cols + 0.5, rows + 0.5])
    normals = np.column_stack([gx / length, gy / length])
    height, width = light.shape
    short, long_side = min(width, height), max(width, height)

    def plausible(model: _InwardCircle, sample: np.ndarray, sample_normals: np.ndarray) -> bool:
        (x, y), radius = model.circle.center, model.circle.radius
        if not MIN_RADIUS_SHARE * short <= radius <= MAX_RADIUS_SHARE * long_side:
            return False
        outside = MAX_CENTRE_OUTSIDE * radius
        if not (-outside <= x <= width + outside and -outside <= y <= height + outside):
            return False
        return bool(np.isfinite(model.residuals(sample, sample_normals)).all())

    def converging(sample: np.ndarray, sample_normals: np.ndarray) -> bool:
        # A chord of a circle lies inside it: from each point, the others are on its inner side.
        chords = sample[None, :, :] - sample[:, None, :]  # [i, j] = point j - point i
        return bool((np.einsum("ijk,ik->ij", chords, sample_normals)[~np.eye(3, dtype=bool)] > 0).all())

    with warnings.catch_warnings():
        # skimage warns where no sample made a valid circle: a picture with no field, refused below.
        warnings.filterwarnings("ignore", message="(No inliers found|Estimated model is not valid)",
                                category=UserWarning)
        model, inliers = ransac((points, normals), _InwardCircle, min_samples=3,
                                residual_threshold=INLIER_SHARE * long_side, is_data_valid=converging,
                                is_model_valid=plausible, max_trials=RANSAC_MAX_TRIALS,
                                stop_probability=RANSAC_STOP_PROBABILITY, rng=np.random.default_rng(0))
    if not model or inliers is None or inliers.sum() < 8:
        return None
    (x, y), radius = model.circle.center, model.circle.radius
    return float(x), float(y), float(radius)


@dataclass(frozen=True)
class _Support:
    """Where the refined circle's edge was seen, per ray: its angle, whether an inlier edge point
    was found on it, that point, and the log contrast across it."""

    angles: np.ndarray
    seen: np.ndarray
    points: np.ndarray  # (RAYS, 2); NaN where not seen
    contrast: np.ndarray


def _refine(light: np.ndarray, cx: float, cy: float, radius: float) -> tuple[float, float, float, _Support]:
    """The circle refitted to the steepest fall of each ray's profile across the coarse edge
    (``light``: the log light image, ``_log(_retina_light(...))``)."""
    height, width = light.shape
    angles = np.linspace(0, 2 * np.pi, RAYS, endpoint=False)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    distance = radius + np.arange(-RAY_BAND * radius, RAY_BAND * radius + 1)[None]  # 1 px apart
    xs, ys = cx + cos * distance, cy + sin * distance  # (RAYS, samples), continuous coordinates
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    # The pixel each sample falls in: sub-pixel accuracy comes from fitting many rays at once.
    rows = np.clip(ys, 0, height - 1).astype(np.intp)
    cols = np.clip(xs, 0, width - 1).astype(np.intp)
    # Smoothed along the ray, then the fall over a few % of the radius: the aperture's step, sharp
    # or blurred (a photo out of focus), not a noisy pixel; its centre is the edge.
    profiles = ndimage.gaussian_filter1d(light[rows, cols], max(1.0, RAY_SMOOTHING * radius), axis=1, mode="nearest")
    lag = max(2, round(RAY_LAG * radius))
    fall = np.where(inside[:, :-lag] & inside[:, lag:], profiles[:, :-lag] - profiles[:, lag:], -np.inf)
    best = np.argmax(fall, axis=1)
    rays = np.arange(RAYS)
    contrast = fall[rays, best]
    found = contrast >= MIN_RAY_FALL
    # The fall's peak to a fraction of a sample: the vertex of the parabola through it and its
    # neighbours (a blurred edge has a broad peak, whose top one sample may miss by several).
    left, right = fall[rays, np.maximum(best - 1, 0)], fall[rays, np.minimum(best + 1, fall.shape[1] - 1)]
    with np.errstate(invalid="ignore"):  # rays that leave the photo: -inf there, no vertex taken
        curvature = left - 2 * contrast + right
        usable = np.isfinite(curvature) & (curvature < 0)
        shift = np.where(usable, 0.5 * (left - right) / np.where(usable, curvature, -1.0), 0.0)
    edge = distance[0, best] + np.clip(shift, -0.5, 0.5) + lag / 2
    points = np.column_stack([cx + cos[:, 0] * edge, cy + sin[:, 0] * edge])
    # Start from the rays that crossed the coarse circle's edge (rays stopped by a cut or a bar
    # first cross something else), then refit by least squares without the rays that miss it.
    residual = np.abs(np.hypot(points[:, 0] - cx, points[:, 1] - cy) - radius)
    tolerance = max(1.0, SUPPORT_TOLERANCE * radius)
    seen = found & (residual <= max(2.0, COARSE_TOLERANCE * radius))
    for _ in range(REFIT_ROUNDS):
        circle = CircleModel.from_estimate(points[seen]) if seen.sum() >= 6 else None
        if not circle:
            seen[:] = False
            break
        (cx, cy), radius = circle.center, circle.radius
        residual = np.abs(circle.residuals(points))
        spread = 1.4826 * np.median(residual[seen])  # the residuals' standard deviation, robustly
        tolerance = max(1.0, SUPPORT_TOLERANCE * radius)
        seen = found & (residual <= max(tolerance, OUTLIER_SPREADS * spread))
    # The edge is seen where a ray's crossing is on the circle itself: a circle that a textured
    # picture's edges happen to suggest is followed by a few of them at most.
    seen &= residual <= tolerance if seen.any() else seen
    points[~seen] = np.nan
    return float(cx), float(cy), float(radius), _Support(angles, seen, points, np.where(seen, contrast, 0.0))


def _straight_cut(fov: FieldOfView, channels: _Channels, support: _Support, edge: str) -> float | None:
    """Where a straight edge across the field ends it on ``edge``'s side, if one does (in the
    coordinates of ``channels``, which ``fov`` and ``support`` share).

    A cut runs along the rows (top, bottom) or columns (left, right), between the circle's extreme
    (or the photo's border) and ``CUT_MAX_DEPTH`` radii in; across at least ``CUT_SPAN`` of the
    field's chord it is a step of one sign, and no edge point of the arc lies beyond it.
    """
    # Turn the photo so that ``edge`` is its top: lines are rows, counted from that edge.
    turn = {"top": lambda a: a, "bottom": lambda a: a[::-1], "left": lambda a: a.T, "right": lambda a: a.T[::-1]}[edge]
    lines, length = turn(channels.light).shape
    flipped = edge in ("bottom", "right")
    along, centre = (fov.x, fov.y) if edge in ("top", "bottom") else (fov.y, fov.x)
    seen = support.points[support.seen]
    depth = seen[:, 1] if edge in ("top", "bottom") else seen[:, 0]
    if flipped:
        centre, depth = lines - centre, lines - depth
    # No arc beyond a cut, where the circle's own edge would go on if nothing covered it: a cut
    # lies between the circle's extreme and the outermost edge point seen on this side.
    outermost = depth.min() if depth.size else centre
    first = max(2, math.ceil(centre - (1 - CUT_TOLERANCE) * fov.radius))
    last = min(lines - 2, math.floor(outermost) + 1, math.floor(centre - (1 - CUT_MAX_DEPTH) * fov.radius))
    if last < first:
        return None
    # The mean of two lines on each side of each candidate line (a cut between line l - 1 and l),
    # compared over the chord of the outer line, where both sides lie inside the circle.
    candidates = np.arange(first, last + 1)
    half = np.sqrt(np.maximum(0.0, fov.radius ** 2 - (candidates - 2 - centre) ** 2)) * 0.9
    chord = np.abs(np.arange(length)[None] + 0.5 - along) <= half[:, None]
    width = chord.sum(axis=1)
    span = np.zeros(len(candidates))
    for channel in channels:
        image = turn(channel)[first - 2:last + 2]  # the lines the candidates compare
        pairs = (image[:-1] + image[1:]) / 2
        step = pairs[candidates - first + 2] - pairs[candidates - first]  # field side minus covered side
        brighter = ((step > CUT_STEP) & chord).sum(axis=1)
        darker = ((step < -CUT_STEP) & chord).sum(axis=1)
        span = np.maximum(span, np.where(width >= 8, np.maximum(brighter, darker) / np.maximum(width, 1), 0.0))
    best = int(np.argmax(span))
    if span[best] < CUT_SPAN:
        return None
    line = float(candidates[best])
    return lines - line if flipped else line


def _check_plausible(fov: FieldOfView, img: Image.Image, support: _Support) -> None:
    """Refuses a field that is no fundus's (``fov`` and ``support`` in ``img``'s pixels)."""
    width, height = img.size
    if not MIN_RADIUS_SHARE * min(width, height) <= fov.radius <= MAX_RADIUS_SHARE * max(width, height):
        raise NotAFundusError("not a fundus photograph: no field of view of a plausible size was found")
    xs = fov.x + np.cos(support.angles) * fov.radius
    ys = fov.y + np.sin(support.angles) * fov.radius
    visible = (xs >= fov.left) & (xs <= fov.right) & (ys >= fov.top) & (ys <= fov.bottom)
    if visible.mean() < MIN_VISIBLE_ARC:
        raise NotAFundusError("not a fundus photograph: too little of a round field's edge is in the photo")
    seen = support.seen & visible
    if seen.sum() < MIN_SUPPORT * visible.sum():
        raise NotAFundusError(
            f"not a fundus photograph: the edge of a round field follows only {seen.sum() / visible.sum():.0%} "
            f"of the circle that fits it best")
    if np.median(support.contrast[seen]) < MIN_EDGE_CONTRAST:
        raise NotAFundusError("not a fundus photograph: the field is not brighter than its surround")
    # Every 4th pixel of every 4th line of the field: a median needs no more.
    rgb = np.asarray(img.convert("RGB"))[::4, ::4]
    ys, xs = np.ogrid[:rgb.shape[0], :rgb.shape[1]]
    rgb = rgb[fov.contains(xs * 4 + 0.5, ys * 4 + 0.5)].astype(np.float32)
    if len(rgb) == 0:
        raise NotAFundusError("not a fundus photograph: the field holds no pixels")
    red, _, blue = np.median(rgb, axis=0)
    chroma = np.median(np.abs(rgb[:, 0] - rgb[:, 1]) + np.abs(rgb[:, 1] - rgb[:, 2]))
    if chroma >= CHROMA_LEVELS and _LOG_TABLE[int(red)] - _LOG_TABLE[int(blue)] < MIN_RED_OVER_BLUE:
        raise NotAFundusError("not a fundus photograph: the round field is not the colour of a retina")
