"""A photo becomes the cache's pixels: decode at a reduced scale, crop the field, resize, enhance."""

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data import prepare as prepare_module
from pipeline.data.fov import crop_field, find_field_of_view
from pipeline.data.photos import load_rgb
from pipeline.data.prepare import ben_graham, cache_image, crop_and_resize
from pipeline.errors import DataError


def first_image(raw):
    return sorted((raw / "images").iterdir())[0]


def disc_photo(width, height, cx, cy, radius, colour=(190, 80, 40)):
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[(xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= radius ** 2] = colour
    return pixels


@pytest.mark.parametrize("size", [32, 64])
def test_crop_and_resize_outputs_the_requested_size(raw_dir, size):
    image, field, source_size = crop_and_resize(first_image(raw_dir), size)
    assert image.size == (size, size) and image.mode == "RGB"
    assert source_size == (128, 96)
    assert 40 < field.radius < 52 and abs(field.x - 64) < 4 and abs(field.y - 48) < 4  # the drawn disc
    pixels = np.asarray(image, dtype=float)
    assert pixels[size // 2, size // 2].sum() > 100 and pixels[0, 0].sum() < 30  # disc centred, corners black


def test_the_crop_is_the_square_of_the_fields_circle(tmp_path):
    """A flat disc of radius 50 about (150.5, 80.5) in a 300x200 photo: its crop is the disc
    filling the square, black outside the circle (less the 2% margin)."""
    path = tmp_path / "disc.png"
    Image.fromarray(disc_photo(300, 200, 150.5, 80.5, 50)).save(path)
    image, field, _ = crop_and_resize(path, 64)
    assert abs(field.x - 150.5) < 0.5 and abs(field.y - 80.5) < 0.5 and abs(field.radius - 50) < 0.6
    red = np.asarray(image)[..., 0].astype(int)
    ys, xs = np.mgrid[0:64, 0:64]
    distance = np.hypot(xs + 0.5 - 32, ys + 0.5 - 32) / 32
    # Black from 0.98 of the radius less one output pixel (the resampling's reach), 0.949 here.
    assert (red[distance < 0.93] > 170).all() and (red[distance > 0.96] == 0).all()


def test_reduced_scale_decode_matches_full_decode(tmp_path, raw_dir):
    big = tmp_path / "big.jpeg"
    Image.open(first_image(raw_dir)).resize((1024, 768), Image.Resampling.BICUBIC).save(big, quality=95)
    reduced, _, _ = crop_and_resize(big, 64)
    full = load_rgb(big)
    difference = np.abs(np.asarray(reduced, float) - np.asarray(crop_field(full, find_field_of_view(full), 64), float))
    assert difference.mean() < 6, difference.mean()


def test_a_fundus_small_in_its_frame_is_decoded_at_the_next_scale_not_in_full(tmp_path, monkeypatch):
    # A disc of diameter 300 in a 1024x768 frame: at 1/4 scale (256x192, what the frame alone
    # allows for 128 px) the disc is 75 px, too small; 1/2 scale keeps it at 150 px.
    path = tmp_path / "small_disc.jpeg"
    Image.fromarray(disc_photo(1024, 768, 500, 400, 150)).save(path, quality=95)
    decoded = []
    real_decode = prepare_module.decode

    def recording(source, at_least):
        img, size = real_decode(source, at_least)
        decoded.append(img.size)
        return img, size

    monkeypatch.setattr(prepare_module, "decode", recording)
    image, field, source_size = crop_and_resize(path, 128)
    assert decoded == [(256, 192), (512, 384)] and source_size == (1024, 768)
    assert abs(field.x - 500) < 3 and abs(field.y - 400) < 3 and abs(field.radius - 150) < 3
    full = load_rgb(path)
    expected = crop_field(full, find_field_of_view(full), 128)
    assert np.abs(np.asarray(image, float) - np.asarray(expected, float)).mean() < 3


@pytest.mark.parametrize("mode, fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("P", "PNG")])
def test_other_image_modes_and_png_content_are_converted(tmp_path, raw_dir, mode, fmt):
    path = tmp_path / "odd.jpeg"  # PNG content behind a .jpeg name happens in scraped data sets
    Image.open(first_image(raw_dir)).convert(mode).save(path, format=fmt)
    image, _, _ = crop_and_resize(path, 32)
    assert image.mode == "RGB" and image.size == (32, 32)


def test_truncated_image_names_the_file(tmp_path, raw_dir):
    path = tmp_path / "cut.jpeg"
    data = first_image(raw_dir).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"image .*cut\.jpeg is corrupt, truncated or not an image"):
        crop_and_resize(path, 32)


def test_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "noise.jpeg"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(DataError, match=r"noise\.jpeg is corrupt"):
        load_rgb(path)


def test_a_photo_without_a_fundus_names_the_file_or_the_photo(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("RGB", (200, 150), (40, 40, 40)).save(path)
    with pytest.raises(DataError, match=r"image .*blank\.png: not a fundus photograph"):
        cache_image(path, 32)
    with pytest.raises(DataError, match=r"^the photo: not a fundus photograph"):
        cache_image(path.read_bytes(), 32)


def test_the_cache_image_is_its_jpeg_and_records_the_source(raw_dir):
    photo = first_image(raw_dir)
    prepared = cache_image(photo, 32)
    assert Image.open(io.BytesIO(prepared.jpeg)).size == (32, 32)
    assert prepared.source_size == (128, 96)
    drawn = pd.read_csv(raw_dir / "fields.csv", dtype={"id": str}).set_index("id").loc[photo.stem]
    assert abs(prepared.field.radius - drawn["fundus_radius"]) < 0.02 * drawn["fundus_radius"]


def flat_disc(side: int, colour: tuple[int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """A flat-colour disc filling a black square, as the crop leaves a fundus; and each pixel
    centre's distance from the centre, in radii."""
    yy, xx = np.mgrid[0:side, 0:side]
    distance = np.hypot(xx + 0.5 - side / 2, yy + 0.5 - side / 2) / (side / 2)
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[distance <= 1] = colour
    return Image.fromarray(pixels), distance


@pytest.mark.parametrize("side, colour", [(64, (180, 90, 40)), (128, (30, 200, 120))])
def test_ben_graham_turns_a_flat_colour_disc_into_a_flat_grey_disc_with_a_black_rim(side, colour):
    disc, distance = flat_disc(side, colour)
    out = np.asarray(ben_graham(disc)).astype(int)
    assert out.shape == (side, side, 3)
    assert np.abs(out[distance <= 0.85] - 128).max() <= 3  # the local average is the colour itself
    assert (out[distance > 0.9] == 0).all()


def test_ben_graham_amplifies_detail_finer_than_its_blur_fourfold():
    """A dot 20 levels darker than its surroundings (a microaneurysm) ends ~80 below the grey:
    the blur (sigma 128/30 px here) barely sees a single pixel."""
    disc, _ = flat_disc(256, (180, 90, 40))
    pixels = np.array(disc)
    pixels[100, 120] = (160, 70, 20)
    out = np.asarray(ben_graham(Image.fromarray(pixels))).astype(int)
    assert (np.abs(out[100, 120] - (128 - 4 * 20)) <= 4).all(), out[100, 120]
    assert np.abs(out[100, 140] - 128).max() <= 3  # 20 px (~5 sigma) away: flat grey again
