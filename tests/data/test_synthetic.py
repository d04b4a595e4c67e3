"""Tests for the synthetic EyePACS generator: layout, determinism, image content, validation."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter, JpegImagePlugin

from pipeline.data.synthetic import (
    EYEPACS_GRADE_SHARES,
    UNIFORM_GRADE_SHARES,
    CAMERA_JPEG_QUALITY,
    COPY_JPEG_QUALITY,
    _patient_grades,
    generate_eyepacs_layout,
    render_fundus,
    save_photo,
)

SIZE = (128, 96)
TRAIN_PATIENTS = 5
TEST_PATIENTS = 3
ID_PATTERN = re.compile(r"^(\d+)_(left|right)$")


def _generate(out_dir: Path, seed: int = 7, workers: int = 1) -> dict[str, int]:
    return generate_eyepacs_layout(
        out_dir,
        train_patients=TRAIN_PATIENTS,
        test_patients=TEST_PATIENTS,
        size=SIZE,
        grade_shares=UNIFORM_GRADE_SHARES,
        seed=seed,
        workers=workers,
    )


def _read_split(root: Path, split: str) -> tuple[list[str], list[int]]:
    ids = pd.read_csv(root / f"{split}_img.csv", header=None, dtype=str)[0].tolist()
    labels = pd.read_csv(root / f"{split}_label.csv", header=None)[0].tolist()
    return ids, labels


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a layout, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("eyepacs")
    return root, _generate(root)


def test_returns_image_counts(layout: tuple[Path, dict[str, int]]) -> None:
    _, counts = layout
    assert counts == {"train": 2 * TRAIN_PATIENTS, "test": 2 * TEST_PATIENTS}


@pytest.mark.parametrize("split", ["train", "test"])
def test_csvs_have_no_header_and_matching_rows(layout: tuple[Path, dict[str, int]], split: str) -> None:
    root, counts = layout
    img_lines = (root / f"{split}_img.csv").read_text().splitlines()
    label_lines = (root / f"{split}_label.csv").read_text().splitlines()
    # The first line is data, not a column name.
    assert ID_PATTERN.match(img_lines[0]), img_lines[0]
    assert re.fullmatch(r"[0-4]", label_lines[0]), label_lines[0]
    assert len(img_lines) == len(label_lines) == counts[split]
    ids, labels = _read_split(root, split)
    assert all(ID_PATTERN.match(i) for i in ids)
    assert set(labels) <= {0, 1, 2, 3, 4}
    assert len(set(ids)) == len(ids)


def test_every_id_has_a_jpeg_of_the_requested_size(layout: tuple[Path, dict[str, int]]) -> None:
    root, _ = layout
    ids = _read_split(root, "train")[0] + _read_split(root, "test")[0]
    for image_id in ids:
        with Image.open(root / "images" / f"{image_id}.jpeg") as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == SIZE
    assert len(list((root / "images").iterdir())) == len(ids)


def test_both_eyes_per_patient_and_disjoint_splits(layout: tuple[Path, dict[str, int]]) -> None:
    root, _ = layout
    patients = {}
    for split, n_patients in (("train", TRAIN_PATIENTS), ("test", TEST_PATIENTS)):
        eyes: dict[str, set[str]] = {}
        for image_id in _read_split(root, split)[0]:
            patient, eye = ID_PATTERN.match(image_id).groups()  # type: ignore[union-attr]
            eyes.setdefault(patient, set()).add(eye)
        assert len(eyes) == n_patients
        assert all(e == {"left", "right"} for e in eyes.values())
        patients[split] = set(eyes)
    assert not patients["train"] & patients["test"]


def test_second_eye_grade_is_correlated_with_first() -> None:
    grades = _patient_grades(4000, np.asarray(UNIFORM_GRADE_SHARES), np.random.default_rng(0))
    same = np.mean(grades[:, 0] == grades[:, 1])
    # Independent eyes would agree 20% of the time with uniform shares.
    assert 0.6 < same < 0.76
    # Each eye on its own still follows the requested shares.
    for eye in (0, 1):
        shares = np.bincount(grades[:, eye], minlength=5) / len(grades)
        assert np.allclose(shares, UNIFORM_GRADE_SHARES, atol=0.03)


def test_same_seed_is_byte_identical_and_other_seed_differs(
    layout: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    root, _ = layout
    _generate(tmp_path / "again")
    _generate(tmp_path / "other", seed=8)
    reference = _snapshot(root)
    assert _snapshot(tmp_path / "again") == reference
    other = _snapshot(tmp_path / "other")
    assert other["train_img.csv"] != reference["train_img.csv"]
    first = _read_split(root, "train")[0][0]
    first_other = _read_split(tmp_path / "other", "train")[0][0]
    a = np.asarray(Image.open(root / "images" / f"{first}.jpeg"))
    b = np.asarray(Image.open(tmp_path / "other" / "images" / f"{first_other}.jpeg"))
    assert not np.array_equal(a, b)


def test_worker_count_does_not_change_output(layout: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    root, _ = layout
    _generate(tmp_path, workers=2)
    assert _snapshot(tmp_path) == _snapshot(root)


@pytest.mark.parametrize("eye", ["left", "right"])
def test_fundus_is_round_reddish_disc_on_black(eye: str) -> None:
    im = render_fundus(0, eye, (256, 192), np.random.default_rng(1))
    assert im.mode == "RGB" and im.size == (256, 192)
    a = np.asarray(im).astype(int)
    for y, x in ((0, 0), (0, 255), (191, 0), (191, 255), (96, 0), (96, 255)):
        assert a[y, x].max() <= 8, (y, x, a[y, x])
    r, g, b = a[80:112, 112:144].reshape(-1, 3).mean(axis=0)
    assert r > 80 and r > g > b


@pytest.mark.parametrize("eye, disc_on_right", [("left", False), ("right", True)])
def test_optic_disc_is_mirrored_between_eyes(eye: str, disc_on_right: bool) -> None:
    for seed in range(3):
        im = render_fundus(0, eye, (256, 192), np.random.default_rng(seed))
        # The optic disc is the largest bright yellowish area; blur away vessels and noise.
        green = np.asarray(im.filter(ImageFilter.BoxBlur(6)))[..., 1]
        x = np.unravel_index(np.argmax(green), green.shape)[1]
        assert (x > 128) == disc_on_right, (seed, x)


def _lesion_fractions(im: Image.Image) -> tuple[float, float]:
    """Fractions of fundus pixels that are much darker red / much brighter yellow than nearby."""
    a = np.asarray(im, dtype=np.float32)
    bg = np.asarray(im.filter(ImageFilter.BoxBlur(6)), dtype=np.float32)
    inside = bg.max(axis=2) > 40
    dark_red = (a[..., 0] < 0.75 * bg[..., 0]) & inside
    yellow = (a[..., 1] > 1.3 * bg[..., 1]) & (a[..., 1] > 0.6 * a[..., 0]) & inside
    return float(dark_red.mean()), float(yellow.mean())


def test_grade_4_has_more_lesion_pixels_than_grade_0() -> None:
    for seed in range(3):
        dark0, yellow0 = _lesion_fractions(render_fundus(0, "left", SIZE, np.random.default_rng(seed)))
        dark4, yellow4 = _lesion_fractions(render_fundus(4, "left", SIZE, np.random.default_rng(seed)))
        assert dark4 > 1.3 * dark0, (seed, dark0, dark4)
        assert yellow4 > yellow0, (seed, yellow0, yellow4)


def test_same_rng_state_renders_same_eye_and_only_lesions_differ() -> None:
    images = [np.asarray(render_fundus(g, "right", SIZE, np.random.default_rng(5))).astype(int) for g in range(5)]
    assert np.array_equal(images[0], np.asarray(render_fundus(0, "right", SIZE, np.random.default_rng(5))))
    changed = [int((np.abs(im - images[0]).max(axis=2) > 30).sum()) for im in images]
    assert changed[0] == 0
    # Lesion area grows with severity (grades 3 and 4 share most of their lesion types).
    assert changed[1] < changed[2] < min(changed[3], changed[4])


def test_wide_frame_size_and_aperture() -> None:
    im = render_fundus(3, "left", (300, 200), np.random.default_rng(0))
    a = np.asarray(im)
    assert im.size == (300, 200)
    # Wide frames keep black margins left and right of the round fundus.
    assert a[:, :5].max() <= 8 and a[:, -5:].max() <= 8


def _grain(im: Image.Image) -> float:
    """Pixel-to-pixel noise in the black corner, where the scene itself is flat."""
    corner = np.asarray(im, dtype=np.float32)[:48, :48, 1]
    return float(np.diff(corner, axis=1).std())


def _quantization_at(quality: int, subsampling: str = "4:2:0") -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return Image.open(buffer).quantization


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_camera_sized_photos_are_written_as_a_camera_writes_them(tmp_path: Path) -> None:
    """Sensor noise and q95 with 4:2:2 chroma: real-sized files, so benchmarks decode what users will."""
    photo = render_fundus(2, "left", (2592, 1944), np.random.default_rng(0))
    assert _grain(photo) > 2  # sensor noise even in the black surround
    save_photo(photo, tmp_path / "camera.jpeg")
    with Image.open(tmp_path / "camera.jpeg") as written:
        assert JpegImagePlugin.get_sampling(written) == 1  # 4:2:2
        assert written.quantization == _quantization_at(CAMERA_JPEG_QUALITY, "4:2:2")
    assert 1e6 < (tmp_path / "camera.jpeg").stat().st_size < 4e6  # real EyePACS photos: 1-4 MB


def test_small_photos_stay_noise_free_downscaled_copies(tmp_path: Path) -> None:
    photo = render_fundus(2, "left", (512, 384), np.random.default_rng(0))
    assert _grain(photo) == 0
    save_photo(photo, tmp_path / "copy.jpeg")
    with Image.open(tmp_path / "copy.jpeg") as written:
        assert written.quantization == _quantization_at(COPY_JPEG_QUALITY)
    save_photo(photo, tmp_path / "asked.jpeg", quality=70)  # an explicit quality wins
    with Image.open(tmp_path / "asked.jpeg") as written:
        assert written.quantization == _quantization_at(70)


def test_default_shares_are_a_distribution() -> None:
    assert len(EYEPACS_GRADE_SHARES) == 5 and abs(sum(EYEPACS_GRADE_SHARES) - 1) < 1e-6
    assert EYEPACS_GRADE_SHARES[0] == max(EYEPACS_GRADE_SHARES)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"grade_shares": (0.5, 0.5, 0.0, 0.0)}, "(0.5, 0.5, 0.0, 0.0)"),
        ({"grade_shares": (0.5, 0.5, -0.1, 0.05, 0.05)}, "-0.1"),
        ({"grade_shares": (0.5, 0.5, 0.5, 0.5, 0.5)}, "sum 2.5"),
        ({"grade_shares": "abcde"}, "'abcde'"),
        ({"size": (32, 96)}, "(32, 96)"),
        ({"size": (128, 63)}, "(128, 63)"),
        ({"size": (128,)}, "(128,)"),
        ({"train_patients": 0}, "train_patients must be an integer >= 1, got 0"),
        ({"test_patients": -2}, "test_patients must be an integer >= 1, got -2"),
        ({"train_patients": 2.5}, "2.5"),
        ({"workers": 0}, "workers must be an integer >= 1, got 0"),
        ({"jpeg_quality": 101}, "101"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_value(
    tmp_path: Path, overrides: dict[str, object], fragment: str
) -> None:
    kwargs: dict[str, object] = {"train_patients": 1, "test_patients": 1, "size": SIZE}
    kwargs.update(overrides)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(fragment)):
        generate_eyepacs_layout(out, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()  # nothing is written before the arguments are known to be good


@pytest.mark.parametrize(
    "grade, eye, size, fragment",
    [
        (5, "left", SIZE, "got 5"),
        (-1, "left", SIZE, "got -1"),
        (1, "both", SIZE, "'both'"),
        (1, "left", (64, 10), "(64, 10)"),
    ],
)
def test_render_fundus_rejects_bad_arguments(grade: int, eye: str, size: tuple[int, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        render_fundus(grade, eye, size, np.random.default_rng(0))
