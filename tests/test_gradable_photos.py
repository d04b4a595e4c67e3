"""A trained grader knows when not to grade: pictures of other things, and synthetic photos made
strongly blurred, darkened or over-exposed, are refused with the matching reason; clean photos are
graded. One small training (256x192 photos, 128 px cache, resnet18 at 32 px, 2 epochs)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageFilter

from pipeline.cli import train as train_cli
from pipeline.data.preprocess import preprocess
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_eyepacs_layout
from pipeline.catalog import NOT_A_FUNDUS, OUT_OF_FOCUS, OVEREXPOSED, TOO_DARK
from pipeline.predict import list_inputs, predict_photos
from pipeline.tracking import registry
from tests.conftest import scratch_dir, tracking_store
from tests.real_photos import NON_FUNDUS, non_fundus, png_bytes

pytestmark = pytest.mark.slow  # a training

# The degradations the README states, each at a level the grader must refuse at least 90% of:
DEGRADATIONS = {
    # a Gaussian blur of 1.5% of the photo's short side (about the field's diameter): vessels smear
    OUT_OF_FOCUS: lambda image: image.filter(ImageFilter.GaussianBlur(0.015 * min(image.size))),
    # 15% of the exposure
    TOO_DARK: lambda image: Image.fromarray((np.asarray(image, float) * 0.15).round().astype(np.uint8)),
    # three times the exposure, clipped at white
    OVEREXPOSED: lambda image: Image.fromarray(np.clip(np.asarray(image, float) * 3, 0, 255).astype(np.uint8)),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with scratch_dir(tmp_path_factory, "gradable") as root, pytest.MonkeyPatch.context() as monkeypatch:
        raw = root / "raw"
        generate_eyepacs_layout(raw, train_patients=40, test_patients=25, size=(256, 192),
                                grade_shares=UNIFORM_GRADE_SHARES, seed=3, workers=2)
        preprocess(raw, root / "processed", image_size=128, val_fraction=0.25, seed=0, num_workers=2)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store(root))
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "gradable")
        monkeypatch.chdir(root)
        assert train_cli.main(["--data_dir", str(root / "processed"), "--image_size", "32", "--epochs", "2",
                               "--batch_size", "8", "--num_workers", "0", "--bootstrap_resamples", "0",
                               "--checkpoint_artifact", "false", "--checkpoint_dir", str(root / "checkpoints")]) == 0
        client = MlflowClient()
        (run,) = client.search_runs([client.get_experiment_by_name("gradable").experiment_id])
        grader = registry.load_model(run.data.tags["retina_flow.model_uri"]).grader
        manifest = pd.read_csv(root / "processed" / "128px" / "manifest.csv", dtype={"id": str})
        yield {"grader": grader, "raw": raw, "manifest": manifest, "run": run}


def test_the_thresholds_are_fitted_and_logged(trained):
    thresholds, metrics = trained["grader"].spec.gradability, trained["run"].data.metrics
    assert thresholds is not None and thresholds.max_novelty is not None and np.isfinite(thresholds.max_novelty)
    for name, value in thresholds.to_dict().items():
        assert metrics[f"gradable_{name}"] == pytest.approx(value)
    assert metrics["temperature"] == pytest.approx(trained["grader"].spec.temperature)


def test_at_most_2_percent_of_clean_validation_and_test_photos_are_refused(trained):
    rows = trained["manifest"][trained["manifest"]["split"].isin(["val", "test"])]
    inputs = list_inputs(trained["raw"] / "images").set_index("id").loc[rows["id"]].reset_index()
    predicted = predict_photos(trained["grader"], inputs)
    assert len(predicted) >= 70
    assert (~predicted["gradable"]).mean() <= 0.02, predicted["ungradable_reason"].value_counts()
    graded = predicted[predicted["gradable"]]
    assert (graded["predicted_grade"] >= 0).all() and graded["referable"].notna().all()


@pytest.mark.parametrize("reason", list(DEGRADATIONS))
def test_degraded_photos_are_refused_with_the_matching_reason(trained, reason):
    test_ids = trained["manifest"].loc[trained["manifest"]["split"] == "test", "id"]
    photos = [png_bytes(DEGRADATIONS[reason](Image.open(trained["raw"] / "images" / f"{image_id}.jpeg").convert("RGB")))
              for image_id in test_ids]
    answer = trained["grader"].grade_photos(photos)
    assert len(answer) >= 50
    assert (answer["ungradable_reason"] == reason).mean() >= 0.9, answer["ungradable_reason"].value_counts()
    refused = answer[~answer["gradable"]]
    assert (refused["predicted_grade"] == -1).all() and refused["referable"].isna().all()


def test_pictures_of_other_things_are_not_fundus_photographs(trained):
    answer = trained["grader"].grade_photos([png_bytes(non_fundus(name)) for name in NON_FUNDUS])
    assert answer["ungradable_reason"].tolist() == [NOT_A_FUNDUS] * len(NON_FUNDUS)
    assert answer["p_grade_0"].isna().all()  # the network never saw them


def test_a_folder_with_a_bad_photo_is_graded_around_it(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    ids = trained["manifest"].loc[trained["manifest"]["split"] == "test", "id"].head(3).tolist()
    for image_id in ids:
        (folder / f"{image_id}.jpeg").write_bytes((trained["raw"] / "images" / f"{image_id}.jpeg").read_bytes())
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8\xff truncated")
    buffer = io.BytesIO()
    non_fundus("chelsea").save(buffer, format="PNG")
    (folder / "cat.png").write_bytes(buffer.getvalue())
    predicted = predict_photos(trained["grader"], list_inputs(folder)).set_index("id")
    assert predicted.loc["broken", "ungradable_reason"] == "unreadable photo"
    assert predicted.loc["cat", "ungradable_reason"] == NOT_A_FUNDUS
    assert predicted.loc[ids, "gradable"].all()
