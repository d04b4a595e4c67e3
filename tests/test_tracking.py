"""The tracking module against a real server: calls that race when users share one."""

from __future__ import annotations

import threading
from collections.abc import Callable

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking

RACERS = 8
ROUNDS = 3


def run_at_once(task: Callable[[threading.Barrier], None]) -> list[str]:
    """Runs ``task`` in RACERS threads that pass the barrier together; returns their errors."""
    start_together = threading.Barrier(RACERS)
    errors: list[str] = []

    def racer() -> None:
        try:
            task(start_together)
        except BaseException as exc:  # noqa: BLE001 - the test reports every racer's failure
            errors.append(str(exc)[:300])

    threads = [threading.Thread(target=racer) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


@pytest.fixture
def server_tracking(mlflow_server, monkeypatch):
    """The shared server, as the steps find it through the environment; later tests start clean."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


def test_runs_logging_one_dataset_at_once_all_record_it(server_tracking):
    # Each new dataset is a fresh insert the racers contend for (MLflow checks, then inserts).
    client = MlflowClient(server_tracking)
    experiment_id = client.create_experiment("dataset-race")
    for round_number in range(ROUNDS):
        manifest = pd.DataFrame({"id": [f"{round_number}_left", f"{round_number}_right"], "grade": [0, 2]})
        run_ids: list[str] = []

        def log_the_dataset(start_together: threading.Barrier) -> None:
            with mlflow.start_run(experiment_id=experiment_id) as run:
                run_ids.append(run.info.run_id)
                start_together.wait(timeout=60)
                tracking.log_dataset(manifest, "/data/64px", "64px", "training")

        assert run_at_once(log_the_dataset) == []
        digests = {client.get_run(run_id).inputs.dataset_inputs[0].dataset.digest for run_id in run_ids}
        assert len(run_ids) == RACERS and len(digests) == 1


def test_steps_configuring_a_new_experiment_at_once_share_it(server_tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "created-by-racers")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    def configure(start_together: threading.Barrier) -> None:
        start_together.wait(timeout=60)
        tracking.configure()

    assert run_at_once(configure) == []
    client = MlflowClient(server_tracking)
    assert [e.name for e in client.search_experiments(filter_string="name = 'created-by-racers'")] == ["created-by-racers"]
    with mlflow.start_run() as run:
        assert run.info.experiment_id == client.get_experiment_by_name("created-by-racers").experiment_id


def test_auto_resume_finds_a_run_whatever_the_spelling_of_its_numbers(sqlite_tracking):
    import dataclasses

    from pipeline.config import TrainConfig

    config = dataclasses.asdict(TrainConfig(model="resnet50", epochs=3, lr=0.001))
    tracking.configure()
    # As `mlflow run -P lr=1e-3 -P epochs=3.0` logs them, killed before it finished.
    with mlflow.start_run(tags={tracking.STEP_TAG: "train"}) as killed:
        tracking.log_params({k: v for k, v in config.items() if k != "resume"}
                            | {"lr": "1e-3", "epochs": "3.0", "pretrained": "False"})
    MlflowClient().set_terminated(killed.info.run_id, "KILLED")

    assert tracking.find_resumable_run(config) == killed.info.run_id
    assert tracking.find_resumable_run(config | {"lr": 0.01}) is None
    assert tracking.find_resumable_run(config | {"model": "resnet18"}) is None
