"""The ``evaluate`` step: a logged or registered model on the test split, with 95% CIs; and the
test-set evaluation that ``train`` logs for its selected model too."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.catalog import INTERVAL_METRICS
from pipeline.data.dataset import EvalPreset, FundusDataset, ProcessedDataset, make_loader
from pipeline.engine import predict_probabilities
from pipeline.figures import confusion_figure, figure_png, roc_figure
from pipeline.metrics import all_metrics, bootstrap_intervals, confusion_matrices
from pipeline.tracking import artifacts, registry, runs, tags
from pipeline.tracking.sink import metric_sink


def log_test_evaluation(targets: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, *, title: str,
                        prefix: str, resamples: int, seed: int) -> dict[str, float]:
    """Confusion matrices, every metric with its patient-level 95% bootstrap interval, and the ROC.

    Returns:
        The scalar metrics, named ``{prefix}{metric}`` and ``{prefix}{metric}_ci_low/high``.
    """
    matrices = confusion_matrices(targets, probabilities.argmax(axis=1))
    artifacts.log_dict(matrices, "confusion_matrix/test_confusion_matrix.json")
    artifacts.log_bytes(figure_png(confusion_figure(matrices, title)), "confusion_matrix/test_confusion_matrix.png")
    artifacts.log_bytes(figure_png(roc_figure(targets, probabilities)), "roc/test_referable_roc.png")
    metrics = all_metrics(targets, probabilities)
    intervals = bootstrap_intervals(targets, probabilities, groups=patients, n_resamples=resamples,
                                    seed=seed) if resamples else {}
    artifacts.log_dict({"metrics": metrics, "ci95": {k: list(v) for k, v in intervals.items()},
                        "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed},
                        "images": len(targets)}, "metrics/test_metrics.json")
    scalars = {f"{prefix}{name}": value for name, value in metrics.items()}
    for name in INTERVAL_METRICS:
        if name in intervals:
            scalars[f"{prefix}{name}_ci_low"], scalars[f"{prefix}{name}_ci_high"] = intervals[name]
    return scalars


def run_evaluate(model_ref: str, data_dir: str, batch_size: int = 32, num_workers: int = 0,
                 resamples: int = 1000) -> dict[str, float]:
    """Test metrics with 95% CIs of a logged or registered model, linked to the run that trained it."""
    uri = registry.model_uri_of(model_ref)
    loaded = registry.load_model(uri)
    runs.log_params({"model_uri": uri, "data_dir": data_dir, "batch_size": batch_size, "bootstrap_resamples": resamples})
    if loaded.source_run_id:
        runs.set_tags({tags.SOURCE_RUN: loaded.source_run_id})
    processed = ProcessedDataset(data_dir, loaded.image_size)
    test_rows = processed.split("test")
    test = FundusDataset(processed.root, test_rows, EvalPreset(loaded.image_size))
    loader = make_loader(test, batch_size, shuffle=False, num_workers=num_workers, seed=0)
    targets, probabilities = predict_probabilities(loaded.module, loader, torch.device("cpu"))
    test_metrics = log_test_evaluation(targets, probabilities, test_rows["patient"].to_numpy(),
                                       title=f"{uri}: test set", prefix="test_", resamples=resamples, seed=0)
    metric_sink().log_summary(test_metrics, model_id=loaded.model_id)
    return test_metrics
