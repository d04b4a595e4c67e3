"""Models in MLflow: logging the served model of a train run, loading a logged or registered one
back for inference, and the model registry (versions and aliases)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import mlflow
import torch
import torchvision
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.tracking import tags

# Explicit requirements: inferring them costs ~18 s per logged model on these machines.
MODEL_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    f"torchvision=={torchvision.__version__.split('+')[0]}",
]


def log_model(serving: torch.nn.Module, example: torch.Tensor) -> tuple[str, str]:
    """Logs the served model (pt2, no pickle) with signature and input example.

    Returns:
        (model_uri, model_id) of the LoggedModel, also kept as the run's ``tags.MODEL_URI`` tag.
    """
    serving = serving.cpu().eval()
    with torch.no_grad():
        output = serving(example)
    example_np = example.numpy()
    # -1 on every axis but channels: the network takes any batch and any size >= 32 px.
    signature = infer_signature(example_np, output.numpy())
    info = mlflow.pytorch.log_model(
        serving,
        name="model",
        signature=signature,
        input_example=example_np,
        pip_requirements=MODEL_REQUIREMENTS,
        serialization_format="pt2",
    )
    mlflow.set_tag(tags.MODEL_URI, info.model_uri)
    return info.model_uri, info.model_id


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
    module: torch.nn.Module
    uri: str
    image_size: int
    source_run_id: str | None
    model_id: str | None


def load_model(uri: str) -> LoadedModel:
    """Loads a logged or registered model (``models:/dr-resnet@champion``) for inference."""
    # MLflow would download into a fresh temporary folder per call and never remove it: a copy of
    # the model (95 MB for resnet50) left in /tmp by every evaluate and predict.
    with tempfile.TemporaryDirectory(prefix="retina-flow-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            info = mlflow.models.Model.load(local).get_model_info()
            module = mlflow.pytorch.load_model(local, map_location="cpu")
        except mlflow.exceptions.MlflowException as exc:
            raise ConfigError(f"cannot load model {uri!r}: {exc.message}") from None
    shape = info.signature.inputs.inputs[0].shape
    return LoadedModel(module, uri, int(shape[-1]), info.run_id, getattr(info, "model_id", None))


def register_model(model_uri: str, name: str, alias: str, version_tags: dict[str, str] | None = None) -> str:
    """Registers a model version and points ``alias`` at it; returns the version."""
    version = mlflow.register_model(model_uri, name, tags=version_tags)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version.version
