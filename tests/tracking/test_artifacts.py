"""Artifacts and the input dataset against a real server, as users share one."""

from __future__ import annotations

import threading

import mlflow
import pytest
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.tracking import artifacts
from tests.tracking.racing import RACERS, ROUNDS, run_at_once

pytestmark = pytest.mark.slow  # a real mlflow server


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
                artifacts.log_dataset(manifest, "/data/64px", "64px", "training")

        assert run_at_once(log_the_dataset) == []
        digests = {client.get_run(run_id).inputs.dataset_inputs[0].dataset.digest for run_id in run_ids}
        assert len(run_ids) == RACERS and len(digests) == 1


def test_a_description_too_long_for_the_registry_is_cut_at_a_section():
    from pipeline.tracking.registry import DESCRIPTION_LIMIT, fitted_description

    card = "# Card\n" + "".join(f"\n## Section {k}\n" + "x" * 900 for k in range(8))
    assert len(card) > DESCRIPTION_LIMIT
    cut = fitted_description(card, "The whole card is the artifact model_card.md.")
    assert len(cut) <= DESCRIPTION_LIMIT and cut.endswith("The whole card is the artifact model_card.md.\n")
    assert "## Section 4" in cut and "## Section 5" not in cut  # whole sections only
    assert fitted_description("short", "more") == "short"
