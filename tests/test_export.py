"""The exported ONNX grader answers as the torch grader does: the same probabilities (fp32, to
1e-4), features and calls; int8 close; its served model loads and grades with torch unimportable."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.cli import evaluate as evaluate_cli
from pipeline.cli import export as export_cli
from pipeline.data.dataset import ProcessedDataset
from pipeline.errors import DataError
from pipeline.export import export_onnx, quantize_int8
from pipeline.gradability import GradabilityThresholds, NoveltyModel
from pipeline.grading import Grader
from pipeline.models import build_model, head_of, pooled_features
from pipeline.onnx_grader import OnnxGrader
from pipeline.photo_grader import PROBABILITY_COLUMNS, GraderSpec, encode_photos, grade_request
from pipeline.steps.export import agreement, split_pixels
from pipeline.tracking import registry, tags
from tests.conftest import PROJECT_ROOT, free_port, running_server, subprocess_env

IMAGE, CACHE = 32, 64
CONFIGURATIONS = {  # what the graph must carry: TTA, the ordinal head, the temperature
    "resnet18": dict(tta="flips", head="ordinal", temperature=1.7),
    "resnet50": dict(tta="none", head="classification", temperature=0.8),
}

pytestmark = pytest.mark.slow  # every test exports (or serves) a network: seconds each


def tiny_grader(model: str, processed_dir: Path) -> Grader:
    """An untrained grader with every part an export carries, its novelty model fitted on the
    training photos' features (so some photos are unlike them) and quality thresholds."""
    torch.manual_seed(7)
    options = CONFIGURATIONS[model]
    spec = GraderSpec(model, IMAGE, CACHE, 0.4, tta=options["tta"], head=options["head"],
                      temperature=options["temperature"],
                      gradability=GradabilityThresholds(20.0, 30.0, 0.5, 2.0, None))
    grader = Grader(build_model(model, pretrained=False, head=options["head"]), spec)
    processed = ProcessedDataset(processed_dir, CACHE)
    _, features = grader.network_outputs(split_pixels(processed, "train", IMAGE, 40)[0])
    novelty = NoveltyModel.fit(features, np.arange(len(features)) % 2)
    # A limit that half the test photos pass: the exported features decide both ways.
    _, test_features = grader.network_outputs(split_pixels(processed, "test", IMAGE, 100)[0])
    limit = float(np.median(novelty.distance(test_features)))
    spec = GraderSpec(**{**spec.__dict__, "gradability": GradabilityThresholds(20.0, 30.0, 0.5, 2.0, limit)})
    return Grader(grader.network, spec, novelty)


@pytest.fixture(scope="module")
def exported18(processed_dir, tmp_path_factory) -> tuple[Grader, Path]:
    """The resnet18 grader and its fp32 export, made once for the module's tests."""
    grader = tiny_grader("resnet18", processed_dir)
    return grader, export_onnx(grader, tmp_path_factory.mktemp("export") / "grader.onnx")


def exported(model: str, processed_dir: Path, exported18: tuple[Grader, Path], folder: Path) -> tuple[Grader, Path]:
    if model == "resnet18":
        return exported18
    grader = tiny_grader(model, processed_dir)
    return grader, export_onnx(grader, folder / "grader.onnx")


def test_pooled_features_are_what_the_head_takes():
    network = build_model("resnet18", pretrained=False).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(head_of(network)(pooled_features(network, images)), network(images), atol=1e-6)


@pytest.mark.parametrize("model", list(CONFIGURATIONS))
def test_the_fp32_export_gives_the_torch_graders_answers(model, processed_dir, exported18, tmp_path):
    grader, network = exported(model, processed_dir, exported18, tmp_path)
    onnx_grader = OnnxGrader(network, grader.spec, grader.novelty)
    pixels, measures = split_pixels(ProcessedDataset(processed_dir, CACHE), "test", IMAGE, 100)
    (p_torch, f_torch), (p_onnx, f_onnx) = grader.network_outputs(pixels), onnx_grader.network_outputs(pixels)
    assert np.abs(p_torch - p_onnx).max() <= 1e-4
    assert np.allclose(f_torch, f_onnx, rtol=1e-4, atol=1e-4)
    figures = agreement(grader, onnx_grader, pixels, measures)
    assert figures["grade_agreement"] == figures["referable_agreement"] == figures["gradable_agreement"] == 1.0
    judged = grader.judge_pixels(pixels, measures, [""] * len(pixels))
    assert 0 < judged.gradable.sum() < len(pixels)  # the gradable calls were put to the test


def test_int8_is_a_quarter_of_the_size_and_close(processed_dir, exported18, tmp_path):
    grader, fp32 = exported18
    processed = ProcessedDataset(processed_dir, CACHE)
    calibration, _ = split_pixels(processed, "train", IMAGE, 32)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calibration)
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size
    pixels, _ = split_pixels(processed, "test", IMAGE, 100)
    p_torch, _ = grader.network_outputs(pixels)
    p_int8, _ = OnnxGrader(int8, grader.spec, grader.novelty).network_outputs(pixels)
    assert 0 < np.abs(p_torch - p_int8).max() < 0.05  # quantized, and still close


# A process in which torch and torchvision cannot be imported loads the logged ONNX grader and
# grades photos with it.
TORCH_FREE_SCRIPT = """
import importlib.abc, json, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Blocked())
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
answer = model.predict(pd.read_json(sys.argv[2], orient="split"))
print(json.dumps({"answer": answer.to_json(orient="split"), "torch": "torch" in sys.modules}))
"""


def test_the_logged_onnx_grader_serves_with_torch_unimportable(exported18, raw_dir, sqlite_tracking, tmp_path):
    grader, network = exported18
    onnx_grader = OnnxGrader(network, grader.spec, grader.novelty)
    photos = [path.read_bytes() for path in sorted((raw_dir / "images").iterdir())[:6]] + [b"not a photo"]
    with mlflow.start_run():
        uri, _ = registry.log_onnx_grader(onnx_grader, network, photos[:2], "grader_onnx")
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    requirements = (Path(local) / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "torch" not in requirements
    # MLflow without its tracking server (Flask, SQLAlchemy, pyarrow, ...): what serving needs.
    assert {line.split("==")[0] for line in requirements.split()} & {"mlflow", "mlflow-skinny"} == {"mlflow-skinny"}
    request = tmp_path / "request.json"
    encode_photos(photos).to_json(request, orient="split")
    result = subprocess.run([sys.executable, "-c", TORCH_FREE_SCRIPT, local, str(request)], capture_output=True,
                            text=True, cwd=tmp_path, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["torch"] is False
    served = pd.read_json(io.StringIO(output["answer"]), orient="split")
    expected = grade_request(grader, encode_photos(photos))
    assert served["predicted_grade"].tolist() == expected["predicted_grade"].tolist()
    assert served["ungradable_reason"].fillna("").tolist() == expected["ungradable_reason"].tolist()
    assert served["ungradable_reason"].iloc[-1] == "unreadable photo"
    assert np.nanmax(np.abs(served[PROBABILITY_COLUMNS].to_numpy(float) - expected[PROBABILITY_COLUMNS].to_numpy(float))) <= 1e-4


def test_the_onnx_grader_says_it_cannot_explain(exported18, raw_dir):
    grader, network = exported18
    onnx_grader = OnnxGrader(network, grader.spec, grader.novelty)
    request = encode_photos([next((raw_dir / "images").iterdir()).read_bytes()])
    with pytest.raises(DataError, match="cannot explain its grades .*needs the torch grader"):
        grade_request(onnx_grader, request, explain=True)


@pytest.fixture
def registered_grader(processed_dir, raw_dir, sqlite_tracking):
    grader = tiny_grader("resnet18", processed_dir)
    photo = next((raw_dir / "images").iterdir()).read_bytes()
    with mlflow.start_run():
        uri, _ = registry.log_grader(grader, [photo, photo])
    registry.register_model(uri, "dr-export", "champion")
    return "models:/dr-export@champion"


def export_runs():
    client = MlflowClient()
    return [r for r in client.search_runs([client.get_experiment_by_name("tests").experiment_id])
            if r.data.tags.get(tags.STEP) == "export"]


@pytest.mark.parametrize("quantize, alias", [("none", "champion-onnx"), ("int8", "champion-onnx-int8")])
def test_export_checks_logs_and_registers_a_tagged_version(registered_grader, processed_dir, quantize, alias, capsys):
    assert export_cli.main(["--model_uri", registered_grader, "--data_dir", str(processed_dir), "--quantize", quantize,
                            "--min_agreement", "0.5"]) == 0
    (run,) = export_runs()
    metrics = run.data.metrics
    assert metrics["test_photos_compared"] == len(ProcessedDataset(processed_dir, CACHE).split("test"))
    if quantize == "none":
        assert metrics["test_max_abs_probability_difference"] <= 1e-4 and metrics["val_grade_agreement"] == 1.0
    else:
        assert metrics["test_max_abs_probability_difference"] > 1e-6  # really quantized
    version = MlflowClient().get_model_version_by_alias("dr-export", alias)
    assert version.tags[tags.FORMAT] == "onnx" and version.tags[tags.QUANTIZE] == quantize
    assert version.tags[tags.EXPORTED_FROM] == registered_grader
    assert "test_grade_agreement" in capsys.readouterr().out


def test_export_refuses_an_unknown_quantization_and_evaluate_an_onnx_grader(exported18, raw_dir, processed_dir,
                                                                            sqlite_tracking, capsys):
    # Refused before any model is loaded: the quantization is checked first.
    assert export_cli.main(["--model_uri", "models:/dr-export@champion", "--data_dir", str(processed_dir),
                            "--quantize", "int4"]) == 2
    assert "quantize='int4' is not supported; choose one of none, int8" in capsys.readouterr().err
    # A registered ONNX grader (the module's export, logged as `export` logs one) is not evaluate's.
    grader, network = exported18
    photo = next((raw_dir / "images").iterdir()).read_bytes()
    with mlflow.start_run():
        uri, _ = registry.log_onnx_grader(OnnxGrader(network, grader.spec, grader.novelty), network, [photo, photo],
                                          "grader_onnx")
    registry.register_model(uri, "dr-export", "champion-onnx")
    assert evaluate_cli.main(["--model_uri", "models:/dr-export@champion-onnx", "--data_dir", str(processed_dir)]) == 2
    assert "is an exported ONNX grader" in capsys.readouterr().err


def test_the_export_entry_point_is_declared():
    import yaml
    export = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]["export"]
    assert {"model_uri", "format", "quantize", "data_dir"} <= set(export["parameters"])


@pytest.mark.slow  # builds a virtualenv from the model's requirements (~1-2 min) and serves from it
def test_mlflow_models_serve_answers_from_a_fresh_torch_free_environment(exported18, raw_dir, sqlite_tracking,
                                                                          tmp_path):
    grader, network = exported18
    onnx_grader = OnnxGrader(network, grader.spec, grader.novelty)
    photos = [path.read_bytes() for path in sorted((raw_dir / "images").iterdir())[:5]] + [b"not a photo"]
    with mlflow.start_run():
        uri, _ = registry.log_onnx_grader(onnx_grader, network, photos[:2], "grader_onnx")
    model = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    env = tmp_path / "env"
    # Without a pip of its own: this venv's pip fills it (--python), newer than the one ensurepip
    # would copy in and faster to resolve (7 s against 18 s for venv and install here).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    # --no-compile: byte-compiling every installed file was half of the install's ~55 s here (with
    # full mlflow; mlflow-skinny installs less). The server then compiles what it imports, at each
    # start where PYTHONDONTWRITEBYTECODE is set (as here): still less than the compile saved.
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install",
                              "--quiet", "--no-compile", "-r", str(model / "requirements.txt")],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    assert subprocess.run([str(env / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode != 0
    port = free_port()
    command = [str(env / "bin" / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    serving_env = {**subprocess_env(), "PATH": f"{env / 'bin'}:/usr/bin:/bin"}
    with running_server(command, port, tmp_path / "serve.log", cwd=tmp_path, env=serving_env, health="/ping",
                        timeout=180) as url:
        body = {"dataframe_split": {"columns": ["image"], "data": [[text] for text in encode_photos(photos)["image"]]}}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            served = pd.DataFrame(json.loads(response.read())["predictions"])
    expected = grade_request(grader, encode_photos(photos))
    assert served["predicted_grade"].tolist() == expected["predicted_grade"].tolist()
    assert served["gradable"].tolist() == expected["gradable"].tolist()
    assert served["ungradable_reason"].tolist() == expected["ungradable_reason"].tolist()
    assert served["referable"].tolist() == [None if pd.isna(v) else bool(v) for v in expected["referable"]]
    difference = served[PROBABILITY_COLUMNS].astype(float).to_numpy() - expected[PROBABILITY_COLUMNS].to_numpy(float)
    assert np.nanmax(np.abs(difference)) <= 1e-4
