"""Entry points in-process against the real tracking server: repeats over seeds, evaluate, predict."""

import tempfile

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import evaluate as evaluate_cli
from pipeline.cli import main as main_cli
from pipeline.cli import predict as predict_cli
from pipeline.tracking import tags
from tests.conftest import PROJECT_ROOT, scratch_dir

pytestmark = pytest.mark.slow  # a whole study against a real server

SEEDS_MODEL = "dr-resnet-seeds"


@pytest.fixture(scope="module")
def two_seed_study(raw_dir, mlflow_server, tmp_path_factory):
    """`main` with seeds=2 over one configuration, tracked on the real server."""
    uri = mlflow_server
    with scratch_dir(tmp_path_factory, "study") as root, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study-seeds")
        monkeypatch.chdir(root)
        code = main_cli.main(["--config", str(PROJECT_ROOT / "experiments" / "tiny.yaml"), "--raw_dir", str(raw_dir),
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
    for column in ("predicted_grade", "referable"):
        assert (merged[f"{column}_csv"] == merged[f"{column}_folder"]).all()
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
