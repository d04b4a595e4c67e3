"""The ``evaluate`` step: a logged or registered grader on the test split, with 95% CIs and its
per-image predictions; and the evaluation of a split that ``train`` logs for its selected model.

The grading metrics are the gradable photos' (the grader answers no others), and for comparison
also all photos' (``*_all_*``); ``*_ungradable_fraction`` says how many it refused. Calibration is
measured before (``*_uncalibrated_*``) and after the grader's temperature, on each gradable eye alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.catalog import INTERVAL_METRICS
from pipeline.data.dataset import EvalPreset, FundusDataset, ProcessedDataset, make_loader
from pipeline.data.quality import QUALITY_MEASURES
from pipeline.decision import predicted_grades
from pipeline.errors import DataError
from pipeline.figures import confusion_figure, figure_png, reliability_figure, roc_figure
from pipeline.grading import Grader, Judged
from pipeline.metrics import calibration_with_intervals, confusion_matrices, metrics_with_intervals
from pipeline.tracking import artifacts, registry, runs, tags
from pipeline.tracking.sink import metric_sink

TEST_PREDICTIONS = "predictions/test_predictions.csv"
# An optional manifest column: the dataset's own gradability labels (true/false), against which the
# grader's refusals are scored.
GRADABLE_LABEL = "gradable"


def metric_scalars(metrics: dict[str, float], intervals: dict[str, tuple[float, float]], prefix: str
                   ) -> dict[str, float]:
    """``{prefix}{metric}`` for every metric, and ``{prefix}{metric}_ci_low/high`` where intervals exist."""
    scalars = {f"{prefix}{name}": value for name, value in metrics.items()}
    for name in INTERVAL_METRICS:
        if name in intervals:
            scalars[f"{prefix}{name}_ci_low"], scalars[f"{prefix}{name}_ci_high"] = intervals[name]
    return scalars


def split_metrics(grader: Grader, targets: np.ndarray, uncalibrated: np.ndarray, judged: Judged, patients: np.ndarray,
                  *, prefix: str, resamples: int, seed: int, labels: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one split, named ``{prefix}...`` (see the module's docstring).

    Args:
        uncalibrated: the network's probabilities before the grader's temperature.
        judged: the grader's view of the photos (calibrated probabilities, reasons).
        labels: the dataset's own gradable (True) / ungradable (False) labels, where it has them.
    """
    spec, gradable = grader.spec, judged.gradable
    scalars: dict[str, float] = {f"{prefix}ungradable_fraction": float(1 - gradable.mean()) if len(gradable) else 0.0}
    graded: tuple[dict[str, float], dict[str, tuple[float, float]]] = ({}, {})
    if gradable.any():
        graded = metrics_with_intervals(
            targets[gradable], grader.fused(judged.probabilities, patients, gradable)[gradable], patients[gradable],
            threshold=spec.referable_threshold, resamples=resamples, seed=seed, cut_points=spec.cut_points)
        for name, probabilities in (("", judged.probabilities), ("uncalibrated_", uncalibrated)):
            scalars |= metric_scalars(*calibration_with_intervals(
                targets[gradable], probabilities[gradable], patients[gradable], resamples=resamples, seed=seed),
                prefix=f"{prefix}{name}")
    scalars |= metric_scalars(*graded, prefix=prefix)
    # Every photo graded: the same photos, the same figures (a bootstrap of them all costs ~10 s).
    everyone = graded if gradable.all() else metrics_with_intervals(
        targets, grader.fused(judged.probabilities, patients), patients, threshold=spec.referable_threshold,
        resamples=resamples, seed=seed, cut_points=spec.cut_points)
    scalars |= metric_scalars(*everyone, prefix=f"{prefix}all_")
    if labels is not None:
        labels = np.asarray(labels, dtype=bool)
        # The check as a detector of ungradable photos: how many of those it refused, and how many
        # gradable ones it let through.
        scalars[f"{prefix}ungradable_sensitivity"] = float((~gradable[~labels]).mean()) if (~labels).any() else np.nan
        scalars[f"{prefix}ungradable_specificity"] = float(gradable[labels].mean()) if labels.any() else np.nan
    return scalars


def log_split_figures(grader: Grader, targets: np.ndarray, uncalibrated: np.ndarray, judged: Judged,
                      patients: np.ndarray, *, title: str, split: str, metrics: dict[str, float], resamples: int,
                      seed: int) -> None:
    """The gradable photos' confusion matrices, referable ROC with the operating point and
    reliability diagram, and every metric in ``metrics/{split}_metrics.json``."""
    gradable = judged.gradable
    probabilities = grader.fused(judged.probabilities, patients, gradable)[gradable]
    if gradable.any():
        _log_gradable_figures(grader, targets[gradable], probabilities, uncalibrated[gradable],
                              judged.probabilities[gradable], title=title, split=split)
    artifacts.log_dict({"metrics": metrics, "referable_threshold": grader.spec.referable_threshold,
                        "temperature": grader.spec.temperature,
                        "cut_points": None if grader.spec.cut_points is None else list(grader.spec.cut_points),
                        "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed},
                        "images": len(targets), "gradable_images": int(gradable.sum())}, f"metrics/{split}_metrics.json")


def _log_gradable_figures(grader: Grader, targets: np.ndarray, probabilities: np.ndarray, uncalibrated: np.ndarray,
                          calibrated: np.ndarray, *, title: str, split: str) -> None:
    """``log_split_figures``' figures of the gradable photos (``probabilities`` fused where the
    grader fuses eyes, ``calibrated`` each eye alone)."""
    matrices = confusion_matrices(targets, predicted_grades(probabilities, grader.spec.cut_points))
    artifacts.log_dict(matrices, f"confusion_matrix/{split}_confusion_matrix.json")
    artifacts.log_bytes(figure_png(confusion_figure(matrices, title)), f"confusion_matrix/{split}_confusion_matrix.png")
    artifacts.log_bytes(figure_png(roc_figure(targets, probabilities, grader.spec.referable_threshold)),
                        f"roc/{split}_referable_roc.png")
    artifacts.log_bytes(figure_png(reliability_figure(
        targets, uncalibrated, calibrated, f"{title}: calibration at temperature {grader.spec.temperature:.3f}")),
        f"calibration/{split}_reliability.png")


def run_evaluate(model_ref: str, data_dir: str, batch_size: int = 32, num_workers: int = 0,
                 resamples: int = 1000) -> dict[str, float]:
    """Test metrics with 95% CIs of a logged or registered grader, linked to the run that trained it.

    Also logs every test image's prediction (predict's columns plus the true ``grade``) as
    ``predictions/test_predictions.csv``. A grader that fuses eyes blends each gradable test photo
    with its gradable fellow eye's (same patient) before deciding, as it did on validation.
    """
    uri = registry.model_uri_of(model_ref)
    loaded = registry.load_model(uri)
    grader, spec = loaded.grader, loaded.grader.spec
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
    targets, uncalibrated, features = grader.outputs_of(loader, calibrated=False)
    judged = grader.judge(grader.calibrated(uncalibrated), features, measures_of(processed, test_rows))
    patients = test_rows["patient"].to_numpy()
    predictions = pd.concat([test_rows[["id"]], grader.decide(judged, patients)], axis=1)
    predictions["grade"] = targets
    artifacts.log_text(predictions.to_csv(index=False, float_format="%.6f"), TEST_PREDICTIONS)
    labels = gradable_labels(processed, test_rows)
    test_metrics = split_metrics(grader, targets, uncalibrated, judged, patients, prefix="test_", resamples=resamples,
                                 seed=0, labels=labels)
    log_split_figures(grader, targets, uncalibrated, judged, patients, title=f"{uri}: test set", split="test",
                      metrics=test_metrics, resamples=resamples, seed=0)
    test_metrics["referable_threshold"] = spec.referable_threshold
    metric_sink().log_summary(test_metrics, model_id=loaded.model_id)
    return test_metrics


def gradable_labels(processed: ProcessedDataset, rows: pd.DataFrame) -> np.ndarray | None:
    """The dataset's own gradability labels of ``rows`` (``GRADABLE_LABEL``), where it has them.

    Raises:
        DataError: naming a value that is no true/false.
    """
    if GRADABLE_LABEL not in rows.columns:
        return None
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    labels = []
    for value in rows[GRADABLE_LABEL]:
        label = words.get(str(value).strip().lower())
        if label is None:
            raise DataError(f"{processed.root / 'manifest.csv'}: '{GRADABLE_LABEL}' value {value!r} is neither true nor false")
        labels.append(label)
    return np.array(labels, dtype=bool)


def measures_of(processed: ProcessedDataset, rows: pd.DataFrame) -> np.ndarray:
    """The quality measures the manifest recorded for ``rows`` (``QUALITY_MEASURES`` order).

    Raises:
        DataError: for a processed dataset from before they were recorded.
    """
    missing = [name for name in QUALITY_MEASURES if name not in rows.columns]
    if missing:
        raise DataError(f"{processed.root} records no photo quality ({', '.join(missing)}): it was preprocessed by an "
                        "older retina-flow; run preprocess again")
    return rows[list(QUALITY_MEASURES)].to_numpy(dtype=np.float64)
