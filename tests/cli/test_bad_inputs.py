"""Each bad input exits non-zero with a message naming the file, row or value, and a FAILED run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import evaluate as evaluate_cli
from pipeline.cli import main as main_cli
from pipeline.cli import predict as predict_cli
from pipeline.cli import preprocess as preprocess_cli
from pipeline.cli import train as train_cli
from pipeline.grading import Grader
from pipeline.photo_grader import GraderSpec
from pipeline.models import build_model
from pipeline.tracking import registry, tags
from tests.conftest import PROJECT_ROOT, subprocess_env, tracking_store


def rewrite_column(path, change):
    values = pd.read_csv(path, header=None, dtype=str)[0].tolist()
    change(values)
    pd.Series(values).to_csv(path, header=False, index=False)


def set_row(index, value):
    def change(values):
        values[index] = value
    return change


def only_run(experiment="tests"):
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    assert len(runs) == 1
    return runs[0]


def assert_failed_with(capsys, code, message):
    assert code == 2
    assert message in capsys.readouterr().err
    run = only_run()
    assert run.info.status == "FAILED"
    assert message in run.data.tags[tags.ERROR]
    return run


def damage_image(raw, name, data):
    (raw / "images" / name).write_bytes(data)


BAD_RAW_DATA = {
    "missing CSV": (lambda raw: (raw / "train_label.csv").unlink(), "missing CSV file: {raw}/train_label.csv"),
    "CSVs of different lengths": (lambda raw: rewrite_column(raw / "test_label.csv", lambda v: v.pop()),
                                  "test_img.csv has 10 image ids but {raw}/test_label.csv has 9 grades"),
    "grade outside 0-4": (lambda raw: rewrite_column(raw / "train_label.csv", set_row(4, "5")),
                          "train_label.csv line 5: grade 5 is outside 0-4"),
    "grade not an integer": (lambda raw: rewrite_column(raw / "train_label.csv", set_row(0, "mild")),
                             "train_label.csv line 1: grade 'mild' is not an integer 0-4"),
    "image file missing": (lambda raw: (raw / "images" / "missing_me.jpeg").unlink(missing_ok=True)
                           or rewrite_column(raw / "test_img.csv", set_row(6, "missing_me")),
                           "test_img.csv line 7: image id 'missing_me' has no file {raw}/images/missing_me.jpeg"),
    "corrupt image": (lambda raw: damage_image(raw, "broken.jpeg", b"\xff\xd8\xff\xe0 not a jpeg")
                      or rewrite_column(raw / "train_img.csv", set_row(2, "broken")),
                      "image {raw}/images/broken.jpeg is corrupt, truncated or not an image"),
    "truncated image": (lambda raw: damage_image(raw, "cut.jpeg", sorted((raw / "images").iterdir())[0].read_bytes()[:300])
                        or rewrite_column(raw / "train_img.csv", set_row(2, "cut")),
                        "image {raw}/images/cut.jpeg is corrupt, truncated or not an image"),
    "id escaping the image folder": (lambda raw: rewrite_column(raw / "train_img.csv", set_row(3, "../x")),
                                     "train_img.csv line 4: image id '../x' is not a plain file name"),
}


@pytest.mark.parametrize("case", list(BAD_RAW_DATA))
def test_preprocess_rejects_bad_raw_data(case, raw_copy, tmp_path, sqlite_tracking, capsys):
    damage, message = BAD_RAW_DATA[case]
    damage(raw_copy)
    code = preprocess_cli.main(["--raw_dir", str(raw_copy), "--data_dir", str(tmp_path / "out"), "--image_size", "32",
                                "--num_workers", "1"])
    run = assert_failed_with(capsys, code, message.format(raw=raw_copy))
    assert run.data.tags[tags.STEP] == "preprocess"
    out = tmp_path / "out"
    leftovers = list(out.iterdir()) if out.exists() else []
    assert leftovers == []  # no dataset and no partial folder for a later step to accept


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet34"], "model='resnet34' is not supported; choose one of resnet18, resnet50"),
    (["--model", "resnet50", "--image_size", "16"], "image_size=16 is too small for resnet50"),
    (["--image_size", "128"], "image_size=128 is larger than every processed cache"),
    (["--epochs", "two"], "epochs='two' must be an integer"),
    (["--device", "cuda:0", "--image_size", "32"], "device='cuda:0' but CUDA is not available"),
    (["--momentum", "-0.1"], "momentum=-0.1 must be a finite number in [0, 1)"),
    (["--momentum", "1"], "momentum=1.0 must be a finite number in [0, 1)"),
    (["--weight_decay", "-0.0005"], "weight_decay=-0.0005 must be a finite number in [0, inf)"),
    (["--weight_decay", "nan"], "weight_decay=nan must be a finite number in [0, inf)"),
    (["--rotation_degrees", "-5"], "rotation_degrees=-5.0 must be a finite number in [0, 180]"),
    (["--rotation_degrees", "nan"], "rotation_degrees=nan must be a finite number in [0, 180]"),
    (["--seed", "-1"], "seed=-1 must be an integer in [0, 4294967295]"),
])
def test_train_rejects_bad_options(args, message, processed_dir, sqlite_tracking, capsys):
    code = train_cli.main(["--data_dir", str(processed_dir), "--epochs", "1", "--num_workers", "0",
                           "--bootstrap_resamples", "0", "--checkpoint_artifact", "false", *args])
    assert_failed_with(capsys, code, message)


@pytest.mark.parametrize("name, file", [("resnet18", "resnet18-f37072fd.pth"), ("resnet50", "resnet50-0676ba61.pth")])
def test_train_pretrained_without_weights_names_the_file(name, file, processed_dir, sqlite_tracking, empty_torch_home, capsys):
    code = train_cli.main(["--data_dir", str(processed_dir), "--model", name, "--pretrained", "true",
                           "--image_size", "32", "--epochs", "1", "--num_workers", "0"])
    assert_failed_with(capsys, code, f"Put the file {file} (from https://download.pytorch.org/models/{file}) "
                                     f"in the folder {empty_torch_home}/hub/checkpoints")


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_bad_photo_met_in_a_loader_worker_is_the_original_error(processed_dir, tmp_path, sqlite_tracking, capsys):
    """train's default two workers: the error names the photo, not the worker and its traceback."""
    data = Path(shutil.copytree(processed_dir / "64px", tmp_path / "data"))
    manifest = pd.read_csv(data / "manifest.csv", dtype=str)
    victim = data / manifest[manifest["split"] == "train"]["file"].iloc[0]
    victim.write_bytes(b"not a jpeg")
    code = train_cli.main(["--data_dir", str(data), "--image_size", "32", "--epochs", "1", "--num_workers", "2",
                           "--bootstrap_resamples", "0", "--checkpoint_artifact", "false"])
    run = assert_failed_with(capsys, code, f"image {victim} is corrupt, truncated or not an image")
    assert "DataLoader worker" not in run.data.tags[tags.ERROR] and "Traceback" not in run.data.tags[tags.ERROR]


def test_preprocess_rejects_a_negative_seed(raw_dir, tmp_path, sqlite_tracking, capsys):
    code = preprocess_cli.main(["--raw_dir", str(raw_dir), "--data_dir", str(tmp_path / "out"), "--seed", "-3"])
    assert_failed_with(capsys, code, "seed=-3 must be an integer in [0, 4294967295]")


@pytest.fixture
def a_grader(monkeypatch):
    """Any model URI loads a scratch resnet18 grader (the tests below fail before or around grading)."""
    loaded = registry.LoadedModel(Grader(build_model("resnet18", pretrained=False), GraderSpec("resnet18", 32, 64)),
                                  "models:/m-1", None, None)
    monkeypatch.setattr(registry, "load_model", lambda uri: loaded)


def test_predict_rejects_an_id_csv_with_a_header_alone(raw_dir, tmp_path, sqlite_tracking, a_grader, capsys):
    ids = tmp_path / "ids.csv"
    ids.write_text("image\n")
    shutil.copytree(raw_dir / "images", tmp_path / "images")
    code = predict_cli.main(["--model_uri", "models:/m-1", "--input", str(ids), "--output", str(tmp_path / "p.csv")])
    assert_failed_with(capsys, code, f"{ids} lists no image ids (a header alone)")


@pytest.mark.parametrize("output, message", [
    ("a_folder", "output='{out}' is a folder; name a CSV file"),
    ("a_file/p.csv", "output='{out}' cannot be written: {tmp}/a_file is not a writable folder"),
])
def test_predict_rejects_an_output_it_cannot_write(output, message, raw_dir, tmp_path, sqlite_tracking, a_grader,
                                                   capsys):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / output
    code = predict_cli.main(["--model_uri", "models:/m-1", "--input", str(raw_dir / "images"), "--output", str(out)])
    assert_failed_with(capsys, code, message.format(out=out, tmp=tmp_path))


def test_main_fails_fast_before_training_when_weights_are_missing(raw_dir, tmp_path, sqlite_tracking, empty_torch_home, capsys):
    code = main_cli.main(["--config", str(PROJECT_ROOT / "experiments" / "tiny.yaml"), "--raw_dir", str(raw_dir),
                          "--data_dir", str(tmp_path / "data")])
    assert code == 2
    assert "skip_unavailable_weights=true" in capsys.readouterr().err
    run = only_run()
    assert run.info.status == "FAILED" and "resnet18-f37072fd.pth" in run.data.tags[tags.ERROR]
    assert not (tmp_path / "data").exists()  # failed before preprocessing, let alone training


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_real_process_exits_non_zero_and_marks_the_run_failed(processed_dir, tmp_path):
    uri = tracking_store(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.train", "--data_dir", str(processed_dir), "--model", "resnet101"],
        cwd=tmp_path, env=subprocess_env(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="tests"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "error: model='resnet101' is not supported; choose one of resnet18, resnet50" in result.stderr
    assert "Traceback" not in result.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_on_bad_image_skip_records_what_it_left_out(raw_copy, tmp_path, sqlite_tracking, capsys):
    victim = sorted((raw_copy / "images").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    code = preprocess_cli.main(["--raw_dir", str(raw_copy), "--data_dir", str(tmp_path / "out"), "--image_size", "32",
                                "--num_workers", "1", "--on-bad-image", "skip", "--max_bad_fraction", "0.1"])
    assert code == 0
    run = only_run()
    assert run.info.status == "FINISHED" and run.data.metrics["skipped_images"] == 1
    assert run.data.params["on_bad_image"] == "skip"
    skipped = MlflowClient().download_artifacts(run.info.run_id, "skipped_images.csv", str(tmp_path))
    assert pd.read_csv(skipped, dtype=str)["id"].tolist() == [victim.stem]


@pytest.mark.parametrize("folder, message", [
    ("64px", "64px holds enhance=none images, but enhance=ben_graham ones are needed; run preprocess with "
             "enhance=ben_graham"),
    (".", "holds no enhance=ben_graham processed dataset (no manifest.csv); run the preprocess entry point first "
          "with enhance=ben_graham"),
])
def test_evaluate_refuses_a_cache_of_another_enhancement(folder, message, processed_dir, sqlite_tracking,
                                                         monkeypatch, capsys):
    """A grader that learnt on Ben Graham's pixels is not measured on plain ones."""
    spec = GraderSpec("resnet18", 32, 64, enhance="ben_graham")
    loaded = registry.LoadedModel(Grader(build_model("resnet18", pretrained=False), spec), "models:/m-1", None, None)
    monkeypatch.setattr(registry, "load_model", lambda uri: loaded)
    code = evaluate_cli.main(["--model_uri", "models:/m-1", "--data_dir", str(processed_dir / folder)])
    assert_failed_with(capsys, code, message)
