import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data import preprocess as preprocess_module
from pipeline.data.dataset import ProcessedDataset
from pipeline.data.preprocess import (
    MANIFEST,
    METADATA,
    ben_graham,
    cache_dir,
    cache_image,
    crop_and_resize,
    fundus_box,
    load_rgb,
    preprocess,
    split_by_patient,
)
from pipeline.errors import DataError


def first_image(raw):
    return sorted((raw / "images").iterdir())[0]


def test_crop_is_square_and_tight_around_the_disc(tmp_path):
    # A bright disc of diameter 100 centred at (150, 80) on a 300x200 black photo.
    yy, xx = np.mgrid[0:200, 0:300]
    disc = ((xx - 150) ** 2 + (yy - 80) ** 2) <= 50 ** 2
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[disc] = (200, 90, 40)
    left, top, right, bottom = fundus_box(Image.fromarray(pixels))
    assert right - left == bottom - top
    assert abs(left - 100) <= 1 and abs(top - 30) <= 1 and abs(right - 201) <= 1


def test_disc_clipped_by_the_frame_is_padded_square():
    # Diameter 200 disc clipped top and bottom by a 120 px tall photo: the crop keeps it round.
    yy, xx = np.mgrid[0:120, 0:300]
    pixels = np.zeros((120, 300, 3), np.uint8)
    pixels[((xx - 150) ** 2 + (yy - 60) ** 2) <= 100 ** 2] = 180
    left, top, right, bottom = fundus_box(Image.fromarray(pixels))
    assert right - left == bottom - top >= 199
    assert top < 0 and bottom > 120


def test_black_image_is_an_error():
    with pytest.raises(DataError, match="no fundus found"):
        fundus_box(Image.new("RGB", (64, 64)))


@pytest.mark.parametrize("size", [32, 64])
def test_crop_and_resize_outputs_the_requested_size(raw_dir, size):
    image, source_size = crop_and_resize(first_image(raw_dir), size)
    assert image.size == (size, size) and image.mode == "RGB"
    assert source_size == (128, 96)
    pixels = np.asarray(image, dtype=float)
    assert pixels[size // 2, size // 2].sum() > 100 and pixels[0, 0].sum() < 30  # disc centred, corners black


def test_reduced_scale_decode_matches_full_decode(tmp_path, raw_dir):
    big = tmp_path / "big.jpeg"
    Image.open(first_image(raw_dir)).resize((1024, 768), Image.Resampling.BICUBIC).save(big, quality=95)
    reduced, _ = crop_and_resize(big, 64)
    full = load_rgb(big).crop(fundus_box(load_rgb(big))).resize((64, 64), Image.Resampling.BICUBIC)
    difference = np.abs(np.asarray(reduced, float) - np.asarray(full, float)).mean()
    assert difference < 6, difference


def test_a_fundus_small_in_its_frame_is_decoded_at_the_next_scale_not_in_full(tmp_path, monkeypatch):
    # A disc of diameter 300 in a 1024x768 frame: at 1/4 scale (256x192, what the frame alone
    # allows for 128 px) the disc is 75 px, too small; 1/2 scale keeps it at 150 px.
    yy, xx = np.mgrid[0:768, 0:1024]
    pixels = np.zeros((768, 1024, 3), np.uint8)
    pixels[((xx - 500) ** 2 + (yy - 400) ** 2) <= 150 ** 2] = (190, 80, 40)
    path = tmp_path / "small_disc.jpeg"
    Image.fromarray(pixels).save(path, quality=95)
    decoded = []
    real_decode = preprocess_module._decode

    def recording(source, at_least):
        img, size = real_decode(source, at_least)
        decoded.append(img.size)
        return img, size

    monkeypatch.setattr(preprocess_module, "_decode", recording)
    image, source_size = crop_and_resize(path, 128)
    assert decoded == [(256, 192), (512, 384)] and source_size == (1024, 768)
    full = load_rgb(path).crop(fundus_box(load_rgb(path))).resize((128, 128), Image.Resampling.BICUBIC)
    assert np.abs(np.asarray(image, float) - np.asarray(full, float)).mean() < 3


def test_the_disc_threshold_is_the_99th_percentile_of_the_grey_levels():
    """Read off the histogram, as np.percentile would sort it: 5 % of the pixels at 200 make the
    level 20, so a patch at 25 counts as fundus and one at 15 does not."""
    pixels = np.zeros((100, 100, 3), np.uint8)
    pixels[:10, :50] = 200  # the bright 5 % set the 99th percentile
    pixels[40:60, 60:80] = 25
    pixels[40:60, 85:95] = 15
    left, _, right, _ = fundus_box(Image.fromarray(pixels))
    assert (left, right) == (0, 80)


@pytest.mark.parametrize("mode, fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("P", "PNG")])
def test_other_image_modes_and_png_content_are_converted(tmp_path, raw_dir, mode, fmt):
    path = tmp_path / "odd.jpeg"  # PNG content behind a .jpeg name happens in scraped data sets
    Image.open(first_image(raw_dir)).convert(mode).save(path, format=fmt)
    image, _ = crop_and_resize(path, 32)
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


def test_split_keeps_patients_whole_and_is_seeded():
    patients = [str(p) for p in range(40) for _ in range(2)]
    frame = pd.DataFrame({"patient": patients, "grade": [int(p) % 5 for p in patients]})
    is_val = split_by_patient(frame, 0.25, seed=3)
    assert not set(frame.patient[is_val]) & set(frame.patient[~is_val])
    assert 0.15 < is_val.mean() < 0.35
    assert sorted(set(frame.grade[is_val])) == [0, 1, 2, 3, 4]  # stratified: every grade in validation
    assert (split_by_patient(frame, 0.25, seed=3) == is_val).all()
    assert not (split_by_patient(frame, 0.25, seed=4) == is_val).all()


def test_too_few_patients_for_the_split():
    frame = pd.DataFrame({"patient": ["1", "1", "2", "2"], "grade": [0, 0, 1, 1]})
    with pytest.raises(DataError, match="2 patients, too few for val_fraction=0.2"):
        split_by_patient(frame, 0.2, seed=0)


def test_processed_dataset_layout(processed_dir, raw_dir):
    dataset = processed_dir / "64px"
    manifest = pd.read_csv(dataset / MANIFEST, dtype={"id": str, "patient": str})
    metadata = json.loads((dataset / METADATA).read_text())
    raw_ids = pd.read_csv(raw_dir / "train_img.csv", header=None)[0].tolist() + pd.read_csv(raw_dir / "test_img.csv", header=None)[0].tolist()
    assert sorted(manifest["id"]) == sorted(raw_ids)
    assert set(manifest["split"]) == {"train", "val", "test"}
    train_patients = set(manifest.loc[manifest.split == "train", "patient"])
    assert not train_patients & set(manifest.loc[manifest.split == "val", "patient"])
    assert metadata["image_size"] == 64
    assert sum(metadata["counts"]["test"]) == len(pd.read_csv(raw_dir / "test_img.csv", header=None))
    for file in manifest["file"]:
        with Image.open(dataset / file) as image:
            assert image.size == (64, 64)


def test_parallel_preprocess_gives_the_same_dataset(raw_dir, processed_dir, tmp_path):
    target = tmp_path / "parallel"
    preprocess(raw_dir, target, image_size=64, val_fraction=0.25, seed=0, num_workers=2)
    assert (target / "64px" / MANIFEST).read_text() == (processed_dir / "64px" / MANIFEST).read_text()


def test_interrupted_preprocess_leaves_no_dataset(raw_copy, tmp_path, monkeypatch):
    target = tmp_path / "processed"
    calls = []
    real_process = preprocess_module._process

    def crash_on_the_fifth(job):
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt  # what Ctrl-C or a kill looks like mid-run
        return real_process(job)

    monkeypatch.setattr(preprocess_module, "_process", crash_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        preprocess(raw_copy, target, image_size=32, num_workers=1)
    assert list(target.iterdir()) == []  # no 32px dataset and no partial folder left behind


def test_failed_rebuild_keeps_the_previous_dataset(raw_copy, tmp_path):
    target = tmp_path / "processed"
    preprocess(raw_copy, target, image_size=32, num_workers=1)
    before = (target / "32px" / MANIFEST).read_text()
    victim = sorted((raw_copy / "images").iterdir())[-1]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=victim.name):
        preprocess(raw_copy, target, image_size=32, num_workers=1)
    assert (target / "32px" / MANIFEST).read_text() == before
    assert [p.name for p in target.iterdir()] == ["32px"]


def test_each_size_is_its_own_cache(raw_copy, tmp_path):
    target = tmp_path / "processed"
    preprocess(raw_copy, target, image_size=32, num_workers=1)
    preprocess(raw_copy, target, image_size=48, num_workers=1)
    assert sorted(p.name for p in target.iterdir()) == ["32px", "48px"]
    assert json.loads((cache_dir(target, 32) / METADATA).read_text())["image_size"] == 32
    assert json.loads((cache_dir(target, 48) / METADATA).read_text())["image_size"] == 48


def test_rerun_reuses_unchanged_outputs_and_redoes_changed_ones(raw_copy, tmp_path):
    target = tmp_path / "processed"
    first = preprocess(raw_copy, target, image_size=32, num_workers=1)
    assert first["reused_images"] == 0
    untouched = cache_dir(target, 32) / "images" / f"{first_image(raw_copy).stem}.jpeg"
    inode = untouched.stat().st_ino
    changed = sorted((raw_copy / "images").iterdir())[-1]
    stale = np.asarray(Image.open(cache_dir(target, 32) / "images" / f"{changed.stem}.jpeg"), float)
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, format="JPEG")
    second = preprocess(raw_copy, target, image_size=32, val_fraction=0.25, seed=1, num_workers=1)
    total = sum(map(sum, second["counts"].values()))
    assert second["reused_images"] == total - 1
    assert untouched.stat().st_ino == inode  # the very same file, not re-decoded
    manifest = pd.read_csv(cache_dir(target, 32) / MANIFEST)
    assert (manifest["source_width"] == 128).all() and (manifest["source_height"] == 96).all()
    redone = np.asarray(Image.open(cache_dir(target, 32) / "images" / f"{changed.stem}.jpeg"), float)
    fresh = np.asarray(crop_and_resize(changed, 32)[0], float)
    assert np.abs(redone - fresh).mean() < 6 < np.abs(redone - stale).mean()  # re-decoded from the flipped photo


def test_skip_policy_leaves_bad_photos_out_and_lists_them(raw_copy, tmp_path):
    victim = sorted((raw_copy / "images").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:300])
    summary = preprocess(raw_copy, tmp_path / "out", image_size=32, num_workers=2, on_bad_image="skip",
                         max_bad_fraction=0.1)
    assert [entry["id"] for entry in summary["skipped_images"]] == [victim.stem]
    assert "corrupt, truncated or not an image" in summary["skipped_images"][0]["reason"]
    dataset = cache_dir(tmp_path / "out", 32)
    manifest = pd.read_csv(dataset / MANIFEST, dtype={"id": str})
    assert victim.stem not in set(manifest["id"]) and len(manifest) == len(list((raw_copy / "images").iterdir())) - 1
    assert pd.read_csv(dataset / "skipped_images.csv")["id"].astype(str).tolist() == [victim.stem]


def test_skip_policy_still_fails_when_too_many_are_bad(raw_copy, tmp_path):
    for victim in sorted((raw_copy / "images").iterdir())[:3]:
        victim.write_bytes(b"broken")
    with pytest.raises(DataError, match=r"3 of \d+ photos are bad, more than max_bad_fraction=0.05"):
        preprocess(raw_copy, tmp_path / "out", image_size=32, num_workers=1, on_bad_image="skip", max_bad_fraction=0.05)
    assert not cache_dir(tmp_path / "out", 32).exists()


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


def test_enhance_has_a_cache_of_its_own_and_train_picks_the_requested_one(raw_dir, tmp_path):
    target = tmp_path / "processed"
    plain = preprocess(raw_dir, target, image_size=32, num_workers=1)
    before = {path.name: path.read_bytes() for path in (cache_dir(target, 32) / "images").iterdir()}
    enhanced = preprocess(raw_dir, target, image_size=32, num_workers=1, enhance="ben_graham")
    assert sorted(p.name for p in target.iterdir()) == ["32px", "32px-ben_graham"]
    assert (plain["enhance"], enhanced["enhance"]) == ("none", "ben_graham")
    assert enhanced["dataset_dir"] == str(target / "32px-ben_graham") and enhanced["reused_images"] == 0
    assert json.loads((target / "32px-ben_graham" / METADATA).read_text())["enhance"] == "ben_graham"
    assert {path.name: path.read_bytes() for path in (cache_dir(target, 32) / "images").iterdir()} == before
    first = sorted(before)[0]
    assert (target / "32px-ben_graham" / "images" / first).read_bytes() != before[first]
    # The cache holds what cache_image gives a photo: the one preparation path.
    assert (target / "32px-ben_graham" / "images" / first).read_bytes() == cache_image(
        raw_dir / "images" / first, 32, "ben_graham")[0]
    assert ProcessedDataset(target, 32, "ben_graham").root == target / "32px-ben_graham"
    assert ProcessedDataset(target, 32).root == target / "32px"
    assert ProcessedDataset(target / "32px-ben_graham", 32, "ben_graham").enhance == "ben_graham"


def test_a_dataset_of_another_enhancement_is_refused(processed_dir, tmp_path):
    with pytest.raises(DataError, match=r"holds no enhance=ben_graham processed dataset .* with enhance=ben_graham"):
        ProcessedDataset(processed_dir, 32, "ben_graham")
    with pytest.raises(DataError, match=r"64px holds enhance=none images, but enhance=ben_graham ones are needed"):
        ProcessedDataset(processed_dir / "64px", 32, "ben_graham")


def test_a_dataset_from_before_enhance_holds_plain_images(processed_dir, tmp_path):
    old = Path(shutil.copytree(processed_dir / "64px", tmp_path / "data" / "64px"))
    metadata = json.loads((old / METADATA).read_text())
    del metadata["enhance"]
    (old / METADATA).write_text(json.dumps(metadata))
    assert ProcessedDataset(tmp_path / "data", 32).enhance == "none"
    with pytest.raises(DataError, match="holds enhance=none images"):
        ProcessedDataset(old, 32, "ben_graham")


def test_an_unknown_enhancement_is_refused(raw_dir):
    with pytest.raises(ValueError, match="enhance='clahe' is not supported; choose one of none, ben_graham"):
        cache_image(first_image(raw_dir), 32, "clahe")
