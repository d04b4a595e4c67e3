"""resume=auto: finding the interrupted run of the same configuration."""

from __future__ import annotations

import dataclasses

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import TrainConfig
from pipeline.tracking import runs, tags
from pipeline.tracking.resume import find_resumable_run


def test_auto_resume_finds_a_run_whatever_the_spelling_of_its_numbers(sqlite_tracking):
    config = dataclasses.asdict(TrainConfig(model="resnet50", epochs=3, lr=0.001))
    runs.configure()
    # As `mlflow run -P lr=1e-3 -P epochs=3.0` logs them, killed before it finished.
    with mlflow.start_run(tags={tags.STEP: "train"}) as killed:
        runs.log_params({k: v for k, v in config.items() if k != "resume"}
                        | {"lr": "1e-3", "epochs": "3.0", "pretrained": "False"})
    MlflowClient().set_terminated(killed.info.run_id, "KILLED")

    assert find_resumable_run(config) == killed.info.run_id
    assert find_resumable_run(config | {"lr": 0.01}) is None
    assert find_resumable_run(config | {"model": "resnet18"}) is None
