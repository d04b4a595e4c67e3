"""The grader: one preparation path for a photo, and the served model's request contract."""

import base64
import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.data.dataset import EvalPreset, ProcessedDataset, normalize_batch, photo_input
from pipeline.data.photos import load_rgb
from pipeline.data.prepare import cache_image
from pipeline.data.preprocess import preprocess
from pipeline.errors import DataError
from pipeline.grading import Grader
from pipeline.gradcam import grad_cam
from pipeline.models import last_conv_stage
from pipeline.photo_grader import (
    HEATMAP_COLUMN,
    PREDICTION_COLUMNS,
    PROBABILITY_COLUMNS,
    GraderSpec,
    encode_photos,
    grade_request,
)
from pipeline.predict import list_inputs, predict_photos
from pipeline.models import build_model


def test_a_new_photo_gets_exactly_the_pixels_training_saw(raw_dir, processed_dir):
    """predict and the served model prepare a photo through the cache's own encoding, so the
    network sees the same uint8 tensor as when evaluate reads the processed cache."""
    processed = ProcessedDataset(processed_dir, 64)
    for row in processed.split("test").head(4).itertuples():
        photo = raw_dir / "images" / f"{row.id}.jpeg"
        from_cache = EvalPreset(32)(load_rgb(processed.root / row.file))
        assert torch.equal(photo_input(photo, processed.image_size, 32), from_cache), row.id
        assert torch.equal(photo_input(photo.read_bytes(), processed.image_size, 32), from_cache), row.id
        assert cache_image(photo, processed.image_size).jpeg == (processed.root / row.file).read_bytes()


@pytest.fixture(scope="module")
def grader() -> Grader:
    torch.manual_seed(0)
    return Grader(build_model("resnet18", pretrained=False), GraderSpec("resnet18", 32, 64, referable_threshold=0.4))


def photos(raw_dir, count: int) -> list[bytes]:
    return [path.read_bytes() for path in sorted((raw_dir / "images").iterdir())[:count]]


def test_a_request_gets_one_row_per_photo_in_order(grader, raw_dir):
    request = photos(raw_dir, 3)
    answer = grade_request(grader, encode_photos(request))
    assert list(answer.columns) == PREDICTION_COLUMNS and len(answer) == 3
    singles = pd.concat([grade_request(grader, encode_photos([photo])) for photo in request], ignore_index=True)
    numbers = ["predicted_grade", *PROBABILITY_COLUMNS, "p_referable"]
    assert np.abs(answer[numbers].to_numpy() - singles[numbers].to_numpy()).max() < 1e-5
    assert (answer["referable"] == (answer["p_referable"] >= 0.4)).all() and answer["gradable"].all()


def test_a_request_that_is_not_base64_is_refused_naming_the_row(grader, raw_dir):
    request = encode_photos(photos(raw_dir, 1))
    request.loc[1, "image"] = "not base64!"
    with pytest.raises(DataError, match="row 1: 'image' is not base64-encoded photo bytes"):
        grade_request(grader, request)


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_unreadable_or_blank_photo_is_a_refused_row_and_the_others_are_graded(grader, raw_dir):
    good = photos(raw_dir, 2)
    answer = grade_request(grader, encode_photos([good[0], b"GIF89a but no more", blank_png(), good[1]]))
    assert answer["gradable"].tolist() == [True, False, False, True]
    assert answer["ungradable_reason"].tolist() == ["", "unreadable photo", "not a fundus photograph", ""]
    assert answer["predicted_grade"].tolist()[1:3] == [-1, -1] and answer["referable"][1:3].isna().all()
    assert answer[PROBABILITY_COLUMNS].iloc[1:3].isna().all().all()  # the network never saw them
    alone = grade_request(grader, encode_photos(good))
    assert np.abs(answer[PROBABILITY_COLUMNS].iloc[[0, 3]].to_numpy() - alone[PROBABILITY_COLUMNS].to_numpy()).max() < 1e-5


def test_a_request_without_the_image_column_says_what_to_send(grader):
    with pytest.raises(DataError, match="no 'image' column .*it has photo"):
        grade_request(grader, pd.DataFrame({"photo": ["x"]}))


@pytest.fixture(scope="module")
def ben_graham_dir(raw_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("enhanced")
    preprocess(raw_dir, target, image_size=64, val_fraction=0.25, seed=0, num_workers=1, enhance="ben_graham")
    return target


def test_an_enhancing_grader_prepares_a_photo_as_its_cache_holds_it(grader, raw_dir, processed_dir, ben_graham_dir):
    """predict (grade_photos) and the served model (grade_request) enhance a new photo as
    preprocess enhanced the cache the network learnt from: the same pixels, the same answer."""
    enhancing = Grader(grader.network, GraderSpec("resnet18", 32, 64, referable_threshold=0.4, enhance="ben_graham"))
    processed = ProcessedDataset(ben_graham_dir, 64, "ben_graham")
    rows = processed.split("test").head(3)
    files = [raw_dir / "images" / f"{image_id}.jpeg" for image_id in rows["id"]]
    from_cache = torch.stack([EvalPreset(32)(load_rgb(processed.root / file)) for file in rows["file"]])
    for photo, expected in zip(files, from_cache):
        assert torch.equal(photo_input(photo, 64, 32, "ben_graham"), expected)
    expected = enhancing.probabilities(from_cache)
    predicted = enhancing.grade_photos(files)[PROBABILITY_COLUMNS].to_numpy()
    served = grade_request(enhancing, encode_photos([file.read_bytes() for file in files]))[PROBABILITY_COLUMNS]
    assert np.abs(predicted - expected).max() < 1e-6 and np.abs(served.to_numpy() - expected).max() < 1e-6
    plain = torch.stack([EvalPreset(32)(load_rgb(processed_dir / "64px" / file)) for file in rows["file"]])
    assert np.abs(grader.probabilities(plain) - expected).max() > 1e-4  # the enhancement reaches the network


def test_a_grader_with_flip_tta_serves_the_mean_over_flips(grader):
    flipping = Grader(grader.network, GraderSpec("resnet18", 32, 64, referable_threshold=0.4, tta="flips"))
    images = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    expected = np.mean([grader.probabilities(x) for x in (images, images.flip(3), images.flip(2), images.flip(2, 3))], axis=0)
    assert np.allclose(flipping.probabilities(images), expected, atol=1e-6)


def test_a_spec_logged_before_the_recipes_loads_with_the_labs_decision():
    old = {"model": "resnet18", "image_size": 32, "cache_size": 64, "referable_threshold": 0.4, "tta": "none"}
    spec = GraderSpec.from_dict(old)
    assert (spec.head, spec.cut_points, spec.fuse_weight) == ("classification", None, 0.0)
    new = GraderSpec("resnet18", 32, 64, 0.4, "flips", "ordinal", (0.5, 1.4, 2.6, 3.5), 0.3)
    assert GraderSpec.from_dict(json.loads(json.dumps(new.to_dict()))) == new


def test_predict_fuses_a_patients_two_eyes_and_the_served_model_grades_one(grader, raw_dir, tmp_path):
    """With fuse_weight w, predict gives each eye (1 - w) of its own probabilities and w of its
    fellow's; an eye without its fellow among the inputs, and every photo sent to the served
    model, is graded alone."""
    inputs = list_inputs(raw_dir / "images").head(5)  # sorted: 4 photos of two patients, then one eye
    patients = inputs["id"].str.rsplit("_", n=1).str[0]
    assert patients.value_counts().sort_index().tolist()[:2] == [2, 2] and patients.iloc[4] != patients.iloc[3]
    fusing = Grader(grader.network, dataclasses.replace(grader.spec, fuse_weight=0.25))
    alone = predict_photos(grader, inputs)
    fused = predict_photos(fusing, inputs)
    columns = [f"p_grade_{k}" for k in range(5)]
    own, fellow = alone[columns].to_numpy(), alone[columns].to_numpy()[[1, 0, 3, 2, 4]]
    expected = 0.75 * own + 0.25 * fellow
    expected[4] = own[4]
    assert fused[columns].to_numpy() == pytest.approx(expected, abs=1e-6)
    assert not np.allclose(fused[columns].to_numpy()[:4], own[:4], atol=1e-4)  # the two eyes do differ
    served = grade_request(fusing, encode_photos([path.read_bytes() for path in inputs["path"]]))
    assert served[columns].to_numpy() == pytest.approx(own, abs=1e-5)


def test_explain_adds_a_heat_map_png_per_graded_photo_and_none_for_a_refused_one(grader, raw_dir):
    request = photos(raw_dir, 2) + [b"not a photo"]
    answer = grade_request(grader, encode_photos(request), explain=True)
    assert list(answer.columns) == [*PREDICTION_COLUMNS, HEATMAP_COLUMN]
    assert answer.loc[2, HEATMAP_COLUMN] is None and not answer.loc[2, "gradable"]
    overlays = [np.asarray(Image.open(io.BytesIO(base64.b64decode(text)))) for text in answer[HEATMAP_COLUMN][:2]]
    assert all(overlay.shape == (32, 32, 3) for overlay in overlays)  # the photo as the network saw it
    # The two photos' Grad-CAM maps for their grades differ, and so do their overlays; each overlay
    # is its photo coloured by the map, not the photo alone.
    pixels = [photo_input(photo, 64, 32) for photo in request[:2]]
    maps = grad_cam(grader.network, normalize_batch(torch.stack(pixels)), last_conv_stage(grader.network),
                    torch.as_tensor(answer["predicted_grade"][:2].to_numpy()))
    assert not torch.allclose(maps[0], maps[1], atol=0.05)
    assert not np.array_equal(overlays[0], overlays[1])
    for overlay, image in zip(overlays, pixels):
        assert np.abs(overlay.astype(int) - image.permute(1, 2, 0).numpy().astype(int)).mean() > 5
    assert HEATMAP_COLUMN not in grade_request(grader, encode_photos(request)).columns  # off: as before


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_the_logged_grader_takes_explain_as_a_parameter(grader, raw_dir, sqlite_tracking):
    import mlflow

    from pipeline.tracking import registry

    request = encode_photos(photos(raw_dir, 2))
    with mlflow.start_run():
        uri, _ = registry.log_grader(grader, photos(raw_dir, 2))
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.get_params_schema().to_dict() == [
        {"name": "explain", "type": "boolean", "default": False, "shape": None}]
    explained = model.predict(request, params={"explain": True})
    assert explained[HEATMAP_COLUMN].map(lambda text: base64.b64decode(text)[:8] == b"\x89PNG\r\n\x1a\n").all()
    assert HEATMAP_COLUMN not in model.predict(request).columns
