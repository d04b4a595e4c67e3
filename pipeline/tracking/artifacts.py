"""A run's files: JSON, text, PNG bytes, arrays, state dicts, other files, and its input dataset;
and reading an artifact back from wherever the tracking server keeps it."""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from pipeline.tracking.runs import main_process_only

log = logging.getLogger(__name__)

DUPLICATE_INSERT_ATTEMPTS = 5


@main_process_only
def log_dict(data: dict[str, Any], artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


@main_process_only
def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


@main_process_only
def log_text_to_run(run_id: str, text: str, artifact_file: str) -> None:
    """``log_text`` to another (possibly finished) run: a champion's card once it is validated."""
    MlflowClient().log_text(run_id, text, artifact_file)


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Any bytes (a PNG from ``figures.figure_png``, say) as one artifact file."""
    with _staged(artifact_file) as path:
        path.write_bytes(data)


@main_process_only
def log_state_dict(state: dict[str, torch.Tensor], artifact_file: str) -> None:
    """A plain state dict file (``torch.load(weights_only=True)`` loads it) as a run artifact."""
    with _staged(artifact_file) as path:
        torch.save(state, path)


@main_process_only
def log_arrays(artifact_file: str, **arrays: np.ndarray) -> None:
    """Numpy arrays as one ``.npz`` artifact (e.g. Grad-CAM heatmaps, for a later look or a test)."""
    with _staged(artifact_file) as path:
        np.savez_compressed(path, **arrays)


@main_process_only
def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


@contextlib.contextmanager
def _staged(artifact_file: str) -> Iterator[Path]:
    """A temporary path named like ``artifact_file``; what is written there is logged under its folder."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        yield path
        folder = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), None if folder == "." else folder)


@main_process_only
def log_dataset(manifest: pd.DataFrame, source: str, name: str, context: str) -> None:
    """The processed manifest as the run's input dataset (the UI's Datasets column)."""
    with warnings.catch_warnings():
        # MLflow's hints about integer columns and local-path sources do not apply to a manifest
        # (its schema is inferred again when the dataset is logged).
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


def delete_artifact(run_id: str, artifact_path: str) -> None:
    """Removes one artifact of a run from wherever the tracking server keeps it (local folder,
    served ``mlflow-artifacts``, object store), through MLflow's artifact repository for the run."""
    artifact_uri = MlflowClient().get_run(run_id).info.artifact_uri
    get_artifact_repository(artifact_uri).delete_artifacts(artifact_path)


def read_artifact(run_id: str, artifact_path: str) -> bytes | None:
    """One artifact's bytes, fetched from wherever the tracking server keeps it; None if absent."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return Path(local).read_bytes()
