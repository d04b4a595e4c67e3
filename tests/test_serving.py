"""One answer for a photo everywhere: evaluate (the processed cache), predict (the raw photos) and the
served model (`mlflow models serve`, photos posted over HTTP) agree, to float tolerance."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.cli import evaluate as evaluate_cli
from pipeline.cli import predict as predict_cli
from pipeline.cli import train as train_cli
from pipeline.grading import PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from pipeline.steps.evaluate import TEST_PREDICTIONS
from pipeline.tracking import registry
from tests.conftest import VENV_BIN, free_port, running_server, scratch_dir, subprocess_env

pytestmark = pytest.mark.slow  # a training, a real tracking server and a real model server

MODEL_NAME = "dr-resnet-served"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def champion(mlflow_server, processed_dir, tmp_path_factory):
    """A resnet18 trained for one epoch on the tiny cache, registered with alias champion."""
    with scratch_dir(tmp_path_factory, "served") as root, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "serving")
        monkeypatch.chdir(root)
        assert train_cli.main(["--data_dir", str(processed_dir), "--image_size", "32", "--epochs", "1",
                               "--batch_size", "8", "--num_workers", "0", "--bootstrap_resamples", "0",
                               "--checkpoint_artifact", "false", "--checkpoint_dir", str(root / "checkpoints")]) == 0
        client = MlflowClient(mlflow_server)
        (run,) = client.search_runs([client.get_experiment_by_name("serving").experiment_id])
        registry.register_model(run.data.tags["retina_flow.model_uri"], MODEL_NAME, "champion")
        yield {"uri": f"models:/{MODEL_NAME}@champion", "root": root, "run": run}
    mlflow.set_tracking_uri(None)  # the in-process steps pointed MLflow at this module's server


@pytest.fixture(scope="module")
def model_server(champion, mlflow_server):
    """`mlflow models serve -m models:/...@champion --env-manager local` on a free loopback port."""
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", champion["uri"], "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(command, port, champion["root"] / "serve.log", cwd=champion["root"], health="/ping",
                        env=subprocess_env(MLFLOW_TRACKING_URI=mlflow_server), timeout=180) as url:
        yield url


def invoke(url: str, photos: list[bytes]) -> tuple[int, dict]:
    """POSTs the photos as the README tells clients to; returns the status and the JSON answer."""
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(p).decode()] for p in photos]}}
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_evaluate_predict_and_the_served_model_give_one_answer(champion, model_server, raw_dir, processed_dir,
                                                               mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "serving")
    monkeypatch.chdir(tmp_path)
    assert evaluate_cli.main(["--model_uri", champion["uri"], "--data_dir", str(processed_dir),
                              "--bootstrap_resamples", "0"]) == 0
    client = MlflowClient(mlflow_server)
    evaluate_run = client.search_runs([client.get_experiment_by_name("serving").experiment_id],
                                      filter_string="tags.`retina_flow.step` = 'evaluate'")[0]
    evaluated = pd.read_csv(client.download_artifacts(evaluate_run.info.run_id, TEST_PREDICTIONS, str(tmp_path)),
                            dtype={"id": str})
    assert list(evaluated.columns) == ["id", *PREDICTION_COLUMNS, "grade"]
    assert predict_cli.main(["--model_uri", champion["uri"], "--input", str(raw_dir / "test_img.csv"),
                             "--output", str(tmp_path / "predicted.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "predicted.csv", dtype={"id": str})
    photos = [(raw_dir / "images" / f"{image_id}.jpeg").read_bytes() for image_id in predicted["id"]]
    status, answer = invoke(model_server, photos)
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])

    assert sorted(evaluated["id"]) == sorted(predicted["id"])
    evaluated = evaluated.set_index("id").loc[predicted["id"]].reset_index()
    for name, other in (("evaluate", evaluated), ("served", served)):
        assert (other["predicted_grade"].to_numpy() == predicted["predicted_grade"].to_numpy()).all(), name
        assert (other["referable"].to_numpy() == predicted["referable"].to_numpy()).all(), name
        difference = np.abs(other[PROBABILITY_COLUMNS].to_numpy() - predicted[PROBABILITY_COLUMNS].to_numpy())
        assert difference.max() <= TOLERANCE, (name, difference.max())
    # The operating point chosen on validation travels with the model: the served flags follow it.
    threshold = champion["run"].data.metrics["referable_threshold"]
    assert threshold != 0.5 and evaluate_run.data.metrics["referable_threshold"] == threshold
    assert (served["referable"] == (served["p_referable"] >= threshold)).all()


def recoded(photo: bytes, mode: str, file_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert(mode).save(buffer, format=file_format)
    return buffer.getvalue()


def test_greyscale_and_png_photos_get_predicts_answers(model_server, champion, raw_dir, mlflow_server, monkeypatch,
                                                       tmp_path):
    originals = sorted((raw_dir / "images").iterdir())[:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    # Names as users' files come: a greyscale JPEG, PNG content behind a .jpeg name, a real PNG.
    files = {"grey.jpeg": recoded(originals[0].read_bytes(), "L", "JPEG"),
             "png-inside.jpeg": recoded(originals[1].read_bytes(), "RGB", "PNG"),
             "plain.png": recoded(originals[2].read_bytes(), "RGB", "PNG")}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    assert predict_cli.main(["--model_uri", champion["uri"], "--input", str(folder), "--output",
                             str(tmp_path / "out.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "out.csv", dtype={"id": str}).set_index("id")
    status, answer = invoke(model_server, list(files.values()))
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])
    for row, name in enumerate(files):
        expected = predicted.loc[Path(name).stem]
        assert served.loc[row, "predicted_grade"] == expected["predicted_grade"], name
        assert np.abs(served.loc[row, PROBABILITY_COLUMNS].to_numpy(float)
                      - expected[PROBABILITY_COLUMNS].to_numpy(float)).max() <= TOLERANCE, name


@pytest.mark.parametrize("bad, message", [
    (b"not a photo at all", "row 1: the photo is corrupt, truncated or not an image"),
    (None, "row 1: 'image' is not base64-encoded photo bytes"),
])
def test_a_bad_photo_is_refused_naming_its_row(model_server, raw_dir, bad, message):
    photo = sorted((raw_dir / "images").iterdir())[0].read_bytes()
    if bad is None:
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo).decode()], ["%%%"]]}}
        request = urllib.request.Request(f"{model_server}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=60)
        status, answer = raised.value.code, json.loads(raised.value.read())
    else:
        status, answer = invoke(model_server, [photo, bad])
    assert status == 400
    assert message in answer["message"]
    assert "predictions" not in answer
