"""Every MLflow call of the project: runs, params, metrics, artifacts, models and the registry.

The loops never import this module; the steps pass its functions in as callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import requests
import torch
import torchvision
import yaml
from mlflow.entities import Run
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.distributed import context_from_env
from pipeline.errors import ConfigError, RetinaFlowError

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "retina-flow"
STEP_TAG = "retina_flow.step"
ERROR_TAG = "retina_flow.error"
MODEL_URI_TAG = "retina_flow.model_uri"
SOURCE_RUN_TAG = "retina_flow.model_run_id"
RESUMED_RUN_TAG = "retina_flow.resumed_run_id"
SKIPPED_TAG_PREFIX = "retina_flow.skipped."
PER_EPOCH_METRICS = (
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
    "val_kappa", "test_kappa", "val_balanced_accuracy", "val_macro_f1",
    "val_referable_auc", "val_referable_sensitivity", "val_referable_specificity",
)
# The per-epoch metrics compare draws as curves (read back with their full history).
CURVE_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy", "val_kappa", "test_kappa")
DUPLICATE_INSERT_ATTEMPTS = 5
# Explicit requirements: inferring them costs ~18 s per logged model on these machines.
MODEL_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    f"torchvision=={torchvision.__version__.split('+')[0]}",
]


def main_process_only(default: Any = None) -> Callable:
    """Under torchrun only rank 0 writes to MLflow; on other ranks the call returns ``default``."""
    def decorate(function: Callable) -> Callable:
        @wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs) if context_from_env().is_main else default
        return wrapper
    return decorate


@main_process_only("(no tracking on this torchrun rank)")
def configure() -> str:
    """Uses MLFLOW_TRACKING_URI when set (``mlflow run`` sets it), else the embedded sqlite store.

    Outside ``mlflow run``, runs go to the experiment named by MLFLOW_EXPERIMENT_NAME/_ID, or
    ``retina-flow``. A tracking server that does not answer fails the step within seconds.
    """
    # Artifact read-backs (compare) would otherwise draw a progress bar per file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's default (7 retries, doubling) blocks a training loop for minutes per call while a
    # server restarts; metrics are buffered here instead, so a short retry is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if uri.startswith(("http://", "https://")):
        require_reachable(uri)
    mlflow.set_tracking_uri(uri)
    if not (os.environ.get("MLFLOW_EXPERIMENT_ID") or os.environ.get("MLFLOW_RUN_ID")):
        if name := os.environ.get("MLFLOW_EXPERIMENT_NAME"):
            # MLflow's own lookup of this name fails the run that loses a race to create it.
            _create_experiment_if_missing(name)
        else:
            mlflow.set_experiment(DEFAULT_EXPERIMENT)
    return mlflow.get_tracking_uri()


def _create_experiment_if_missing(name: str) -> None:
    """Creates experiment ``name`` unless it exists; a concurrent process creating it first is fine."""
    client = MlflowClient()
    if client.get_experiment_by_name(name) is not None:
        return
    try:
        client.create_experiment(name)
    except mlflow.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def require_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raises ConfigError naming ``uri`` when nothing answers there (an auth refusal is an answer)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"the tracking server {uri} is unreachable ({reason}); start it, or unset "
                          "MLFLOW_TRACKING_URI to use the embedded sqlite store") from None


@contextlib.contextmanager
def step_run(step: str, run_name: str | None = None, *, nested: bool = False, tags: dict[str, str] | None = None,
             run_id: str | None = None) -> Iterator[Run | None]:
    """An MLflow run for one pipeline step; attaches to ``mlflow run``'s run when there is one.

    A failure marks the run FAILED; a user-facing error's message is also kept as a tag, so the
    UI shows why without a log. Ranks other than 0 of a torchrun job open no run.
    """
    if not context_from_env().is_main:
        yield None
        return
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested,
                          tags={STEP_TAG: step, **(tags or {})}) as run:
        try:
            yield run
        except RetinaFlowError as exc:
            mlflow.set_tag(ERROR_TAG, str(exc)[:5000])
            raise


@main_process_only("")
def active_run_id() -> str:
    return mlflow.active_run().info.run_id


@main_process_only(None)
def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


@main_process_only(None)
def log_params(params: dict[str, Any]) -> None:
    """Logs params not already on the run.

    ``mlflow run`` logs the ``-P`` values (as typed, e.g. ``1e-3``) before the entry point starts
    and a param can never change, so those keys keep the user's spelling.
    """
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: _param_text(v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_param_text(v) for v in value)
    return str(value)


@main_process_only(None)
def log_config(config: dict[str, Any], params: dict[str, Any]) -> None:
    """The resolved config as ``config.yaml`` plus the given flat params."""
    mlflow.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")
    log_params(params)


# Metric batches not yet accepted by the tracking server, oldest first, each with the run it
# belongs to: by the time the server is back, another (nested) run may be the active one.
_unsent: list[tuple[str, dict[str, float], int | None, str | None]] = []
_SERVER_ERRORS = (mlflow.exceptions.MlflowException, OSError, requests.exceptions.RequestException)


@main_process_only(None)
def log_metrics(metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
    """Logs now, or, while the tracking server is away, keeps the values and sends them (in order)
    with the next call that gets through; training never waits for the server."""
    _unsent.append((mlflow.active_run().info.run_id, {k: float(v) for k, v in metrics.items()}, step, model_id))
    flush_metrics()


@main_process_only(True)
def flush_metrics(wait_seconds: float = 0.0) -> bool:
    """Sends the kept metric batches; retries for up to ``wait_seconds``. True when none are left."""
    deadline = time.monotonic() + wait_seconds
    while _unsent:
        run_id, values, step, model_id = _unsent[0]
        try:
            mlflow.log_metrics(values, step=step, model_id=model_id, run_id=run_id)
        except _SERVER_ERRORS as exc:
            if time.monotonic() < deadline:
                time.sleep(2)
                continue
            log.warning("the tracking server %s is unreachable (%s): training goes on, and %d metric "
                        "batch(es) are kept to send when it is back", mlflow.get_tracking_uri(),
                        str(exc).splitlines()[0][:200], len(_unsent))
            return False
        _unsent.pop(0)
    return True


@main_process_only(None)
def log_missing_epoch_metrics(history: list[dict[str, float]]) -> None:
    """Logs the per-epoch values a crash kept from the run (checkpointed, not yet logged), once each."""
    client = MlflowClient()
    run_id = mlflow.active_run().info.run_id
    logged: dict[str, set[int]] = {}
    for epoch, metrics in enumerate(history, start=1):
        missing = {}
        for name, value in metrics.items():
            if name not in logged:
                logged[name] = {m.step for m in client.get_metric_history(run_id, name)}
            if epoch not in logged[name]:
                missing[name] = value
        if missing:
            log.warning("logging %d metric values of epoch %d that the interrupted run had not logged", len(missing), epoch)
            log_metrics(missing, step=epoch)


def find_resumable_run(config: dict[str, Any]) -> str | None:
    """The latest unfinished (RUNNING, FAILED or KILLED) train run of the same configuration."""
    same = {k: _param_text(v) for k, v in config.items()
            if k not in {"resume", "num_workers", "device", "checkpoint_dir", "checkpoint_artifact",
                         "keep_checkpoint"}}
    runs = MlflowClient().search_runs(
        experiment_ids(), filter_string=f"tags.`{STEP_TAG}` = 'train' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=200)
    for run in runs:
        if all(_same_param_value(run.data.params.get(k), v) for k, v in same.items()):
            return run.info.run_id
    return None


def _same_param_value(logged: str | None, wanted: str) -> bool:
    """Equal as text, or as numbers: ``mlflow run -P lr=1e-3`` logs the spelling the user typed."""
    if logged is None or logged == wanted:
        return logged == wanted
    try:
        return float(logged) == float(wanted)
    except ValueError:
        return logged.lower() == wanted.lower()  # True / true


@main_process_only(None)
def log_dict(data: dict[str, Any], artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


@main_process_only(None)
def log_figure(figure: Any, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


@main_process_only(None)
def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


@main_process_only(None)
def log_state_dict(state: dict[str, torch.Tensor], artifact_path: str, file_name: str) -> None:
    """A plain state dict file (``torch.load(weights_only=True)`` loads it) as a run artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / file_name
        torch.save(state, path)
        mlflow.log_artifact(str(path), artifact_path)


@main_process_only(None)
def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


@main_process_only(None)
def log_arrays(artifact_file: str, **arrays: np.ndarray) -> None:
    """Numpy arrays as one ``.npz`` artifact (e.g. Grad-CAM heatmaps, for a later look or a test)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        np.savez_compressed(path, **arrays)
        mlflow.log_artifact(str(path), str(Path(artifact_file).parent))


@main_process_only(None)
def log_dataset(manifest: pd.DataFrame, source: str, name: str, context: str) -> None:
    """The processed manifest as the run's input dataset (the UI's Datasets column)."""
    with warnings.catch_warnings():
        # MLflow's hints about integer columns and local-path sources do not apply to a manifest.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(manifest, source=source, name=name, targets="grade")
    # MLflow looks the dataset up, then inserts it: runs that log one dataset at the same moment
    # (parallel trainings) collide on the insert; a second try finds the row the winner wrote.
    for attempt in range(1, DUPLICATE_INSERT_ATTEMPTS + 1):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.MlflowException as exc:
            if attempt == DUPLICATE_INSERT_ATTEMPTS or not _is_duplicate_insert(exc):
                raise
            log.debug("dataset %s was inserted by a concurrent run; linking it (attempt %d)", name, attempt)
            time.sleep(random.uniform(0.05, 0.3) * attempt)


def _is_duplicate_insert(exc: Exception) -> bool:
    """A unique-key collision, in the wording of sqlite, PostgreSQL or MySQL."""
    text = str(exc).lower()
    return any(marker in text for marker in ("unique constraint failed", "duplicate key value", "duplicate entry"))


@main_process_only(("", ""))
def log_model(serving: torch.nn.Module, example: torch.Tensor) -> tuple[str, str]:
    """Logs the served model (pt2, no pickle) with signature and input example.

    Returns:
        (model_uri, model_id) of the LoggedModel, also kept as the run's ``retina_flow.model_uri`` tag.
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
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info.model_uri, info.model_id


def model_uri_of(reference: str) -> str:
    """A model URI as given, or the model logged by a train run given by its id."""
    if ":/" in reference:
        return reference
    try:
        run = MlflowClient().get_run(reference)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(f"model_uri={reference!r} is neither a model URI nor a known run id: {exc.message}") from None
    uri = run.data.tags.get(MODEL_URI_TAG)
    if not uri:
        raise ConfigError(f"run {reference} has logged no model (no {MODEL_URI_TAG} tag); is it a finished train run?")
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


@main_process_only("")
def register_model(model_uri: str, name: str, alias: str, tags: dict[str, str] | None = None) -> str:
    """Registers a model version and points ``alias`` at it; returns the version."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version.version


@dataclass
class TrainRunRecord:
    """What ``compare`` needs of one train run, read back from the tracking server."""

    run_id: str
    run_name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def experiment_ids() -> list[str]:
    run = mlflow.active_run()
    if run is not None:
        return [run.info.experiment_id]
    return [mlflow.tracking.fluent._get_experiment_id()]


def search_train_runs(experiment_ids: list[str], parent_run_id: str | None = None) -> list[TrainRunRecord]:
    """Finished train runs (of one study when ``parent_run_id`` is given) with metric histories."""
    query = f"tags.`{STEP_TAG}` = 'train' and attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    client = MlflowClient()
    runs = client.search_runs(experiment_ids, filter_string=query, max_results=5000, order_by=["attributes.start_time ASC"])
    records = []
    for run in runs:
        history = {
            name: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)]
            for name in CURVE_METRICS
        }
        records.append(TrainRunRecord(run.info.run_id, run.info.run_name, run.info.status, run.data.params,
                                      run.data.metrics, history))
    return records


def mark_resume_launcher(launcher_run_id: str, resumed_run_id: str) -> None:
    """Points ``mlflow run``'s own run at the run a resume continues, and says so in the UI.

    ``mlflow run`` always opens a run before the entry point starts; the training goes on in the
    interrupted run, so this one only records the launch (its params are the command line's).
    """
    client = MlflowClient()
    client.set_tag(launcher_run_id, RESUMED_RUN_TAG, resumed_run_id)
    client.set_tag(launcher_run_id, "mlflow.note.content",
                   f"This run launched a resume: training continued in run {resumed_run_id}, where its "
                   "params, metrics and artifacts are.")


def current_uri() -> str:
    """The tracking URI ``configure`` chose."""
    return mlflow.get_tracking_uri()


def run_exists(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def run_tags(run_id: str) -> dict[str, str]:
    return MlflowClient().get_run(run_id).data.tags


def read_artifact(run_id: str, artifact_path: str) -> bytes | None:
    """One artifact's bytes, fetched from wherever the tracking server keeps it; None if absent."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return Path(local).read_bytes()


def run_url(run_id: str) -> str:
    run = MlflowClient().get_run(run_id)
    return run_link(run)


def tracking_ui_hint() -> str:
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"run `mlflow ui --backend-store-uri {uri}` and open http://127.0.0.1:5000"


def run_link(run: Run | None = None) -> str:
    run = run or mlflow.active_run()
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
