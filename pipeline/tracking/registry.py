"""Models in MLflow: logging a train run's grader as the served model, loading a logged or registered
one back, and the model registry (versions, aliases, descriptions)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

import pipeline
from pipeline.errors import ConfigError
from pipeline.grading import Grader
from pipeline.photo_grader import EXPLAIN_PARAM, encode_photos, grade_request
from pipeline.onnx_grader import OnnxGrader
from pipeline.tracking import served_onnx, tags
from pipeline.tracking.served import NOVELTY_ARTIFACT, SPEC_ARTIFACT, WEIGHTS_ARTIFACT, GraderModel

MODEL_CODE = Path(__file__).resolve().parent / "model_code"  # the graders' models-from-code scripts
# What the served model imports, pinned to the versions it was trained with. Explicit: inferring
# requirements costs ~18 s per logged model on these machines.
SERVED_PACKAGES = ("torch", "torchvision", "pillow", "numpy", "pandas", "scikit-learn", "tqdm", "scikit-image", "scipy",
                   "pydicom", "matplotlib")  # matplotlib: the heat maps of explain=true


# The ONNX grader's: no torch, no torchvision (its network runs in onnxruntime), and MLflow without
# its tracking server's packages (Flask, SQLAlchemy, pyarrow, ...): serving needs none of them.
ONNX_SERVED_PACKAGES = ("mlflow-skinny", "onnxruntime", "pillow", "numpy", "pandas", "scikit-learn", "scikit-image", "scipy", "pydicom")


def served_requirements(packages: tuple[str, ...] = SERVED_PACKAGES) -> list[str]:
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in packages]


PACKAGE = Path(pipeline.__file__).resolve().parent


def served_code(script: Path, into: Path) -> Path:
    """A copy under ``into`` of the package's modules that the models-from-code ``script`` imports,
    directly or through one another (read from their source, imports inside functions too), with
    the ``__init__.py`` of every package on the way: the ``code_paths`` of a logged grader.

    What it serves with and no more (the README's served-model section gives the counts): each file
    is an artifact to upload when the model is logged and to download wherever it is loaded or served.
    """
    wanted, found = list(_package_imports(script)), {}
    while wanted:
        parts = wanted.pop().split(".")
        # Importing pipeline.data.fov runs pipeline/__init__.py and pipeline/data/__init__.py first.
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in found and (source := _source_of(name)) is not None:
                found[name] = source
                wanted.extend(_package_imports(source))
    target = into / PACKAGE.name
    for source in found.values():
        copy = target / source.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return target


def _source_of(module: str) -> Path | None:
    """The file of ``module`` of this package (``pipeline.x.y``); None for a name that is not a
    module (``from pipeline.x import some_function``)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _package_imports(source: Path) -> set[str]:
    """The names under this package that ``source`` imports (``from pipeline.x import y`` gives
    ``pipeline.x`` and ``pipeline.x.y``: y may be a module; ``from .x import y`` is read from
    ``source``'s own package)."""
    # The package ``source`` is in (a script outside it has no relative imports to read).
    own_package = [PACKAGE.name, *source.relative_to(PACKAGE).parent.parts] if source.is_relative_to(PACKAGE) else []
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(own_package[:len(own_package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == PACKAGE.name}


def log_grader(grader: Grader, example_photos: list[bytes]) -> tuple[str, str]:
    """Logs the grader as the run's model: a pyfunc taking base64 photos (see ``served``), with its
    signature, an input example of real photo bytes, and the package code it needs.

    Returns:
        (model_uri, model_id) of the LoggedModel, also kept as the run's ``tags.MODEL_URI`` tag.
    """
    example = encode_photos(example_photos)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        # MLflow's hint about integer columns and missing values (here and when it checks the input
        # example): predicted_grade is never missing.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        signature = infer_signature(example, grade_request(grader, example), params={EXPLAIN_PARAM: False})
        weights, spec = Path(tmp) / "weights.pt", Path(tmp) / "grader.json"
        torch.save({k: v.detach().cpu() for k, v in grader.network.state_dict().items()}, weights)
        spec.write_text(json.dumps(grader.spec.to_dict(), indent=2))
        files = {WEIGHTS_ARTIFACT: str(weights), SPEC_ARTIFACT: str(spec)}
        if grader.novelty is not None:
            novelty = Path(tmp) / "novelty.npz"
            np.savez(novelty, **grader.novelty.to_arrays())
            files[NOVELTY_ARTIFACT] = str(novelty)
        script = MODEL_CODE / "torch_grader.py"
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(script),  # models-from-code: no pickle
            artifacts=files,
            code_paths=[str(served_code(script, Path(tmp) / "code"))],
            signature=signature,
            input_example=example,
            pip_requirements=served_requirements(),
        )
    mlflow.set_tag(tags.MODEL_URI, info.model_uri)
    return info.model_uri, info.model_id


def log_onnx_grader(grader: OnnxGrader, onnx_file: Path, example_photos: list[bytes], name: str) -> tuple[str, str]:
    """Logs an exported grader (``export``) in the active run as a pyfunc taking base64 photos with
    the torch grader's signature (see ``served_onnx``), whose environment holds no torch.

    Returns:
        (model_uri, model_id) of the LoggedModel.
    """
    example = encode_photos(example_photos)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        signature = infer_signature(example, grade_request(grader, example), params={EXPLAIN_PARAM: False})
        spec = Path(tmp) / "grader.json"
        spec.write_text(json.dumps(grader.spec.to_dict(), indent=2))
        files = {served_onnx.ONNX_ARTIFACT: str(onnx_file), served_onnx.SPEC_ARTIFACT: str(spec)}
        if grader.novelty is not None:
            novelty = Path(tmp) / "novelty.npz"
            np.savez(novelty, **grader.novelty.to_arrays())
            files[served_onnx.NOVELTY_ARTIFACT] = str(novelty)
        script = MODEL_CODE / "onnx_grader.py"
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(script),  # models-from-code: no pickle
            artifacts=files,
            code_paths=[str(served_code(script, Path(tmp) / "code"))],
            signature=signature,
            input_example=example,
            pip_requirements=served_requirements(ONNX_SERVED_PACKAGES),
        )
    return info.model_uri, info.model_id


def registered_name_and_alias(uri: str) -> tuple[str, str]:
    """(registered model, alias) of a ``models:/<name>@<alias>`` URI; ("", "") otherwise; (name, "")
    for ``models:/<name>/<version>``."""
    if not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return "", ""
    reference = uri[len("models:/"):]
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return name, alias
    return reference.split("/", 1)[0], ""


def version_of_alias(name: str, alias: str) -> str | None:
    """The version of registered model ``name`` that ``alias`` points at; None when it points at none."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException:
        return None


def model_uri_of(reference: str) -> str:
    """A model URI as given, or the model logged by a train run given by its id."""
    if ":/" in reference:
        return reference
    try:
        run = MlflowClient().get_run(reference)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(f"model_uri={reference!r} is neither a model URI nor a known run id: {exc.message}") from None
    uri = run.data.tags.get(tags.MODEL_URI)
    if not uri:
        raise ConfigError(f"run {reference} has logged no model (no {tags.MODEL_URI} tag); is it a finished train run?")
    return uri


@dataclass
class LoadedModel:
    grader: Grader
    uri: str
    source_run_id: str | None
    model_id: str | None


def load_model(uri: str) -> LoadedModel:
    """Loads a logged or registered grader (``models:/dr-resnet@champion``) for inference."""
    # MLflow would download into a fresh temporary folder per call and never remove it: a copy of
    # the model (95 MB for resnet50) left in /tmp by every evaluate and predict.
    path_before = list(sys.path)
    with tempfile.TemporaryDirectory(prefix="retina-flow-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            info = mlflow.models.Model.load(local).get_model_info()
            served = mlflow.pyfunc.load_model(local).unwrap_python_model()
        except mlflow.exceptions.MlflowException as exc:
            raise ConfigError(f"cannot load model {uri!r}: {exc.message}") from None
        finally:
            # Loading puts the model's code folder on sys.path; it is deleted with ``tmp``.
            sys.path[:] = [entry for entry in sys.path if entry in path_before or not entry.startswith(tmp)]
    if isinstance(served, served_onnx.OnnxGraderModel):
        raise ConfigError(f"model {uri!r} is an exported ONNX grader: serve it (mlflow models serve) or grade an "
                          "archive with it; evaluate, predict and export take the torch grader it was exported from "
                          f"(its version's tag {tags.EXPORTED_FROM})")
    if not isinstance(served, GraderModel):
        raise ConfigError(f"model {uri!r} is not a retina-flow grader (it is {type(served).__name__}); "
                          "models logged before the grader took photos must be retrained")
    return LoadedModel(served.grader, uri, info.run_id, getattr(info, "model_id", None))


# MLflow's SQL stores keep a registered model's and a version's description in VARCHAR(5000):
# PostgreSQL refuses a longer one (SQLite does not check).
DESCRIPTION_LIMIT = 5000


def describe(name: str, version: str, model_description: str, version_description: str, more: str = "") -> None:
    """Markdown descriptions of a registered model and one of its versions (the UI shows both),
    each cut at a section boundary to fit ``DESCRIPTION_LIMIT`` with ``more`` saying where the rest is."""
    client = MlflowClient()
    client.update_registered_model(name, description=fitted_description(model_description, more))
    client.update_model_version(name, version, description=fitted_description(version_description, more))


def fitted_description(text: str, more: str) -> str:
    """``text`` if it fits the registry's descriptions, else its sections up to the last that fits,
    then ``more``."""
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    note = f"\n\n*(cut to fit the model registry)* {more}\n"
    cut = text.rfind("\n## ", 0, DESCRIPTION_LIMIT - len(note))
    return text[:cut if cut > 0 else DESCRIPTION_LIMIT - len(note)].rstrip() + note


def register_model(model_uri: str, name: str, alias: str, version_tags: dict[str, str] | None = None) -> str:
    """Registers a model version and points ``alias`` at it (none when empty); returns the version."""
    version = mlflow.register_model(model_uri, name, tags=version_tags)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version.version
