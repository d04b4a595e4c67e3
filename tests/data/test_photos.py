"""Photo files as clinics have them: extensions in any case, one photo per id, DICOM's pixels only."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from pipeline.data import dicom as dicom_module
from pipeline.data.eyepacs import read_split
from pipeline.data.photos import PhotoFolder, decode
from pipeline.data.prepare import cache_image
from pipeline.errors import DataError
from tests.dicom_files import PATIENT, VARIANTS, dicom_bytes
from tests.real_photos import retina


@pytest.fixture(scope="module")
def small_retina() -> np.ndarray:
    return np.asarray(retina().image.resize((353, 353), Image.Resampling.LANCZOS))


def test_an_ids_photo_is_found_under_any_extension_in_any_case(tmp_path):
    for name in ("a.jpeg", "b.JPG", "c.png", "d.TIF", "e.tiff", "f.bmp", "g.DCM", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    folder = PhotoFolder(tmp_path)
    assert folder.ids() == ["a", "b", "c", "d", "e", "f", "g"]
    assert folder.find("g") == tmp_path / "g.DCM" and folder.find("notes") is None


def test_two_photos_for_one_id_is_an_error_naming_both(tmp_path):
    (tmp_path / "10_left.jpeg").write_bytes(b"x")
    (tmp_path / "10_left.PNG").write_bytes(b"x")
    with pytest.raises(DataError, match=r"image id '10_left' has 2 photos: .*10_left\.PNG, .*10_left\.jpeg"):
        PhotoFolder(tmp_path).find("10_left")


def train_photos(raw):
    ids = pd.read_csv(raw / "train_img.csv", header=None, dtype=str)[0].tolist()
    return [raw / "images" / f"{image_id}.jpeg" for image_id in ids]


def test_the_labs_layout_reads_photos_of_every_extension(raw_copy):
    first, second = train_photos(raw_copy)[:2]
    Image.open(first).save(first.with_suffix(".png"))
    first.unlink()
    second.rename(second.with_suffix(".JPG"))
    frame = read_split(raw_copy, "train")
    paths = dict(zip(frame["id"], frame["path"]))
    assert paths[first.stem].name == f"{first.stem}.png" and paths[second.stem].name == f"{second.stem}.JPG"


def test_an_id_with_a_photo_twice_names_the_csv_line_and_both_files(raw_copy):
    second = train_photos(raw_copy)[1]
    Image.open(second).save(second.with_suffix(".png"))
    with pytest.raises(DataError, match=rf"train_img\.csv line 2: image id '{second.stem}' has 2 photos"):
        read_split(raw_copy, "train")


@pytest.mark.parametrize("photometric, compressed", VARIANTS)
def test_a_dicom_photo_decodes_to_its_pixels(small_retina, tmp_path, photometric, compressed):
    path = tmp_path / "eye.dcm"
    path.write_bytes(dicom_bytes(small_retina, photometric, compressed))
    for source in (path, path.read_bytes()):  # a file, and the bytes posted to the served model
        image, size = decode(source)
        assert image.mode == "RGB" and size == (353, 353)
        difference = np.abs(np.asarray(image, float) - small_retina).mean()
        # JPEG q95; YBR_FULL's rounding; RGB exact.
        assert difference < {"RGB": 1e-9, "YBR_FULL": 0.5}.get(photometric, 2.5), difference


@pytest.mark.parametrize("photometric, compressed", VARIANTS)
def test_a_dicom_photo_is_prepared_as_the_same_pixels_saved_as_png(small_retina, tmp_path, photometric, compressed):
    png, dcm = tmp_path / "eye.png", tmp_path / "eye.dcm"
    Image.fromarray(small_retina).save(png)
    dcm.write_bytes(dicom_bytes(small_retina, photometric, compressed))
    from_png, from_dicom = cache_image(png, 64), cache_image(dcm, 64)
    assert abs(from_png.field.radius - from_dicom.field.radius) < 0.01 * from_png.field.radius
    difference = np.abs(np.asarray(Image.open(io.BytesIO(from_png.jpeg)), float)
                        - np.asarray(Image.open(io.BytesIO(from_dicom.jpeg)), float)).mean()
    assert difference < (3 if compressed else 1), difference


def test_only_the_pixel_tags_of_a_dicom_header_are_ever_read(small_retina, tmp_path, monkeypatch):
    read = []
    real = pydicom.dcmread

    def recording(*args, **kwargs):
        dataset = real(*args, **kwargs)
        read.append(dataset)
        return dataset

    monkeypatch.setattr(dicom_module.pydicom, "dcmread", recording)
    path = tmp_path / "eye.dcm"
    path.write_bytes(dicom_bytes(small_retina))
    decode(path)
    (dataset,) = read
    assert {element.keyword for element in dataset} <= set(dicom_module.PIXEL_TAGS)
    assert not any(keyword in dataset for keyword in PATIENT)


@pytest.mark.parametrize("change, message", [
    (dict(bits=16), "photo of 16 bits per sample; only 8-bit photos are read"),
    (dict(frames=2), "file of 2 frames; export one photo per file"),
])
def test_dicom_photos_this_cannot_read_are_named(small_retina, tmp_path, change, message):
    path = tmp_path / "odd.dcm"
    path.write_bytes(dicom_bytes(small_retina, **change))
    with pytest.raises(DataError, match=rf"image .*odd\.dcm is a DICOM .*{message}"):
        decode(path)


def test_a_truncated_dicom_is_named_and_says_nothing_of_its_header(small_retina, tmp_path):
    path = tmp_path / "cut.dcm"
    path.write_bytes(dicom_bytes(small_retina)[:600])
    with pytest.raises(DataError, match=r"image .*cut\.dcm is a DICOM") as caught:
        decode(path)
    assert not any(value in str(caught.value) for value in PATIENT.values())
