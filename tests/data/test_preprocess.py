import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data import preprocess as preprocess_module
from pipeline.data.dataset import ProcessedDataset
from pipeline.data.prepare import cache_image, crop_and_resize
from pipeline.data.fov import FIELD_COLUMNS
from pipeline.data.preprocess import MANIFEST, METADATA, cache_dir, preprocess, split_by_patient
from pipeline.errors import DataError


def first_image(raw):
    return sorted((raw / "images").iterdir())[0]


def test_split_keeps_patients_whole_and_is_seeded():
    patients = [str(p) for p in range(40) for _ in range(2)]
    frame = pd.DataFrame({"patient": patients, "grade": [int(p) % 5 for p in patients]})
    is_val = split_by_patient(frame, 0.25, seed=3)
    assert not set(frame.patient[is_val]) & set(frame.patient[~is_val])
    assert 0.15 < is_val.mean() < 0.35
    assert sorted(set(frame.grade[is_val])) == [0, 1, 2, 3, 4]  # stratified: every grade in validation
    assert (split_by_patient(frame, 0.25, seed=3) == is_val).all()
    assert not (split_by_patient(frame, 0.25, seed=4) == is_val).all()


def test_a_set_too_small_to_stratify_is_split_by_whole_patients(caplog):
    # Four patients, every grade at most twice: no grade has a photo for each of the 4 folds.
    frame = pd.DataFrame({"patient": ["1", "1", "2", "2", "3", "3", "4", "4"], "grade": [0, 1, 2, 3, 4, 0, 1, 2]})
    chosen = split_by_patient(frame, 0.25, seed=0, name="test_fraction")
    assert chosen.sum() == 2 and frame.patient[chosen].nunique() == 1
    assert "test_fraction=0.25: no grade has 4 photos; the split is by patient, not stratified" in caplog.text


def test_too_few_patients_for_the_split():
    frame = pd.DataFrame({"patient": ["1", "1", "2", "2"], "grade": [0, 0, 1, 1]})
    with pytest.raises(DataError, match="2 patients to split, too few for val_fraction=0.2"):
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


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
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


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_each_size_is_its_own_cache(raw_copy, tmp_path):
    target = tmp_path / "processed"
    preprocess(raw_copy, target, image_size=32, num_workers=1)
    preprocess(raw_copy, target, image_size=48, num_workers=1)
    assert sorted(p.name for p in target.iterdir()) == ["32px", "48px"]
    assert json.loads((cache_dir(target, 32) / METADATA).read_text())["image_size"] == 32
    assert json.loads((cache_dir(target, 48) / METADATA).read_text())["image_size"] == 48


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
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


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
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
        raw_dir / "images" / first, 32, "ben_graham").jpeg
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


def test_manifest_records_each_photos_field_of_view_as_drawn(processed_dir, raw_dir):
    """The generator's own geometry (fields.csv) is the truth: the manifest's bound columns, in
    the source photo's pixels, are within 2% of the radius of it."""
    manifest = pd.read_csv(processed_dir / "64px" / MANIFEST, dtype={"id": str, "clipped": str}, keep_default_na=False)
    assert set(FIELD_COLUMNS) <= set(manifest.columns)
    drawn = pd.read_csv(raw_dir / "fields.csv", dtype={"id": str}).set_index("id").loc[manifest["id"]]
    radius = drawn["fundus_radius"].to_numpy()
    centre_error = np.hypot(manifest["fundus_x"] - drawn["fundus_x"].to_numpy(), manifest["fundus_y"] - drawn["fundus_y"].to_numpy())
    assert (centre_error / radius).max() < 0.02
    assert (np.abs(manifest["fundus_radius"] - radius) / radius).max() < 0.02
    assert set(manifest["clipped"]) <= {"", "top", "bottom", "top,bottom"}


def test_a_photo_without_a_fundus_is_named_or_skipped(raw_copy, tmp_path):
    victim = sorted((raw_copy / "images").iterdir())[2]
    Image.new("RGB", (128, 96), (90, 90, 90)).save(victim, format="JPEG")
    with pytest.raises(DataError, match=rf"image .*{victim.name}: not a fundus photograph"):
        preprocess(raw_copy, tmp_path / "out", image_size=32, num_workers=1)
    summary = preprocess(raw_copy, tmp_path / "out", image_size=32, num_workers=1, on_bad_image="skip",
                         max_bad_fraction=0.1)
    assert [entry["id"] for entry in summary["skipped_images"]] == [victim.stem]
    assert "not a fundus photograph" in summary["skipped_images"][0]["reason"]


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_cache_of_the_old_format_is_rebuilt_not_reused(raw_copy, tmp_path):
    target = tmp_path / "processed"
    preprocess(raw_copy, target, image_size=32, num_workers=1)
    metadata = json.loads((cache_dir(target, 32) / METADATA).read_text())
    (cache_dir(target, 32) / METADATA).write_text(json.dumps({**metadata, "format_version": 1}))
    assert preprocess(raw_copy, target, image_size=32, num_workers=1)["reused_images"] == 0


def test_an_unknown_enhancement_is_refused(raw_dir):
    with pytest.raises(ValueError, match="enhance='clahe' is not supported; choose one of none, ben_graham"):
        cache_image(first_image(raw_dir), 32, "clahe")
