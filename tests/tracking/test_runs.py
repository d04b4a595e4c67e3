"""Where runs go: configuring against a real server while other steps do the same."""

from __future__ import annotations

import threading

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import runs
from tests.tracking.racing import run_at_once

pytestmark = pytest.mark.slow  # a real mlflow server


def test_steps_configuring_a_new_experiment_at_once_share_it(server_tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "created-by-racers")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    def configure(start_together: threading.Barrier) -> None:
        start_together.wait(timeout=60)
        runs.configure()

    assert run_at_once(configure) == []
    client = MlflowClient(server_tracking)
    assert [e.name for e in client.search_experiments(filter_string="name = 'created-by-racers'")] == ["created-by-racers"]
    # Each racer also marks it as a model-training experiment, which the MLflow UI opens on its runs.
    assert client.get_experiment_by_name("created-by-racers").tags["mlflow.experimentKind"] == "custom_model_development"
    with mlflow.start_run() as run:
        assert run.info.experiment_id == client.get_experiment_by_name("created-by-racers").experiment_id

