"""A run's metrics: per-epoch values with their step, summary values, and a buffer for outages.

Training never waits for the tracking server: while it is away, the sink keeps the values (in
order) and sends them with the next call that gets through, or when asked to ``flush``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import mlflow
import requests
from mlflow.tracking import MlflowClient

from pipeline.distributed import context_from_env
from pipeline.errors import RetinaFlowError

log = logging.getLogger(__name__)

_SERVER_ERRORS = (mlflow.exceptions.MlflowException, OSError, requests.exceptions.RequestException)
RETRY_PAUSE_SECONDS = 2.0
# How long a step's final results wait for a tracking server that is away (a restart, say).
SUMMARY_WAIT_SECONDS = 300


@dataclass
class _Batch:
    values: dict[str, float]
    step: int | None
    model_id: str | None


@dataclass
class MetricSink:
    """Sends one run's metrics to MLflow; values the server did not take are kept and resent."""

    run_id: str
    _unsent: list[_Batch] = field(default_factory=list)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics, with step = epoch (counting from 1)."""
        self._send(_Batch({k: float(v) for k, v in metrics.items()}, epoch, None))

    def log_summary(self, metrics: dict[str, float], model_id: str | None = None) -> None:
        """Values that describe the whole run (best epoch, selected test metrics), optionally also
        attached to a logged model. A step's results: they wait for a server that is away, and the
        step fails, saying so, if it does not come back (a run must not end FINISHED without them)."""
        self._send(_Batch({k: float(v) for k, v in metrics.items()}, None, model_id))
        if not self.flush(wait_seconds=SUMMARY_WAIT_SECONDS):
            raise RetinaFlowError(f"the tracking server {mlflow.get_tracking_uri()} stayed unreachable for "
                                  f"{SUMMARY_WAIT_SECONDS} s and did not take this step's results; run it again "
                                  "once the server is back")

    def _send(self, batch: _Batch) -> None:
        self._unsent.append(batch)
        self.flush()

    @property
    def pending(self) -> int:
        """Batches the server has not taken yet."""
        return len(self._unsent)

    def flush(self, wait_seconds: float = 0.0) -> bool:
        """Sends the kept batches, oldest first; retries for up to ``wait_seconds``. True when none are left."""
        deadline = time.monotonic() + wait_seconds
        while self._unsent:
            batch = self._unsent[0]
            try:
                mlflow.log_metrics(batch.values, step=batch.step, model_id=batch.model_id, run_id=self.run_id)
            except _SERVER_ERRORS as exc:
                if time.monotonic() < deadline:
                    time.sleep(RETRY_PAUSE_SECONDS)
                    continue
                log.warning("the tracking server %s is unreachable (%s): training goes on, and %d metric "
                            "batch(es) are kept to send when it is back", mlflow.get_tracking_uri(),
                            str(exc).splitlines()[0][:200], len(self._unsent))
                return False
            self._unsent.pop(0)
        return True

    def log_missing_epochs(self, history: list[dict[str, float]]) -> None:
        """Logs the per-epoch values a crash kept from the run (checkpointed, not yet logged), once each."""
        client = MlflowClient()
        logged: dict[str, set[int]] = {}
        for epoch, metrics in enumerate(history, start=1):
            missing = {}
            for name, value in metrics.items():
                if name not in logged:
                    logged[name] = {m.step for m in client.get_metric_history(self.run_id, name)}
                if epoch not in logged[name]:
                    missing[name] = value
            if missing:
                log.warning("logging %d metric values of epoch %d that the interrupted run had not logged",
                            len(missing), epoch)
                self.log_epoch(epoch, missing)


class NullSink:
    """The sink of a process that logs nothing: torchrun ranks other than 0."""

    pending = 0

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_summary(self, metrics: dict[str, float], model_id: str | None = None) -> None:
        pass

    def flush(self, wait_seconds: float = 0.0) -> bool:
        return True

    def log_missing_epochs(self, history: list[dict[str, float]]) -> None:
        pass


def metric_sink() -> MetricSink | NullSink:
    """The active run's sink on rank 0 (or a single process); a sink that does nothing elsewhere."""
    if not context_from_env().is_main:
        return NullSink()
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("metric_sink() is for a step's run: call it inside runs.step_run(...)")
    return MetricSink(run.info.run_id)
