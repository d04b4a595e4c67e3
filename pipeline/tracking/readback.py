"""Finished train runs read back from the tracking server as plain records for ``compare``."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.catalog import CURVE_METRICS
from pipeline.records import TrainRunRecord
from pipeline.tracking import tags


def search_train_runs(experiment_ids: list[str], parent_run_id: str | None = None) -> list[TrainRunRecord]:
    """Finished train runs (of one study when ``parent_run_id`` is given) with their curves' histories."""
    query = f"tags.`{tags.STEP}` = 'train' and attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`{tags.PARENT_RUN}` = '{parent_run_id}'"
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


def train_result(run_id: str) -> tuple[str, dict[str, float]]:
    """A finished train run's logged model URI and its metrics (latest values)."""
    run = MlflowClient().get_run(run_id)
    return run.data.tags.get(tags.MODEL_URI, ""), run.data.metrics


def input_dataset(run_id: str) -> tuple[str, str]:
    """(name, digest) of the dataset a run logged as its input; ("", "") when it logged none."""
    inputs = MlflowClient().get_run(run_id).inputs
    if inputs is None or not inputs.dataset_inputs:
        return "", ""
    dataset = inputs.dataset_inputs[0].dataset
    return dataset.name, dataset.digest


def skipped_configurations(study_run_id: str) -> dict[str, str]:
    """Configuration label -> why the study did not run it, from the study run's tags."""
    run_tags = MlflowClient().get_run(study_run_id).data.tags
    return {key.removeprefix(tags.SKIPPED_PREFIX): value for key, value in run_tags.items()
            if key.startswith(tags.SKIPPED_PREFIX)}
