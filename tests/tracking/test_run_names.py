"""A run's name: the configuration's where MLflow gave it a random one, the user's where chosen."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.tracking import runs


def test_a_run_mlflow_named_at_random_gets_the_configurations_name(sqlite_tracking):
    with mlflow.start_run() as generated:  # what `mlflow run . -e train` opens: judicious-stork-805
        assert runs.GENERATED_RUN_NAME.fullmatch(generated.info.run_name)
        runs.name_if_generated("resnet50-scratch")
    with mlflow.start_run(run_name="lr-sweep") as chosen:
        runs.name_if_generated("resnet50-scratch")
    client = MlflowClient()
    assert client.get_run(generated.info.run_id).info.run_name == "resnet50-scratch"
    assert client.get_run(chosen.info.run_id).info.run_name == "lr-sweep"
