"""The tracking module against a real server: calls that race when users share one."""

from __future__ import annotations

import threading

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline import tracking

RACERS = 8
ROUNDS = 3


def _log_same_dataset_at_once(manifest: pd.DataFrame, experiment_id: str) -> tuple[list[str], list[BaseException]]:
    start_together = threading.Barrier(RACERS)
    run_ids: list[str] = []
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            with mlflow.start_run(experiment_id=experiment_id) as run:
                run_ids.append(run.info.run_id)
                start_together.wait(timeout=60)
                tracking.log_dataset(manifest, "/data/64px", "64px", "training")
        except BaseException as exc:  # noqa: BLE001 - the test reports every racer's failure
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return run_ids, errors


def test_runs_logging_one_dataset_at_once_all_record_it(mlflow_server, monkeypatch):
    # Each new dataset is a fresh insert the racers contend for (MLflow checks, then inserts).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment("dataset-race")
    for round_number in range(ROUNDS):
        manifest = pd.DataFrame({"id": [f"{round_number}_left", f"{round_number}_right"], "grade": [0, 2]})
        run_ids, errors = _log_same_dataset_at_once(manifest, experiment_id)
        assert not errors, [str(e)[:300] for e in errors]
        digests = {client.get_run(run_id).inputs.dataset_inputs[0].dataset.digest for run_id in run_ids}
        assert len(run_ids) == RACERS and len(digests) == 1


def test_processes_configuring_a_new_experiment_at_once_share_it(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "created-by-racers")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    start_together = threading.Barrier(RACERS)
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            start_together.wait(timeout=60)
            tracking.configure()
        except BaseException as exc:  # noqa: BLE001 - the test reports every racer's failure
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, [str(e)[:300] for e in errors]
    client = MlflowClient(mlflow_server)
    assert [e.name for e in client.search_experiments(filter_string="name = 'created-by-racers'")] == ["created-by-racers"]
    with mlflow.start_run() as run:
        assert run.info.experiment_id == client.get_experiment_by_name("created-by-racers").experiment_id
