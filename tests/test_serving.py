"""One answer for a photo everywhere: evaluate (the processed cache), predict (the raw photos) and the
served model (`mlflow models serve`, photos posted over HTTP) agree, to float tolerance; a DICOM
photo gets the answer of its pixels, and nothing of its header reaches any output."""

from __future__ import annotations

import base64
import io
import json
import shutil
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
from pipeline.data.prepare import cache_image
from pipeline.data.preprocess import preprocess
from pipeline.catalog import NOT_A_FUNDUS, OVEREXPOSED, TOO_DARK
from pipeline.photo_grader import PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from pipeline.steps.evaluate import TEST_PREDICTIONS
from pipeline.tracking import registry
from tests.conftest import VENV_BIN, free_port, mlflow_run, running_server, scratch_dir, subprocess_env
from tests.dicom_files import PATIENT, VARIANTS, dicom_bytes
from tests.real_photos import NON_FUNDUS, non_fundus, png_bytes

pytestmark = pytest.mark.slow  # a training, a real tracking server and a real model server

MODEL_NAME = "dr-resnet-served"
ENHANCED = "ben_graham"
TOLERANCE = 1e-4


# What the grader does beyond the labs' argmax, every part of it on the served path too: flip TTA,
# cut points fitted for QWK, and Ben Graham's preparation of each photo.
SERVED_RECIPE = ("--tta", "flips", "--decision", "kappa_thresholds", "--enhance", ENHANCED)


@pytest.fixture(scope="module")
def champion(mlflow_server, raw_dir, tmp_path_factory):
    """A resnet18 with the recipe above trained for two epochs on a tiny Ben Graham cache,
    registered with alias champion; its cut points are pinned to exist (checked)."""
    with scratch_dir(tmp_path_factory, "served") as root, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "serving")
        monkeypatch.chdir(root)
        preprocess(raw_dir, root / "processed", image_size=64, val_fraction=0.25, seed=0, num_workers=1,
                   enhance=ENHANCED)
        assert train_cli.main(["--data_dir", str(root / "processed"), "--image_size", "32", "--epochs", "2",
                               "--batch_size", "8", "--num_workers", "0", "--bootstrap_resamples", "0",
                               "--checkpoint_artifact", "false", "--checkpoint_dir", str(root / "checkpoints"),
                               *SERVED_RECIPE]) == 0
        client = MlflowClient(mlflow_server)
        (run,) = client.search_runs([client.get_experiment_by_name("serving").experiment_id])
        registry.register_model(run.data.tags["retina_flow.model_uri"], MODEL_NAME, "champion")
        spec = registry.load_model(run.data.tags["retina_flow.model_uri"]).grader.spec
        assert (spec.tta, spec.enhance) == ("flips", ENHANCED) and spec.cut_points is not None
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


def invoke(url: str, photos: list[bytes], params: dict | None = None) -> tuple[int, dict]:
    """POSTs the photos as the README tells clients to; returns the status and the JSON answer."""
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(p).decode()] for p in photos]}}
    if params is not None:
        body["params"] = params
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def with_ungradable(raw_dir, tmp_path_factory):
    """The tiny raw layout with two test photos spoilt (one darkened to 15%, one exposed three times
    over) and its processed cache: test photos the champion must refuse, wherever it meets them."""
    with scratch_dir(tmp_path_factory, "ungradable") as root:
        raw = Path(shutil.copytree(raw_dir, root / "raw"))
        test_ids = pd.read_csv(raw / "test_img.csv", header=None, dtype=str)[0].tolist()
        for image_id, gain in zip(test_ids[:2], (0.15, 3.0)):
            path = raw / "images" / f"{image_id}.jpeg"
            pixels = np.clip(np.asarray(Image.open(path), float) * gain, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=95)
        preprocess(raw, root / "processed", image_size=64, val_fraction=0.25, seed=0, num_workers=1,
                   enhance=ENHANCED)
        yield {"raw": raw, "processed": root / "processed", "spoilt": {test_ids[0]: TOO_DARK, test_ids[1]: OVEREXPOSED}}


def test_evaluate_predict_and_the_served_model_give_one_answer(champion, model_server, with_ungradable,
                                                               mlflow_server, monkeypatch, tmp_path):
    """The same photo gets the same gradable call, reason, grade, referable call and (where graded)
    probabilities from evaluate's CSV (the processed cache), predict (the raw photo) and the
    served model (its bytes over HTTP)."""
    raw = with_ungradable["raw"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "serving")
    monkeypatch.chdir(tmp_path)
    assert evaluate_cli.main(["--model_uri", champion["uri"], "--data_dir", str(with_ungradable["processed"]),
                              "--bootstrap_resamples", "0"]) == 0
    client = MlflowClient(mlflow_server)
    evaluate_run = client.search_runs([client.get_experiment_by_name("serving").experiment_id],
                                      filter_string="tags.`retina_flow.step` = 'evaluate'")[0]
    evaluated = pd.read_csv(client.download_artifacts(evaluate_run.info.run_id, TEST_PREDICTIONS, str(tmp_path)),
                            dtype={"id": str, "ungradable_reason": str}, keep_default_na=False)
    assert list(evaluated.columns) == ["id", *PREDICTION_COLUMNS, "grade"]
    assert predict_cli.main(["--model_uri", champion["uri"], "--input", str(raw / "test_img.csv"),
                             "--output", str(tmp_path / "predicted.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "predicted.csv", dtype={"id": str, "ungradable_reason": str},
                            keep_default_na=False)
    photos = [(raw / "images" / f"{image_id}.jpeg").read_bytes() for image_id in predicted["id"]]
    status, answer = invoke(model_server, photos)
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])

    # The spoilt photos are refused, for the right reason, by all three.
    reasons = dict(zip(predicted["id"], predicted["ungradable_reason"]))
    assert {image_id: reasons[image_id] for image_id in with_ungradable["spoilt"]} == with_ungradable["spoilt"]
    assert evaluate_run.data.metrics["test_ungradable_fraction"] == pytest.approx(
        (~predicted["gradable"].astype(bool)).mean())
    assert sorted(evaluated["id"]) == sorted(predicted["id"])
    evaluated = evaluated.set_index("id").loc[predicted["id"]].reset_index()
    gradable = predicted["gradable"].astype(bool).to_numpy()
    calls = referable_calls(predicted["referable"])
    for name, other in (("evaluate", evaluated), ("served", served)):
        assert (flags(other["gradable"]) == gradable).all(), name
        assert (other["ungradable_reason"].fillna("").to_numpy() == predicted["ungradable_reason"].to_numpy()).all(), name
        assert (other["predicted_grade"].to_numpy() == predicted["predicted_grade"].to_numpy()).all(), name
        assert (referable_calls(other["referable"]) == calls).all(), name  # None (no call) where refused
        assert (calls[~gradable] == None).all(), name  # noqa: E711 - element-wise
        difference = np.abs(other[PROBABILITY_COLUMNS].to_numpy(float) - predicted[PROBABILITY_COLUMNS].to_numpy(float))
        assert np.nanmax(difference) <= TOLERANCE, (name, np.nanmax(difference))
    # The operating point chosen on validation travels with the model: the served flags follow it.
    threshold = champion["run"].data.metrics["referable_threshold"]
    assert threshold != 0.5 and evaluate_run.data.metrics["referable_threshold"] == threshold
    graded = served[gradable]
    assert (referable_calls(graded["referable"]) == (graded["p_referable"] >= threshold).to_numpy()).all()


def flags(values: pd.Series) -> np.ndarray:
    """True/False from a CSV's text or JSON's booleans."""
    return np.array([value is True or str(value) == "True" for value in values])


def referable_calls(values: pd.Series) -> np.ndarray:
    """True, False or None (no call) per row, from a CSV's text (empty: no call) or JSON (null)."""
    words = {"True": True, "False": False, "": None}
    return np.array([words[value] if isinstance(value, str) else (None if value is None else bool(value))
                     for value in values], dtype=object)


def test_pictures_of_other_things_are_refused_by_the_served_model_and_predict(
        champion, model_server, raw_dir, mlflow_server, monkeypatch, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in NON_FUNDUS:
        (folder / f"{name}.png").write_bytes(png_bytes(non_fundus(name)))
    clean = sorted((raw_dir / "images").iterdir())[0]
    (folder / clean.name).write_bytes(clean.read_bytes())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    assert predict_cli.main(["--model_uri", champion["uri"], "--input", str(folder), "--output",
                             str(tmp_path / "out.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "out.csv", dtype={"id": str, "ungradable_reason": str},
                            keep_default_na=False).set_index("id")
    status, answer = invoke(model_server, [png_bytes(non_fundus(name)) for name in NON_FUNDUS] + [clean.read_bytes()])
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])
    assert served["ungradable_reason"].tolist()[:-1] == [NOT_A_FUNDUS] * len(NON_FUNDUS)
    assert predicted.loc[list(NON_FUNDUS), "ungradable_reason"].tolist() == [NOT_A_FUNDUS] * len(NON_FUNDUS)
    assert served["predicted_grade"].tolist()[:-1] == [-1] * len(NON_FUNDUS)
    assert served["gradable"].tolist()[-1] == bool(predicted.loc[clean.stem, "gradable"])


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


def test_a_request_that_is_not_base64_is_refused_naming_its_row(model_server, raw_dir):
    photo = sorted((raw_dir / "images").iterdir())[0].read_bytes()
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo).decode()], ["%%%"]]}}
    request = urllib.request.Request(f"{model_server}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    answer = json.loads(raised.value.read())
    assert raised.value.code == 400 and "row 1: 'image' is not base64-encoded photo bytes" in answer["message"]
    assert "predictions" not in answer


def test_an_unreadable_photo_is_a_refused_row_not_a_failed_request(model_server, raw_dir):
    photo = sorted((raw_dir / "images").iterdir())[0].read_bytes()
    status, answer = invoke(model_server, [photo, b"not a photo at all"])
    assert status == 200, answer
    rows = answer["predictions"]
    assert rows[1]["gradable"] is False and rows[1]["ungradable_reason"] == "unreadable photo"
    assert rows[1]["predicted_grade"] == -1 and rows[1]["referable"] is None


def dicom_folder(raw_dir: Path, folder: Path) -> dict[str, bytes]:
    """Three test photos as PNG, and the same pixels as each kind of DICOM a camera exports."""
    folder.mkdir()
    files = {}
    for original, (photometric, compressed) in zip(sorted((raw_dir / "images").iterdir())[:3], VARIANTS):
        pixels = np.asarray(Image.open(original).convert("RGB"))
        files[f"{original.stem}.png"] = recoded(original.read_bytes(), "RGB", "PNG")
        files[f"{original.stem}-{photometric.lower()}.dcm"] = dicom_bytes(pixels, photometric, compressed)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def assert_no_patient_data(*texts: str) -> None:
    for value in PATIENT.values():
        assert not any(value in text for text in texts), f"{value!r} from a DICOM header reached an output"


def test_a_dicom_photo_gets_the_grade_of_its_pixels_from_predict_and_the_served_model(
        model_server, champion, raw_dir, mlflow_server, monkeypatch, tmp_path):
    files = dicom_folder(raw_dir, tmp_path / "photos")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    assert predict_cli.main(["--model_uri", champion["uri"], "--input", str(tmp_path / "photos"), "--output",
                             str(tmp_path / "out.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "out.csv", dtype={"id": str}).set_index("id")
    status, answer = invoke(model_server, list(files.values()))
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"], index=[Path(name).stem for name in files])
    for name in files:
        if not name.endswith(".dcm"):
            continue
        dicom_id = Path(name).stem
        png_id = dicom_id.rsplit("-", 1)[0]
        lossless = not dicom_id.endswith("ybr_full_422")
        for answers in (predicted, served):
            assert answers.loc[dicom_id, "predicted_grade"] == answers.loc[png_id, "predicted_grade"], dicom_id
            difference = np.abs(answers.loc[dicom_id, PROBABILITY_COLUMNS].to_numpy(float)
                                - answers.loc[png_id, PROBABILITY_COLUMNS].to_numpy(float)).max()
            assert difference <= (TOLERANCE if lossless else 0.05), (dicom_id, difference)
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("serving").experiment_id],
                                filter_string=f"params.input = '{tmp_path / 'photos'}'")
    logged = client.download_artifacts(run.info.run_id, "", str(tmp_path / "logged"))
    assert_no_patient_data((tmp_path / "out.csv").read_text(), (champion["root"] / "serve.log").read_text(),
                           json.dumps(answer), json.dumps(run.to_dictionary()),
                           *(path.read_text() for path in Path(logged).rglob("*") if path.is_file()))


def test_mlflow_run_preprocess_reads_dicom_photos_and_records_their_field(raw_dir, mlflow_server, tmp_path):
    raw = Path(shutil.copytree(raw_dir, tmp_path / "raw"))
    images = raw / "images"
    train_ids = pd.read_csv(raw / "train_img.csv", header=None, dtype=str)[0].tolist()
    converted = {}
    for image_id, (photometric, compressed) in zip(train_ids[:3], VARIANTS):
        photo = images / f"{image_id}.jpeg"
        pixels = np.asarray(Image.open(photo).convert("RGB"))
        (images / f"{image_id}.dcm").write_bytes(dicom_bytes(pixels, photometric, compressed))
        photo.unlink()
        converted[image_id] = pixels
    # The same pixels as PNG, prepared the same way, are the reference for the DICOMs' cache images.
    reference = {image_id: cache_image(png_bytes(pixels), 32) for image_id, pixels in converted.items()}
    result = mlflow_run(mlflow_server, ["-e", "preprocess", "--experiment-name", "dicom-preprocess",
                                        "-P", f"raw_dir={raw}", "-P", f"data_dir={tmp_path / 'processed'}",
                                        "-P", "image_size=32", "-P", "num_workers=1"])
    dataset = tmp_path / "processed" / "32px"
    manifest = pd.read_csv(dataset / "manifest.csv", dtype={"id": str, "clipped": str}, keep_default_na=False)
    rows = manifest.set_index("id").loc[list(converted)]
    assert rows["source"].str.endswith(".dcm").all()
    for image_id, row in rows.iterrows():
        field = reference[image_id].field
        assert abs(row["fundus_radius"] - field.radius) < 0.01 * field.radius
        assert np.hypot(row["fundus_x"] - field.x, row["fundus_y"] - field.y) < 0.01 * field.radius
        cached = np.asarray(Image.open(dataset / row["file"]), float)
        expected = np.asarray(Image.open(io.BytesIO(reference[image_id].jpeg)), float)
        # RGB holds the very pixels; YBR_FULL rounds each colour conversion; JPEG q95 loses a little.
        tolerance = {"RGB": 1e-9, "YBR_FULL": 2}.get(VARIANTS[list(converted).index(image_id)][0], 4)
        assert np.abs(cached - expected).mean() < tolerance, image_id
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("dicom-preprocess").experiment_id])
    assert run.info.status == "FINISHED"
    logged = client.download_artifacts(run.info.run_id, "", str(tmp_path / "logged"))
    assert_no_patient_data(result.stdout, result.stderr, (dataset / "manifest.csv").read_text(),
                           (dataset / "dataset.json").read_text(), json.dumps(run.to_dictionary()),
                           *(path.read_text() for path in Path(logged).rglob("*") if path.is_file()))


def test_explain_over_http_returns_a_heat_map_per_graded_photo(model_server, raw_dir):
    photos = [path.read_bytes() for path in sorted((raw_dir / "images").iterdir())[:2]] + [b"not a photo"]
    status, answer = invoke(model_server, photos, params={"explain": True})
    assert status == 200
    rows = answer["predictions"]
    overlays = [Image.open(io.BytesIO(base64.b64decode(row["heatmap_png"]))) for row in rows[:2]]
    assert [overlay.format for overlay in overlays] == ["PNG", "PNG"] and overlays[0].size == (32, 32)
    assert rows[2]["heatmap_png"] is None and rows[2]["ungradable_reason"] == "unreadable photo"
    status, plain = invoke(model_server, photos)
    assert status == 200 and all("heatmap_png" not in row for row in plain["predictions"])
