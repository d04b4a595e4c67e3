"""The ``evaluate`` step: a logged or registered grader on the test split, with 95% CIs and its
per-image predictions; and the test-set evaluation that ``train`` logs for its selected model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.catalog import INTERVAL_METRICS
from pipeline.data.dataset import EvalPreset, FundusDataset, ProcessedDataset, make_loader
from pipeline.decision import CutPoints, predicted_grades
from pipeline.errors import DataError
from pipeline.figures import confusion_figure, figure_png, roc_figure
from pipeline.metrics import confusion_matrices, metrics_with_intervals
from pipeline.tracking import artifacts, registry, runs, tags
from pipeline.tracking.sink import metric_sink

TEST_PREDICTIONS = "predictions/test_predictions.csv"


def metric_scalars(metrics: dict[str, float], intervals: dict[str, tuple[float, float]], prefix: str
                   ) -> dict[str, float]:
    """``{prefix}{metric}`` for every metric, and ``{prefix}{metric}_ci_low/high`` where intervals exist."""
    scalars = {f"{prefix}{name}": value for name, value in metrics.items()}
    for name in INTERVAL_METRICS:
        if name in intervals:
            scalars[f"{prefix}{name}_ci_low"], scalars[f"{prefix}{name}_ci_high"] = intervals[name]
    return scalars


def log_test_evaluation(targets: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, *, title: str,
                        prefix: str, threshold: float, resamples: int, seed: int,
                        cut_points: CutPoints | None = None) -> dict[str, float]:
    """Confusion matrices, every metric with its patient-level 95% bootstrap interval, and the ROC
    with the operating point (referable when P(grade >= 2) >= ``threshold``). Grades are argmax's,
    or those of ``cut_points`` on the expected grade.

    Returns:
        The scalar metrics, named ``{prefix}{metric}`` and ``{prefix}{metric}_ci_low/high``.
    """
    matrices = confusion_matrices(targets, predicted_grades(probabilities, cut_points))
    artifacts.log_dict(matrices, "confusion_matrix/test_confusion_matrix.json")
    artifacts.log_bytes(figure_png(confusion_figure(matrices, title)), "confusion_matrix/test_confusion_matrix.png")
    artifacts.log_bytes(figure_png(roc_figure(targets, probabilities, threshold)), "roc/test_referable_roc.png")
    metrics, intervals = metrics_with_intervals(targets, probabilities, patients, threshold=threshold,
                                                resamples=resamples, seed=seed, cut_points=cut_points)
    artifacts.log_dict({"metrics": metrics, "ci95": {k: list(v) for k, v in intervals.items()},
                        "referable_threshold": threshold, "cut_points": None if cut_points is None else list(cut_points),
                        "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed},
                        "images": len(targets)}, "metrics/test_metrics.json")
    return metric_scalars(metrics, intervals, prefix)


def run_evaluate(model_ref: str, data_dir: str, batch_size: int = 32, num_workers: int = 0,
                 resamples: int = 1000) -> dict[str, float]:
    """Test metrics with 95% CIs of a logged or registered grader, linked to the run that trained it.

    Also logs every test image's prediction (predict's columns plus the true ``grade``) as
    ``predictions/test_predictions.csv``. A grader that fuses eyes blends each test photo with its
    fellow eye's (same patient) before deciding, as it did on validation.
    """
    uri = registry.model_uri_of(model_ref)
    loaded = registry.load_model(uri)
    spec = loaded.grader.spec
    runs.log_params({"model_uri": uri, "data_dir": data_dir, "batch_size": batch_size, "bootstrap_resamples": resamples})
    if loaded.source_run_id:
        runs.set_tags({tags.SOURCE_RUN: loaded.source_run_id})
    # The grader's own kind of cache; a dataset folder of another enhancement is refused.
    processed = ProcessedDataset(data_dir, spec.cache_size, spec.enhance)
    if processed.image_size != spec.cache_size:
        # The grader sees photos through the cache it learnt from; another cache gives other pixels.
        raise DataError(f"{uri} was trained on the {spec.cache_size} px cache, but {data_dir} has "
                        f"{processed.image_size} px; run preprocess with image_size={spec.cache_size}")
    test_rows = processed.split("test")
    test = FundusDataset(processed.root, test_rows, EvalPreset(spec.image_size))
    loader = make_loader(test, batch_size, shuffle=False, num_workers=num_workers, seed=0)
    targets, probabilities = loaded.grader.probabilities_of(loader)
    patients = test_rows["patient"].to_numpy()
    probabilities = loaded.grader.fused(probabilities, patients)
    predictions = pd.concat([test_rows[["id"]], loaded.grader.decide(probabilities)], axis=1)
    predictions["grade"] = targets
    artifacts.log_text(predictions.to_csv(index=False, float_format="%.6f"), TEST_PREDICTIONS)
    test_metrics = log_test_evaluation(targets, probabilities, patients, title=f"{uri}: test set", prefix="test_",
                                       threshold=spec.referable_threshold, resamples=resamples, seed=0,
                                       cut_points=spec.cut_points)
    test_metrics["referable_threshold"] = spec.referable_threshold
    metric_sink().log_summary(test_metrics, model_id=loaded.model_id)
    return test_metrics
