"""The metric sink: explicit steps, values kept while the server is away, nothing on other ranks."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.sink import MetricSink, NullSink, metric_sink
from tests.conftest import free_port


def history(run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, name))


def test_epochs_are_logged_with_their_step_and_summaries_once(sqlite_tracking):
    with mlflow.start_run() as run:
        sink = metric_sink()
        sink.log_epoch(1, {"val_kappa": 0.25})
        sink.log_epoch(2, {"val_kappa": 0.5})
        sink.log_summary({"best_epoch": 2})
    assert isinstance(sink, MetricSink) and sink.run_id == run.info.run_id
    assert history(run.info.run_id, "val_kappa") == [(1, 0.25), (2, 0.5)]
    assert MlflowClient().get_run(run.info.run_id).data.metrics["best_epoch"] == 2


def test_values_wait_for_an_unreachable_server_and_arrive_in_order(sqlite_tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with mlflow.start_run() as run:
        pass
    sink = MetricSink(run.info.run_id)
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    sink.log_epoch(1, {"train_loss": 2.0})
    sink.log_epoch(2, {"train_loss": 1.5})
    assert sink.pending == 2 and sink.flush() is False
    mlflow.set_tracking_uri(sqlite_tracking)  # the server is back
    assert sink.flush() is True and sink.pending == 0
    assert history(run.info.run_id, "train_loss") == [(1, 2.0), (2, 1.5)]


def test_missing_epochs_of_an_interrupted_run_are_logged_once(sqlite_tracking):
    with mlflow.start_run() as run:
        sink = metric_sink()
        sink.log_epoch(1, {"val_loss": 1.0})
        # The crash came after epoch 2's checkpoint but before its metrics reached the server.
        sink.log_missing_epochs([{"val_loss": 1.0}, {"val_loss": 0.8}])
    assert history(run.info.run_id, "val_loss") == [(1, 1.0), (2, 0.8)]


def test_other_torchrun_ranks_get_a_sink_that_logs_nothing(sqlite_tracking, monkeypatch):
    with mlflow.start_run() as run:  # rank 0's run, active in this process for the test's sake
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        sink = metric_sink()
        sink.log_epoch(1, {"train_loss": 1.0})
        sink.log_summary({"best_epoch": 1})
    assert isinstance(sink, NullSink)
    assert MlflowClient().get_run(run.info.run_id).data.metrics == {}


def test_a_sink_needs_a_run_on_rank_0(sqlite_tracking):
    with pytest.raises(RuntimeError, match="inside runs.step_run"):
        metric_sink()
