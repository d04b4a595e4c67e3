"""A train run with the field's recipe: its decision is fitted on validation, logged with the run,
carried by the grader, and evaluate decides exactly as train's selected-model metrics did."""

import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import evaluate as evaluate_cli
from pipeline.cli import train as train_cli
from pipeline.tracking import registry

FIELD_RECIPE = ["--head", "ordinal", "--decision", "kappa_thresholds", "--fuse_eyes", "true", "--tta", "flips",
                "--optimizer", "adamw", "--lr_schedule", "cosine", "--warmup_epochs", "1", "--lr", "0.003"]


pytestmark = pytest.mark.slow  # a training and an evaluation, ~10 s


def test_the_field_recipes_decision_travels_with_its_grader(sqlite_tracking, processed_dir, tmp_path):
    assert train_cli.main(["--data_dir", str(processed_dir), "--image_size", "32", "--epochs", "2",
                           "--batch_size", "8", "--num_workers", "0", "--bootstrap_resamples", "0",
                           "--precision", "fp32", "--checkpoint_artifact", "false",
                           "--checkpoint_dir", str(tmp_path / "checkpoints"), *FIELD_RECIPE]) == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    metrics, params = run.data.metrics, run.data.params
    assert run.info.status == "FINISHED"
    assert (params["head"], params["decision"], params["fuse_eyes"]) == ("ordinal", "kappa_thresholds", "true")
    thresholds = [metrics[f"threshold_{k}"] for k in range(1, 5)]
    spec = registry.load_model(run.data.tags["retina_flow.model_uri"]).grader.spec
    assert spec.head == "ordinal" and spec.tta == "flips"
    assert spec.fuse_weight == metrics["fuse_weight"] and 0 <= spec.fuse_weight <= 0.5
    if spec.cut_points is None:  # validation kept argmax: the run says so with NaN thresholds
        assert all(math.isnan(t) for t in thresholds)
    else:
        assert list(spec.cut_points) == pytest.approx(thresholds) and thresholds == sorted(thresholds)
    assert [h.value for h in client.get_metric_history(run.info.run_id, "lr")] == pytest.approx([0.0015, 0.003])

    # evaluate, from the logged grader and the processed cache, decides as train's selected model did
    assert evaluate_cli.main(["--model_uri", run.info.run_id, "--data_dir", str(processed_dir),
                              "--bootstrap_resamples", "0"]) == 0
    evaluation = next(r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id)
    for name in ("accuracy", "kappa", "referable_auc", "referable_sensitivity", "referable_specificity"):
        expected, got = run.data.metrics[f"selected_test_{name}"], evaluation.data.metrics[f"test_{name}"]
        assert got == pytest.approx(expected, abs=1e-6) or (np.isnan(got) and np.isnan(expected)), name
