"""Every link the project prints or writes opens the MLflow UI in Model training mode (an
experiment's page without the view would open its GenAI one: Traces, token usage)."""

from __future__ import annotations

import re

import mlflow

from pipeline.tracking import runs

MODEL_TRAINING = "?workflowType=machine_learning"


def test_each_link_builder_asks_for_model_training_mode(sqlite_tracking):
    runs.configure()
    with mlflow.start_run() as run:
        links = {
            "run_link": runs.run_link(),
            "run_url": runs.run_url(run.info.run_id),
            "artifact_url": runs.artifact_url(run.info.run_id, "model_card.md"),
            "model_version_url": runs.model_version_url("dr resnet", "3"),
            "tracking_ui_hint": re.search(r"open (\S+)$", runs.tracking_ui_hint()).group(1),
        }
    for name, link in links.items():
        assert link.endswith(MODEL_TRAINING) and link.count("?") == 1, (name, link)
    assert f"/runs/{run.info.run_id}/artifactPath/model_card.md{MODEL_TRAINING}" in links["artifact_url"]
    assert "/#/models/dr%20resnet/versions/3" in links["model_version_url"]
