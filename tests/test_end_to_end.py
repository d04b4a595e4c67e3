"""The real thing: `mlflow run` against a real `mlflow server` process on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from sklearn.metrics import accuracy_score, cohen_kappa_score

from pipeline.catalog import PER_EPOCH_METRICS
from pipeline.data.dataset import EvalPreset, FundusDataset, ProcessedDataset, normalize_batch
from pipeline.gradcam import grad_cam
from pipeline.models import last_conv_stage
from pipeline.photo_grader import PREDICTION_COLUMNS, PROBABILITY_COLUMNS, encode_photos
from pipeline.steps.evaluate import TEST_PREDICTIONS
from pipeline.tracking import registry, tags
from tests.conftest import STUDY_ENV, mlflow_run, runs_by_step, scratch_dir

pytestmark = pytest.mark.slow  # real `mlflow run` against a real server

GRID = {("resnet18", "true"), ("resnet18", "false"), ("resnet50", "true"), ("resnet50", "false")}


@pytest.fixture(scope="module")
def study(mlflow_server, raw_dir, imagenet_weights, tmp_path_factory):
    """One whole study through `mlflow run . -e main`, all four configurations."""
    with scratch_dir(tmp_path_factory, "e2e") as root:
        result = mlflow_run(mlflow_server, ["-e", "main", "--experiment-name", "e2e", "-P", "config=experiments/tiny.yaml",
                                            "-P", f"raw_dir={raw_dir}", "-P", f"data_dir={root / 'processed'}",
                                            "-P", f"checkpoint_dir={root / 'checkpoints'}"],
                            TORCH_HOME=str(imagenet_weights["home"]), **STUDY_ENV)
        client = MlflowClient(mlflow_server)
        yield client, runs_by_step(client, "e2e"), result, root / "checkpoints"


def test_study_tree_and_train_params(study):
    _, runs, result, _ = study
    (main_run,) = runs["main"]
    assert main_run.info.status == "FINISHED"
    train_runs = runs["train"]
    assert len(train_runs) == 4
    assert {(r.data.params["model"], r.data.params["pretrained"]) for r in train_runs} == GRID
    for run in train_runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == main_run.info.run_id
        params = run.data.params
        assert (params["epochs"], params["batch_size"], params["lr"], params["image_size"]) == ("2", "8", "0.01", "32")
        assert (params["momentum"], params["weight_decay"], params["freeze_epochs"], params["seed"]) == ("0.9", "0.0005", "0", "0")
    assert len(runs["preprocess"]) == len(runs["evaluate"]) == len(runs["compare"]) == 1
    assert "champion: dr-resnet" in result.stdout


def test_the_ui_opens_on_training_runs_and_the_study_run_on_its_comparison(study):
    client, runs, _, _ = study
    assert client.get_experiment_by_name("e2e").tags["mlflow.experimentKind"] == "custom_model_development"
    (main_run,) = runs["main"]
    description = main_run.data.tags["mlflow.note.content"]
    version = client.get_model_version_by_alias("dr-resnet", "champion")
    assert f"champion `dr-resnet` v{version.version}" in description
    assert "| configuration |" in description and description.count("| ran |") == 4
    for run in runs["train"]:
        assert run.info.run_id in description  # linked
        note = run.data.tags["mlflow.note.content"]
        assert f"Selected epoch **{int(run.data.metrics['best_epoch'])}**" in note
        assert f"{run.data.metrics['selected_test_accuracy']:.3f}" in note


def test_train_runs_log_system_metrics(study):
    _, runs, _, _ = study
    for run in runs["train"]:
        system = {name for name in run.data.metrics if name.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system


def test_one_value_per_epoch_for_every_per_epoch_metric(study):
    client, runs, _, _ = study
    for run in runs["train"]:
        for metric in PER_EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == [1, 2], (run.info.run_name, metric)


def test_confusion_matrix_and_checkpoint_artifacts(study, tmp_path):
    client, runs, _, checkpoints = study
    # Each run wrote its crash-resume checkpoint there every epoch and removed it once finished.
    assert checkpoints.is_dir() and not any(checkpoints.iterdir())
    for run in runs["train"]:
        run_id = run.info.run_id
        names = {a.path for a in client.list_artifacts(run_id, "confusion_matrix")}
        assert names == {"confusion_matrix/test_confusion_matrix.png", "confusion_matrix/test_confusion_matrix.json"}
        matrices = json.loads(Path(client.download_artifacts(
            run_id, "confusion_matrix/test_confusion_matrix.json", str(tmp_path))).read_text())
        assert np.array(matrices["counts"]).shape == (5, 5)
        # Every test photo the grader took (of 5 patients' 10 eyes; a refused one is not graded) counted once.
        graded = 10 * (1 - run.data.metrics["selected_test_ungradable_fraction"])
        assert graded > 5 and np.sum(matrices["counts"]) == pytest.approx(graded)
        checkpoint = client.download_artifacts(run_id, "checkpoints/best_model.pt", str(tmp_path / run_id))
        state = torch.load(checkpoint, weights_only=True)
        assert state["fc.weight"].shape[0] == 5
        assert ("layer4.0.conv3.weight" in state) == (run.data.params["model"] == "resnet50")


def test_compare_artifacts_read_back_the_four_configurations(study, tmp_path):
    client, runs, _, _ = study
    (compare_run,) = runs["compare"]
    names = {a.path for a in client.list_artifacts(compare_run.info.run_id, "comparison")}
    assert {"comparison/comparison.txt", "comparison/comparison.csv", "comparison/accuracy_curves.png",
            "comparison/loss_curves.png"} <= names
    table = pd.read_csv(client.download_artifacts(compare_run.info.run_id, "comparison/comparison.csv", str(tmp_path)))
    assert len(table) == 4 and set(table["status"]) == {"ran"}
    by_run = {(r.data.params["model"], r.data.params["pretrained"] == "true"): r for r in runs["train"]}
    for row in table.itertuples():
        run = by_run[(row.model, bool(row.pretrained))]
        assert row.best_val_epoch == run.data.metrics["best_epoch"]
        assert row.highest_test_accuracy == pytest.approx(run.data.metrics["highest_test_accuracy"])


def test_champion_is_best_on_validation_and_grades_photos(study, mlflow_server, raw_dir, tmp_path):
    client, runs, _, _ = study
    version = client.get_model_version_by_alias("dr-resnet", "champion")
    scores = [r.data.metrics["selection_score"] for r in runs["train"]]
    best = max(score for score in scores if not np.isnan(score))
    assert client.get_run(version.run_id).data.metrics["selection_score"] == best  # best val_kappa (ties: any)
    (evaluate_run,) = runs["evaluate"]
    assert evaluate_run.data.tags[tags.SOURCE_RUN] == version.run_id
    assert evaluate_run.data.params["model_uri"] == "models:/dr-resnet@champion"
    mlflow.set_tracking_uri(mlflow_server)
    try:
        model = mlflow.pyfunc.load_model("models:/dr-resnet@champion", dst_path=str(tmp_path))
        photos = [path.read_bytes() for path in sorted((raw_dir / "images").iterdir())[:3]]
        answer = model.predict(encode_photos(photos))
    finally:
        mlflow.set_tracking_uri(None)
    assert list(answer.columns) == PREDICTION_COLUMNS and len(answer) == 3
    probabilities = answer[PROBABILITY_COLUMNS].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5) and (probabilities >= 0).all()


def test_study_report_renders_in_chromium(study, tmp_path):
    """The compare run's HTML report, as logged, loads every image with no console errors."""
    from tests.browser import console_messages, probed_title, run_chromium, with_image_probe

    client, runs, _, _ = study
    (compare_run,) = runs["compare"]
    page = Path(client.download_artifacts(compare_run.info.run_id, "comparison/report.html", str(tmp_path))).read_text()
    images = page.count("data:image/png;base64,")
    assert images >= 5  # accuracy, kappa and loss curves, confusion grid, champion ROC (+ Grad-CAM)
    shown = run_chromium(Path(tmp_path / "report.html"), tmp_path / "profile-1", f"--screenshot={tmp_path / 'shot.png'}")
    assert console_messages(shown.stderr) == [] and (tmp_path / "shot.png").stat().st_size > 10_000
    probed = tmp_path / "probed.html"
    probed.write_text(with_image_probe(page))
    dom = run_chromium(probed, tmp_path / "profile-2", "--dump-dom")
    assert probed_title(dom.stdout) == f"images {images}/{images}"
    for run in runs["train"]:
        assert run.info.run_id[:8] in page  # every train run is linked


def test_the_mlflow_ui_shows_the_training_runs_and_the_study_runs_comparison(study, tmp_path):
    """The two links `main` prints, opened in a browser that has never chosen a view."""
    from tests.browser import rendered_text

    _, runs, result, _ = study
    runs_page = re.search(r"to browse the runs, open (\S+)", result.stdout).group(1)
    shown = rendered_text(runs_page, tmp_path / "profile-runs")
    assert "Runs - Experiment" in shown and "study" in shown, shown[:2000]
    assert "Token Usage" not in shown and "Traces 0" not in shown  # not the GenAI overview

    study_page = re.search(r"study run: (\S+)", result.stdout).group(1)
    shown = rendered_text(study_page, tmp_path / "profile-study")
    assert "Description retina-flow study : champion dr-resnet" in shown, shown[:3000]
    for label in ("resnet18 pretrained", "resnet18 scratch", "resnet50 pretrained", "resnet50 scratch"):
        assert label in shown
    assert "System metrics" in shown and "Model metrics" in shown

    # The champion's version page and a train run's page, through the links main prints and the
    # report holds, open in Model training mode too.
    version_page = re.search(r"champion's page \(its model card\): (\S+)", result.stdout).group(1)
    shown = rendered_text(version_page, tmp_path / "profile-version")
    assert "Version 1" in shown and "retina-flow DR grader" in shown, shown[:3000]  # its model card
    assert "Token Usage" not in shown and "Traces" not in shown
    client = study[0]
    (compare_run,) = runs["compare"]
    report = Path(client.download_artifacts(compare_run.info.run_id, "comparison/report.html", str(tmp_path))).read_text()
    train_id = runs["train"][0].info.run_id
    train_page = re.search(rf'href="([^"]*/runs/{train_id}[^"]*)"', report).group(1).replace("&amp;", "&")
    shown = rendered_text(train_page, tmp_path / "profile-train")
    # A run page has a Traces tab in either mode; Model training mode's page has the metric tabs.
    assert "Model metrics" in shown and "System metrics" in shown, shown[:3000]
    token = shown.find("Token Usage")
    assert token < 0, shown[max(token - 300, 0):token + 100]
    assert re.search(r"report: \S+/comparison/report.html", result.stdout)


def test_gradcam_artifact_is_the_champions_gradcam_of_its_photos(study, mlflow_server, monkeypatch, tmp_path):
    client, runs, _, checkpoints = study
    version = client.get_model_version_by_alias("dr-resnet", "champion")
    names = {a.path for a in client.list_artifacts(version.run_id, "gradcam")}
    assert names == {"gradcam/test_gradcam.png", "gradcam/test_gradcam.npz"}
    arrays = np.load(client.download_artifacts(version.run_id, "gradcam/test_gradcam.npz", str(tmp_path)))
    heatmaps, grades = arrays["heatmaps"], arrays["grades"]
    assert heatmaps.shape[1:] == (32, 32) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert sorted(set(grades)) == [0, 1, 2, 3, 4]  # a fixed sample of every grade
    # They are the champion's Grad-CAM of exactly those test photos: recomputed here from the
    # registered network and the processed cache (grad_cam itself is checked in test_gradcam.py).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        grader = registry.load_model("models:/dr-resnet@champion").grader
    finally:
        mlflow.set_tracking_uri(None)
    cache = ProcessedDataset(checkpoints.parent / "processed" / "64px")
    rows = cache.split("test").set_index("id").loc[arrays["ids"]].reset_index()
    dataset = FundusDataset(cache.root, rows, EvalPreset(32))
    images = normalize_batch(torch.stack([dataset[i][0] for i in range(len(rows))]))
    recomputed = grad_cam(grader.network, images, last_conv_stage(grader.network)).numpy()
    assert np.abs(recomputed - heatmaps).max() < 1e-4


def test_the_champions_test_metrics_are_its_predictions(study, tmp_path):
    """Accuracy and QWK recomputed by scikit-learn from evaluate's own predictions CSV; accuracy's
    interval is not a point (QWK's may be: a two-epoch champion may call one grade for all)."""
    client, runs, _, _ = study
    (evaluate_run,) = runs["evaluate"]
    metrics = evaluate_run.data.metrics
    predictions = pd.read_csv(client.download_artifacts(evaluate_run.info.run_id, TEST_PREDICTIONS, str(tmp_path)))
    graded = predictions[predictions["gradable"].astype(bool)]
    assert metrics["test_accuracy"] == pytest.approx(accuracy_score(graded["grade"], graded["predicted_grade"]))
    assert metrics["test_kappa"] == pytest.approx(
        cohen_kappa_score(graded["grade"], graded["predicted_grade"], weights="quadratic"))
    assert metrics["test_accuracy_ci_low"] < metrics["test_accuracy_ci_high"]
    for run in runs["train"]:
        assert run.data.params["select_metric"] == "val_kappa"


def test_selection_score_is_the_best_epochs_validation_kappa(study):
    """Read from the per-epoch history, not from the value the run logged as its choice."""
    client, runs, _, _ = study
    for run in runs["train"]:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_kappa")}
        # An epoch whose outputs were NaN (a diverged model: NaN loss) is never chosen over another.
        sound = {m.step for m in client.get_metric_history(run.info.run_id, "val_loss") if np.isfinite(m.value)}
        best_epoch = int(run.data.metrics["best_epoch"])
        if best_epoch not in sound:
            assert not sound and np.isnan(run.data.metrics["selection_score"])
            continue
        assert run.data.metrics["selection_score"] == pytest.approx(history[best_epoch], nan_ok=True)
        finite = [value for step, value in history.items() if step in sound and not np.isnan(value)]
        if finite:  # no sound epoch has a higher validation kappa than the chosen one
            assert history[best_epoch] == max(finite)


@pytest.fixture(scope="module")
def parallel_study(study, mlflow_server, raw_dir, imagenet_weights, tmp_path_factory):
    """The same study with the same seeds for resnet18 (what runs side by side is tested here, not
    depth), its two trainings at once (`-P parallel=2`)."""
    with scratch_dir(tmp_path_factory, "e2e-parallel") as root:
        mlflow_run(mlflow_server, ["-e", "main", "--experiment-name", "e2e-parallel", "-P", "config=experiments/tiny.yaml",
                                   "-P", f"raw_dir={raw_dir}", "-P", f"data_dir={root / 'processed'}",
                                   "-P", f"checkpoint_dir={root / 'checkpoints'}", "-P", "parallel=2",
                                   "-P", "models=resnet18",
                                   "-P", "registered_model=dr-resnet-parallel"],
                   TORCH_HOME=str(imagenet_weights["home"]), **STUDY_ENV)
        client = MlflowClient(mlflow_server)
        yield runs_by_step(client, "e2e-parallel")


def test_a_parallel_study_trains_side_by_side_and_gives_the_sequential_table(study, parallel_study, tmp_path):
    client, sequential, _, _ = study
    (main_run,) = parallel_study["main"]
    assert main_run.info.status == "FINISHED"
    train_runs = parallel_study["train"]
    assert {(r.data.params["model"], r.data.params["pretrained"]) for r in train_runs} == {
        (model, pretrained) for model, pretrained in GRID if model == "resnet18"}
    for run in train_runs:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == main_run.info.run_id
        for metric in PER_EPOCH_METRICS:
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == [1, 2], metric
        assert "system/cpu_utilization_percentage" in run.data.metrics
    spans = sorted((r.info.start_time, r.info.end_time) for r in train_runs)
    assert any(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:]))  # they overlapped

    def table(runs):
        (compare_run,) = runs["compare"]
        folder = tmp_path / compare_run.info.run_id
        folder.mkdir()
        return pd.read_csv(client.download_artifacts(compare_run.info.run_id, "comparison/comparison.csv", str(folder)))

    sequential_rows = table(sequential).query("model == 'resnet18'").reset_index(drop=True)
    pd.testing.assert_frame_equal(table(parallel_study), sequential_rows)
