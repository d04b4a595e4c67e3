"""Entry points in-process against the real tracking server: repeats over seeds, an external set,
evaluate, predict."""

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.cli import evaluate as evaluate_cli
from pipeline.cli import main as main_cli
from pipeline.cli import predict as predict_cli
from pipeline.compare import CROSS_DATASET_METRICS
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_layout
from pipeline.model_card import CARD_ARTIFACT, VALIDATED_HEADING
from pipeline.steps.compare import CROSS_DATASET_CSV, CROSS_DATASET_HEADING
from pipeline.steps.study import INTERNAL_TEST
from pipeline.tracking import tags
from tests.conftest import PROJECT_ROOT, scratch_dir

pytestmark = pytest.mark.slow  # a whole study against a real server

SEEDS_MODEL = "dr-resnet-seeds"


EXTERNAL = "messidor2-synthetic"


def external_config(root: Path) -> Path:
    """tiny.yaml with one external set: a synthetic Messidor-2 (its ungradable labels included),
    drawn from other seeds than the study's photos and on another frame (3:2, as Messidor's)."""
    external = root / "messidor2"
    generate_layout(external, layout="messidor2", train_patients=4, test_patients=2, size=(144, 96),
                    grade_shares=UNIFORM_GRADE_SHARES, seed=11)
    config = root / "external.yaml"
    config.write_text(yaml.safe_dump({
        "base": str(PROJECT_ROOT / "experiments" / "tiny.yaml"),
        "external": [{"name": EXTERNAL, "raw_dir": str(external), "layout": "messidor2"}]}))
    return config


@pytest.fixture(scope="module")
def two_seed_study(raw_dir, mlflow_server, tmp_path_factory):
    """`main` with seeds=2 over one configuration and one external set, tracked on the real server."""
    uri = mlflow_server
    with scratch_dir(tmp_path_factory, "study") as root, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study-seeds")
        monkeypatch.chdir(root)
        code = main_cli.main(["--config", str(external_config(root)), "--raw_dir", str(raw_dir),
                              "--data_dir", str(root / "data"), "--models", "resnet18", "--pretrained", "false",
                              "--seeds", "2", "--registered_model", SEEDS_MODEL])
        yield code, MlflowClient(uri), root
    mlflow.set_tracking_uri(None)  # main ran in this process and pointed MLflow at this module's server


def runs_of(client, step):
    experiment = client.get_experiment_by_name("study-seeds").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.`{tags.STEP}` = '{step}'")


def test_compare_reports_mean_and_std_over_seeds(two_seed_study, tmp_path):
    code, client, _ = two_seed_study
    assert code == 0
    trains = runs_of(client, "train")
    assert sorted(r.data.params["seed"] for r in trains) == ["0", "1"]
    (compare_run,) = runs_of(client, "compare")
    table = pd.read_csv(client.download_artifacts(compare_run.info.run_id, "comparison/comparison.csv", str(tmp_path)))
    row = table.iloc[0]
    assert row["runs"] == 2
    values = [r.data.metrics["selected_test_kappa"] for r in trains]
    assert row["test_kappa"] == pytest.approx(sum(values) / 2)
    assert row["test_kappa_std"] == pytest.approx(pd.Series(values).std(ddof=1), abs=1e-9)
    accuracies = [r.data.metrics["highest_test_accuracy"] for r in trains]
    assert row["highest_test_accuracy_std"] == pytest.approx(pd.Series(accuracies).std(ddof=1), abs=1e-9)


def test_the_external_set_is_evaluated_in_a_nested_run_and_shown_across_datasets(two_seed_study, tmp_path):
    code, client, root = two_seed_study
    assert code == 0
    (study,) = runs_of(client, "main")
    evaluations = {r.data.tags.get(tags.DATASET, INTERNAL_TEST): r for r in runs_of(client, "evaluate")
                   if r.data.tags.get("mlflow.parentRunId") == study.info.run_id}
    assert set(evaluations) == {INTERNAL_TEST, EXTERNAL}
    external = evaluations[EXTERNAL].data.metrics
    manifest = pd.read_csv(root / "data" / "external" / EXTERNAL / "64px" / "manifest.csv")
    assert set(manifest["split"]) == {"test"} and external["test_images"] == len(manifest)
    # The set's ungradable labels: never graded, and the grader's check scored against them.
    assert external["test_graded_images"] <= manifest["gradable"].sum()
    assert {"test_ungradable_sensitivity", "test_ungradable_specificity"} <= set(external)

    (compare,) = runs_of(client, "compare")
    table = pd.read_csv(client.download_artifacts(compare.info.run_id, CROSS_DATASET_CSV, str(tmp_path)))
    assert table["dataset"].tolist() == [INTERNAL_TEST, EXTERNAL]
    assert table["layout"].tolist() == ["labs", "messidor2"]
    for row in table.itertuples(index=False):
        metrics = evaluations[row.dataset].data.metrics
        assert row.n == metrics["test_graded_images"]
        for metric in CROSS_DATASET_METRICS:
            for suffix in ("", "_ci_low", "_ci_high"):
                logged = metrics.get(f"test_{metric}{suffix}")
                assert getattr(row, metric + suffix) == pytest.approx(logged, nan_ok=True), (row.dataset, metric)
    report = open(client.download_artifacts(compare.info.run_id, "comparison/report.html", str(tmp_path))).read()
    description = study.data.tags[tags.NOTE]
    for shown in (report, description):
        assert CROSS_DATASET_HEADING in shown and EXTERNAL in shown and INTERNAL_TEST in shown
    # The model card lists it, on the registered version and as the champion's artifact.
    version = client.get_model_version_by_alias(SEEDS_MODEL, "champion")
    card = open(client.download_artifacts(version.tags["train_run_id"], CARD_ARTIFACT, str(tmp_path))).read()
    for text in (version.description, card):
        validated = text.split(VALIDATED_HEADING, 1)[1]
        assert f"| {INTERNAL_TEST} | labs |" in validated and f"| {EXTERNAL} | messidor2 |" in validated


def test_evaluate_by_train_run_id(two_seed_study, monkeypatch, capsys, tmp_path):
    _, client, root = two_seed_study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study-seeds")
    monkeypatch.chdir(root)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    train_run = runs_of(client, "train")[0]
    assert evaluate_cli.main(["--model_uri", train_run.info.run_id, "--data_dir", str(root / "data"),
                              "--bootstrap_resamples", "50"]) == 0
    assert list(temp.iterdir()) == []  # no downloaded copy of the model is left behind
    evaluated = [r for r in runs_of(client, "evaluate") if r.data.tags.get("retina_flow.model_run_id") == train_run.info.run_id]
    # The same weights on the same test images: the exported, self-normalising fp32 model agrees
    # exactly with an fp32 training run; after bf16-autocast training one borderline image may flip.
    images = len(pd.read_csv(root / "data" / "64px" / "manifest.csv").query("split == 'test'"))
    tolerance = 0 if train_run.data.tags["retina_flow.precision"] == "float32" else 1 / images
    assert evaluated and evaluated[0].data.metrics["test_accuracy"] == pytest.approx(
        train_run.data.metrics["selected_test_accuracy"], abs=tolerance + 1e-12)
    assert "test_kappa" in capsys.readouterr().out


def test_predict_folder_and_csv(two_seed_study, raw_dir, tmp_path, monkeypatch):
    _, client, root = two_seed_study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study-seeds")
    monkeypatch.chdir(root)
    folder_out, csv_out = tmp_path / "folder.csv", tmp_path / "csv.csv"
    model = ["--model_uri", f"models:/{SEEDS_MODEL}@champion"]
    assert predict_cli.main([*model, "--input", str(raw_dir / "images"), "--output", str(folder_out), "--batch_size", "7"]) == 0
    assert predict_cli.main([*model, "--input", str(raw_dir / "test_img.csv"), "--output", str(csv_out)]) == 0
    by_folder, by_csv = pd.read_csv(folder_out, dtype={"id": str}), pd.read_csv(csv_out, dtype={"id": str})
    test_ids = pd.read_csv(raw_dir / "test_img.csv", header=None, dtype=str)[0].tolist()
    assert by_csv["id"].tolist() == test_ids
    assert len(by_folder) == len(list((raw_dir / "images").iterdir()))
    probabilities = by_csv[[f"p_grade_{g}" for g in range(5)]].to_numpy()
    assert probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-4)  # the served model's softmax
    # The same photos read through a folder or an id CSV (in other batches) get the same answers;
    # the columns themselves are worked out by hand in tests/steps/test_predict.py.
    merged = by_csv.merge(by_folder, on="id", suffixes=("_csv", "_folder"))
    assert len(merged) == len(by_csv)
    for column in ("predicted_grade", "referable", "gradable"):  # a refused photo's referable is empty in both
        pd.testing.assert_series_equal(merged[f"{column}_csv"], merged[f"{column}_folder"], check_names=False)
    assert merged["p_referable_csv"].to_numpy() == pytest.approx(merged["p_referable_folder"].to_numpy(), abs=1e-6)


def test_predict_names_a_bad_photo_and_grades_the_others(two_seed_study, raw_dir, tmp_path, monkeypatch, caplog):
    _, client, root = two_seed_study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    monkeypatch.chdir(root)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "bad.jpeg").write_bytes(b"not a photo")
    good = sorted((raw_dir / "images").iterdir())[0]
    (tmp_path / "photos" / good.name).write_bytes(good.read_bytes())
    assert predict_cli.main(["--model_uri", f"models:/{SEEDS_MODEL}@champion", "--input", str(tmp_path / "photos"),
                             "--output", str(tmp_path / "out.csv")]) == 0
    assert any("bad.jpeg is corrupt" in record.getMessage() for record in caplog.records)  # the log names the file
    predicted = pd.read_csv(tmp_path / "out.csv", dtype={"id": str}, keep_default_na=False).set_index("id")
    assert predicted.loc["bad", "ungradable_reason"] == "unreadable photo" and predicted.loc["bad", "predicted_grade"] == -1
    assert predicted.loc[good.stem, "p_grade_0"] != "" and predicted.loc["bad", "p_grade_0"] == ""  # seen / not
