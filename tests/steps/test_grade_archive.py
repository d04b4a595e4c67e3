"""grade_archive: a folder of photos graded on Spark (local[2]) into parquet, row for row as predict
grades them, the corrupt ones rows with their reason; the ONNX export preferred where there is one."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.cli import export as export_cli
from pipeline.cli import grade_archive as archive_cli
from pipeline.cli import predict as predict_cli
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_eyepacs_layout
from pipeline.grading import Grader
from pipeline.models import build_model
from pipeline.photo_grader import PREDICTION_COLUMNS, PROBABILITY_COLUMNS, GraderSpec
from pipeline.tracking import registry, tags

pytestmark = pytest.mark.slow  # Spark: a JVM and Python workers

MODEL = "dr-archive"
CORRUPT = {"broken": b"\xff\xd8\xff\xe0 not a jpeg", "empty": b"", "notes": b"a text file, not a photo"}


@pytest.fixture(autouse=True)
def quick_jvm(monkeypatch):
    """Spark's JVM (started by the first test that needs it) compiles with its quick compiler only
    and collects garbage on one thread: these jobs last seconds, and its optimizing compiler's work
    never paid off (~30% less CPU for the archive test, measured here)."""
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


@pytest.fixture
def archive(tmp_path):
    """50 photos in one folder: 47 synthetic (one with an upper-case extension) and 3 corrupt."""
    raw = tmp_path / "raw"
    generate_eyepacs_layout(raw, train_patients=20, test_patients=4, size=(128, 96), grade_shares=UNIFORM_GRADE_SHARES,
                            seed=3)
    folder = tmp_path / "archive"
    folder.mkdir()
    for path in sorted((raw / "images").iterdir())[:47]:
        shutil.copy(path, folder / path.name)
    first = sorted(folder.iterdir())[0]
    first.rename(first.with_suffix(".JPG"))
    for name, data in CORRUPT.items():
        (folder / f"{name}.{'png' if name == 'notes' else 'jpeg'}").write_bytes(data)
    (folder / "README.txt").write_text("not a photo file: never read")
    return folder


@pytest.fixture
def champion(processed_dir, raw_dir, sqlite_tracking):
    torch.manual_seed(5)
    grader = Grader(build_model("resnet18", pretrained=False), GraderSpec("resnet18", 32, 64, 0.4))
    photo = next((raw_dir / "images").iterdir()).read_bytes()
    with mlflow.start_run():
        uri, _ = registry.log_grader(grader, [photo, photo])
    registry.register_model(uri, MODEL, "champion")
    return f"models:/{MODEL}@champion"


def test_an_archive_is_graded_on_spark_row_for_row_as_predict_grades_it(archive, champion, processed_dir, tmp_path,
                                                                        capsys):
    assert export_cli.main(["--model_uri", champion, "--data_dir", str(processed_dir)]) == 0  # fp32 ONNX
    output = tmp_path / "graded.parquet"
    assert archive_cli.main(["--model_uri", champion, "--input", str(archive), "--output", str(output),
                             "--spark_master", "local[2]"]) == 0
    assert "graded 50 photos" in capsys.readouterr().out
    graded = pd.read_parquet(output).set_index("id").sort_index()
    assert list(graded.columns) == ["path", *PREDICTION_COLUMNS, "model_version"] and len(graded) == 50
    assert set(graded["model_version"]) == {f"{MODEL} v2"}  # the ONNX export, not the torch grader (v1)
    for name in CORRUPT:
        assert graded.loc[name, "ungradable_reason"] == "unreadable photo" and graded.loc[name, "predicted_grade"] == -1
        assert pd.isna(graded.loc[name, "referable"]) and pd.isna(graded.loc[name, "p_grade_0"])  # no call, unseen

    predicted = tmp_path / "predicted.csv"
    assert predict_cli.main(["--model_uri", champion, "--input", str(archive), "--output", str(predicted)]) == 0
    expected = pd.read_csv(predicted, dtype={"id": str}, keep_default_na=False).set_index("id").sort_index()
    assert list(graded.index) == list(expected.index)
    for column in ("predicted_grade", "gradable"):
        assert graded[column].tolist() == expected[column].tolist(), column
    assert graded["ungradable_reason"].fillna("").tolist() == expected["ungradable_reason"].tolist()
    assert graded["referable"].map(lambda v: "" if pd.isna(v) else str(bool(v))).tolist() == \
        expected["referable"].astype(str).tolist()
    seen = graded["gradable"].to_numpy()
    difference = graded.loc[seen, PROBABILITY_COLUMNS].to_numpy(float) - expected.loc[seen, PROBABILITY_COLUMNS].to_numpy(float)
    assert np.abs(difference).max() <= 1e-4

    client = MlflowClient()
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("tests").experiment_id])
              if r.data.tags.get(tags.STEP) == "grade_archive"]
    assert run.data.metrics["photos"] == 50 and run.data.metrics["ungradable_fraction"] == pytest.approx(
        (~graded["gradable"]).mean())
    assert run.data.params["graded_with"] == f"models:/{MODEL}@champion-onnx"


def test_an_existing_output_is_not_overwritten_and_an_empty_input_is_named(archive, champion, tmp_path, capsys):
    output = tmp_path / "graded.parquet"
    output.mkdir()
    assert archive_cli.main(["--model_uri", champion, "--input", str(archive), "--output", str(output)]) == 2
    assert f"output {output} exists" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    assert archive_cli.main(["--model_uri", champion, "--input", str(empty), "--output", str(tmp_path / "out"),
                             "--spark_master", "local[1]"]) == 2
    assert f"input {empty} holds no photos" in capsys.readouterr().err
