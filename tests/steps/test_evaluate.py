"""evaluate decides as the grader says: each test eye blended with its fellow's, then cut points."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.catalog import NOT_A_FUNDUS, UNREADABLE
from pipeline.cli import evaluate as evaluate_cli
from pipeline.data.dataset import EvalPreset, FundusDataset, ProcessedDataset, make_loader
from pipeline.data.preprocess import preprocess
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_layout
from pipeline.decision import fuse_eyes, predicted_grades, quadratic_kappa
from pipeline.grading import Grader
from pipeline.photo_grader import PROBABILITY_COLUMNS, GraderSpec
from pipeline.models import build_model
from pipeline.steps.evaluate import TEST_PREDICTIONS
from pipeline.tracking import registry

CUT_POINTS = (1.9, 2.0, 2.1, 2.2)  # near the expected grade of an untrained network's near-uniform output
FUSE_WEIGHT = 0.4


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_evaluate_fuses_each_eye_with_its_fellow_and_decides_by_the_cut_points(processed_dir, raw_dir, sqlite_tracking,
                                                                               tmp_path):
    torch.manual_seed(3)
    grader = Grader(build_model("resnet18", pretrained=False),
                    GraderSpec("resnet18", 32, 64, 0.5, cut_points=CUT_POINTS, fuse_weight=FUSE_WEIGHT))
    photo = next((raw_dir / "images").iterdir()).read_bytes()
    with mlflow.start_run():
        uri, _ = registry.log_grader(grader, [photo, photo])
    assert evaluate_cli.main(["--model_uri", uri, "--data_dir", str(processed_dir), "--bootstrap_resamples", "0"]) == 0

    # By hand: the grader's own probabilities of the test cache, blended by patient, cut.
    processed = ProcessedDataset(processed_dir, 64)
    rows = processed.split("test")
    loader = make_loader(FundusDataset(processed.root, rows, EvalPreset(32)), 8, shuffle=False, num_workers=0, seed=0)
    targets, own = grader.probabilities_of(loader)
    fused = fuse_eyes(own, rows["patient"].to_numpy(), FUSE_WEIGHT)
    grades = predicted_grades(fused, CUT_POINTS)
    assert not np.allclose(fused, own, atol=1e-4) and not (grades == own.argmax(axis=1)).all()  # both matter here

    client = MlflowClient()
    run = next(r for r in client.search_runs([client.get_experiment_by_name("tests").experiment_id])
               if r.data.tags.get("retina_flow.step") == "evaluate")
    assert run.data.metrics["test_accuracy"] == pytest.approx(float((grades == targets).mean()))
    assert run.data.metrics["test_kappa"] == pytest.approx(quadratic_kappa(targets, grades))
    predictions = pd.read_csv(client.download_artifacts(run.info.run_id, TEST_PREDICTIONS, str(tmp_path)))
    assert predictions["predicted_grade"].tolist() == grades.tolist()
    assert predictions[PROBABILITY_COLUMNS].to_numpy() == pytest.approx(fused, abs=1e-5)


def test_the_check_is_scored_against_a_datasets_own_gradability_labels():
    """Ten photos, the last three labelled ungradable; the grader refuses two of those and one of
    the others: it finds 2/3 of the ungradable ones and grades 6/7 of the gradable ones."""
    from pipeline.grading import Judged
    from pipeline.steps.evaluate import split_metrics

    grader = Grader(build_model("resnet18", pretrained=False), GraderSpec("resnet18", 32, 64, 0.5))
    probabilities = np.full((10, 5), 0.2)
    reasons = ["", "", "", "", "", "too dark", "", "out of focus", "", "too dark"]
    judged = Judged(probabilities, np.zeros((10, 4)), np.zeros((10, 4)), reasons)
    labels = np.array([True] * 7 + [False] * 3)
    metrics = split_metrics(grader, np.zeros(10, int), probabilities, judged, np.arange(10), prefix="test_",
                            resamples=0, seed=0, labels=labels)
    assert metrics["test_ungradable_fraction"] == pytest.approx(0.3)
    assert metrics["test_ungradable_sensitivity"] == pytest.approx(2 / 3)
    assert metrics["test_ungradable_specificity"] == pytest.approx(6 / 7)
    assert metrics["test_accuracy"] == pytest.approx(1.0) and metrics["test_all_accuracy"] == pytest.approx(1.0)


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_photos_labelled_ungradable_that_hold_no_fundus_are_kept_and_refused(sqlite_tracking, tmp_path):
    """A set's ungradable photos may be too poor for a field of view to be found, or unreadable:
    preprocess keeps them (as the grader would refuse them) instead of stopping, a rerun reuses
    them, and evaluate refuses them for that reason, scoring its check on them."""
    root = tmp_path / "raw"
    generate_layout(root, layout="folder", train_patients=3, test_patients=2, size=(128, 96),
                    grade_shares=UNIFORM_GRADE_SHARES, seed=5)
    labels = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    blank, broken = labels.index[labels["gradable"] == "true"][:2]
    labels.loc[[blank, broken], ["grade", "gradable"]] = ["", "false"]
    labels.to_csv(root / "labels.csv", index=False)
    Image.new("RGB", (128, 96), (90, 90, 90)).save(root / labels.loc[blank, "path"])  # a grey frame, no fundus
    (root / labels.loc[broken, "path"]).write_bytes(b"not a photo")
    ids = {Path(labels.loc[blank, "path"]).stem: NOT_A_FUNDUS, Path(labels.loc[broken, "path"]).stem: UNREADABLE}

    first = preprocess(root, tmp_path / "data", image_size=64, layout="folder", role="external", num_workers=1)
    again = preprocess(root, tmp_path / "data", image_size=64, layout="folder", role="external", num_workers=1)
    assert again["reused_images"] == len(labels) and first["ungradable"]["test"] == (labels["gradable"] == "false").sum()
    manifest = pd.read_csv(tmp_path / "data" / "64px" / "manifest.csv", dtype={"id": str}, keep_default_na=False)
    refused = manifest.set_index("id")["refused"]
    refused = refused[refused != ""]
    # The two made here, and any of the generator's own labelled-ungradable photos too dark and
    # blurred for a field of view at this size; never a photo labelled gradable.
    assert refused[list(ids)].to_dict() == ids
    assert not manifest.set_index("id").loc[refused.index, "gradable"].any()

    grader = Grader(build_model("resnet18", pretrained=False), GraderSpec("resnet18", 32, 64, 0.5))
    with mlflow.start_run():
        uri, _ = registry.log_grader(grader, [(root / labels.loc[0, "path"]).read_bytes()])
    assert evaluate_cli.main(["--model_uri", uri, "--data_dir", str(tmp_path / "data"), "--bootstrap_resamples", "0"]) == 0
    client = MlflowClient()
    run = next(r for r in client.search_runs([client.get_experiment_by_name("tests").experiment_id])
               if r.data.tags.get("retina_flow.step") == "evaluate")
    predictions = pd.read_csv(client.download_artifacts(run.info.run_id, TEST_PREDICTIONS, str(tmp_path)),
                              dtype={"id": str}, keep_default_na=False).set_index("id")
    for image_id, reason in ids.items():
        assert predictions.loc[image_id, "ungradable_reason"] == reason and predictions.loc[image_id, "predicted_grade"] == -1
        assert predictions.loc[image_id, "p_grade_0"] == ""  # the network never saw it
    labelled = (labels["gradable"] == "false").sum()
    assert run.data.metrics["test_images"] == len(labels) and run.data.metrics["test_graded_images"] == len(labels) - labelled
    # A grader with no quality thresholds refuses exactly the photos it could not prepare.
    assert run.data.metrics["test_ungradable_sensitivity"] == pytest.approx(len(refused) / labelled)
    assert run.data.metrics["test_ungradable_specificity"] == 1.0
