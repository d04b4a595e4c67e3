"""The field of view on real photos with known answers, and on the synthetic generator's photos."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.fov import EDGES, FieldOfView, NotAFundusError, crop_field, find_field_of_view
from pipeline.data.photos import decode
from pipeline.data.prepare import cache_image
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_eyepacs_layout
from tests.real_photos import HARD_CASES, NON_FUNDUS, RETINA_EDGE_POINTS, RETINA_FIELD, hard_case, non_fundus, retina

TOLERANCE = 0.03  # of the true radius: the centre's distance and the radius' error


def cut_depths(field: FieldOfView) -> dict[str, float]:
    """How far inside the circle each edge's bound lies, in radii (< 0: the circle ends first)."""
    reach = {"top": field.y - field.radius, "bottom": field.y + field.radius,
             "left": field.x - field.radius, "right": field.x + field.radius}
    sign = {"top": 1, "bottom": -1, "left": 1, "right": -1}
    return {edge: sign[edge] * (getattr(field, edge) - reach[edge]) / field.radius for edge in EDGES}


def assert_clipped_agrees(found: FieldOfView, truth: FieldOfView) -> None:
    """Edges cut clearly (> 5% of the radius) are reported, edges the circle never reaches are
    not; a cut of a few percent may go either way."""
    depths = cut_depths(truth)
    for edge, depth in depths.items():
        if depth > 0.05:
            assert edge in found.clipped, (edge, depth, found.clipped)
        if depth < 0:
            assert edge not in found.clipped, (edge, depth, found.clipped)


def test_the_hand_measurement_of_the_real_photo_is_reproducible():
    """The truth of every hard case, measured again as ``real_photos`` says it was, without the
    code under test: half-level crossings along 24 rays, a least-squares circle without the notch's ray."""
    from scipy.ndimage import map_coordinates

    brightest = retina().pixels.max(axis=2).astype(float)
    centre, points = np.array([704.0, 703.0]), []
    for degrees in range(0, 360, 15):
        if degrees == 315:  # the ray into the camera's notch
            continue
        direction = np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))])
        radii = np.arange(600, 720, 0.25)
        xy = centre + radii[:, None] * direction
        profile = map_coordinates(brightest, [xy[:, 1], xy[:, 0]], order=1)
        half = (np.median(profile[(radii > 640) & (radii < 670)]) + np.median(profile[radii > 705])) / 2
        below = np.flatnonzero((profile < half) & (radii > 650))[0]
        radius = radii[below - 1] + (profile[below - 1] - half) / (profile[below - 1] - profile[below]) * 0.25
        points.append(centre + radius * direction)
    points = np.array(points)
    assert np.abs(points - RETINA_EDGE_POINTS).max() < 0.15
    solution = np.linalg.lstsq(np.c_[2 * points, np.ones(len(points))], (points ** 2).sum(axis=1), rcond=None)[0]
    x, y = solution[:2]
    radius = np.sqrt(solution[2] + x ** 2 + y ** 2)
    # In pixel-edge coordinates (index + 0.5), as FieldOfView states positions.
    assert (x + 0.5, y + 0.5, radius) == pytest.approx((RETINA_FIELD.x, RETINA_FIELD.y, RETINA_FIELD.radius), abs=0.02)


@pytest.mark.parametrize("name", list(HARD_CASES))
def test_every_hard_case_survives_the_reduced_decode_of_a_camera_jpeg(name):
    """The path preprocess and the graders take: the case saved as a q95 JPEG, prepared for a
    256 px cache (a DCT-reduced decode where the photo allows it); its field in the photo's pixels."""
    photo = hard_case(name)
    buffer = io.BytesIO()
    photo.image.save(buffer, format="JPEG", quality=95)
    field = cache_image(buffer.getvalue(), 256).field
    truth = photo.field
    assert np.hypot(field.x - truth.x, field.y - truth.y) <= TOLERANCE * truth.radius
    assert abs(field.radius - truth.radius) <= TOLERANCE * truth.radius


@pytest.mark.parametrize("name", list(HARD_CASES))
def test_every_hard_case_is_found_within_3_percent_and_its_crop_holds_no_frame(name):
    photo = hard_case(name)
    found = find_field_of_view(photo.image)
    truth = photo.field
    assert np.hypot(found.x - truth.x, found.y - truth.y) <= TOLERANCE * truth.radius
    assert abs(found.radius - truth.radius) <= TOLERANCE * truth.radius
    assert_clipped_agrees(found, truth)
    kept = found.mask(*photo.size)
    assert not (kept & photo.foreign).any(), "text, a bar or a marker is inside the field"
    assert not (kept & ~photo.field_mask()).any(), "the frame is inside the field"
    # The crop itself: an image that is white exactly on the frame and the painted things comes
    # out black, and the retina fills the crop's circle.
    outside = Image.fromarray(np.where((~photo.field_mask() | photo.foreign)[..., None], 255, 0).astype(np.uint8)
                              .repeat(3, axis=2))
    assert np.asarray(crop_field(outside, found, 128)).max() < 8
    retina = np.asarray(crop_field(photo.image, found, 128)).astype(int)
    assert retina[40:88, 40:88, 0].mean() > 20  # the field's middle is retina, not black


def test_a_dark_frame_is_not_taken_for_retina_where_a_brightness_threshold_would():
    """On a dark-grey frame, 10% of the 99th percentile grey level (the old rule) is below the
    frame's level: everything counts as fundus. The circle fit ignores the frame."""
    photo = hard_case("text burnt into a grey frame")
    grey = np.asarray(photo.image.convert("L"))
    assert (grey > 0.1 * np.percentile(grey, 99)).mean() > 0.99
    found = find_field_of_view(photo.image)
    assert abs(found.radius - photo.field.radius) < 0.01 * photo.field.radius


def test_a_clipped_field_keeps_its_true_radius_and_reports_its_cuts():
    photo = hard_case("clipped top and bottom")
    found = find_field_of_view(photo.image)
    assert found.clipped == ("top", "bottom")
    assert 2 * found.radius > photo.size[1] * 1.15  # the circle is 1/0.85 of the photo's height
    assert found.top == 0 and found.bottom == photo.size[1]


def test_a_bar_over_the_field_becomes_a_cut_at_the_bar():
    photo = hard_case("white bar over a clipped edge")
    found = find_field_of_view(photo.image)
    assert "bottom" in found.clipped
    assert abs(found.bottom - photo.field.bottom) <= 0.01 * photo.field.radius  # the bar's inner edge


@pytest.mark.parametrize("name", NON_FUNDUS)
@pytest.mark.parametrize("size", [None, (1600, 1200), (300, 200)])
def test_pictures_of_other_things_are_not_fundus_photographs(name, size):
    picture = non_fundus(name)
    with pytest.raises(NotAFundusError, match="^not a fundus photograph"):
        find_field_of_view(picture if size is None else picture.resize(size))


@pytest.mark.parametrize("level", [0, 90, 255])
def test_a_blank_frame_is_not_a_fundus_photograph(level):
    with pytest.raises(NotAFundusError, match="not a fundus photograph"):
        find_field_of_view(Image.new("RGB", (400, 300), (level, level, level)))


def old_threshold_box(img: Image.Image) -> tuple[float, float, float]:
    """The rule this module replaced (threshold at 10% of the 99th-percentile grey level; rows and
    columns with 2% bright pixels), kept as the reference its results must agree with: centre and
    radius of its square, in the image's pixels."""
    grey = np.asarray(img.convert("L"))
    mask = grey > max(5.0, 0.1 * np.percentile(grey, 99))
    rows = np.flatnonzero(np.count_nonzero(mask, axis=1) > 0.02 * grey.shape[1])
    cols = np.flatnonzero(np.count_nonzero(mask, axis=0) > 0.02 * grey.shape[0])
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (left + right) / 2, (top + bottom) / 2, max(bottom - top, right - left) / 2


@pytest.fixture(scope="module")
def synthetic_sizes(tmp_path_factory):
    """The generator's photos at the tests', a wide and the demo's sizes, with their drawn fields."""
    layouts = {}
    for size, seed in (((128, 96), 11), ((300, 200), 12), ((512, 384), 13)):
        root = tmp_path_factory.mktemp(f"synthetic_{size[0]}")
        generate_eyepacs_layout(root, train_patients=12, test_patients=2, size=size,
                                grade_shares=UNIFORM_GRADE_SHARES, seed=seed)
        layouts[size] = root
    return layouts


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
@pytest.mark.parametrize("size", [(128, 96), (300, 200), (512, 384)])
def test_synthetic_photos_agree_with_the_drawn_field_and_with_the_old_rule_where_it_was_right(synthetic_sizes, size):
    root = synthetic_sizes[size]
    drawn = pd.read_csv(root / "fields.csv", dtype={"id": str}, keep_default_na=False)
    old_right = 0
    for row in drawn.itertuples():
        img, _ = decode(root / "images" / f"{row.id}.jpeg")
        found = find_field_of_view(img)
        radius = row.fundus_radius
        assert np.hypot(found.x - row.fundus_x, found.y - row.fundus_y) < 0.02 * radius
        assert abs(found.radius - radius) < 0.02 * radius
        x, y, r = old_threshold_box(img)
        if np.hypot(x - row.fundus_x, y - row.fundus_y) < 0.01 * radius and abs(r - radius) < 0.01 * radius:
            old_right += 1
            assert np.hypot(found.x - x, found.y - y) < 0.02 * r and abs(found.radius - r) < 0.02 * r
    assert old_right >= len(drawn) // 4  # the comparison is not vacuous


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_every_defect_the_generator_draws_is_found(tmp_path):
    generate_eyepacs_layout(tmp_path, train_patients=24, test_patients=2, size=(512, 384),
                            grade_shares=UNIFORM_GRADE_SHARES, seed=5, defects=1.0)
    drawn = pd.read_csv(tmp_path / "fields.csv", dtype={"id": str}, keep_default_na=False)
    assert drawn["defect"].nunique() >= 6 and (drawn["defect"] != "").all()
    for row in drawn.itertuples():
        found = find_field_of_view(decode(tmp_path / "images" / f"{row.id}.jpeg")[0])
        assert np.hypot(found.x - row.fundus_x, found.y - row.fundus_y) < TOLERANCE * row.fundus_radius, row
        assert abs(found.radius - row.fundus_radius) < TOLERANCE * row.fundus_radius, row
