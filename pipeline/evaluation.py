"""Metrics and confusion matrices from predictions, with scikit-learn doing the arithmetic."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # headless: entry points run on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import sklearn
from matplotlib.figure import Figure
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    RocCurveDisplay,
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from pipeline.data.eyepacs import NUM_GRADES

GRADES = list(range(NUM_GRADES))
GRADE_NAMES = ["0 none", "1 mild", "2 moderate", "3 severe", "4 prolif."]
# Moderate DR or worse is what screening programmes refer to an ophthalmologist.
REFERABLE_GRADE = 2

log = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def classification_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, quadratic weighted kappa (the EyePACS metric), balanced accuracy and macro-F1."""
    predictions = probabilities.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(targets, predictions)),
        "kappa": float(cohen_kappa_score(targets, predictions, labels=GRADES, weights="quadratic")),
        "balanced_accuracy": float(balanced_accuracy_score(targets, predictions)),
        "macro_f1": float(f1_score(targets, predictions, labels=GRADES, average="macro", zero_division=0)),
    }


def confusion_matrices(targets: np.ndarray, predictions: np.ndarray) -> dict[str, list]:
    """Counts and row-normalised (recall per true grade) matrices over all five grades."""
    counts = confusion_matrix(targets, predictions, labels=GRADES)
    normalized = confusion_matrix(targets, predictions, labels=GRADES, normalize="true")
    return {"labels": GRADES, "counts": counts.tolist(), "normalized": np.round(normalized, 4).tolist()}


def confusion_figure(matrices: dict[str, list], title: str) -> Figure:
    """Counts and row-normalised matrices side by side."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    ConfusionMatrixDisplay(np.array(matrices["counts"]), display_labels=GRADE_NAMES).plot(
        ax=left, cmap="Blues", colorbar=False, values_format="d")
    left.set_title("counts")
    ConfusionMatrixDisplay(np.array(matrices["normalized"]), display_labels=GRADE_NAMES).plot(
        ax=right, cmap="Blues", colorbar=False, values_format=".2f")
    right.set_title("normalised by true grade")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=30)
    figure.suptitle(title)
    return figure


def referable_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(grade >= REFERABLE_GRADE) per image: the softmax mass of the referable grades."""
    return probabilities[:, REFERABLE_GRADE:].sum(axis=1)


def _referable_auc(referable: np.ndarray, scores: np.ndarray) -> float:
    # AUC is undefined with a single class, or when a diverging model output non-finite scores;
    # NaN lets bootstrap resamples without one class drop out.
    if np.unique(referable).size < 2 or not np.isfinite(scores).all():
        return float("nan")
    return float(roc_auc_score(referable, scores))


def referable_metrics(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Referable DR (grade >= 2) as a binary screening decision.

    Args:
        targets: true grades, shape (N,).
        probabilities: softmax rows, shape (N, 5).
        threshold: an image is called referable when P(grade >= 2) >= threshold.

    Returns:
        ``referable_sensitivity``, ``referable_specificity`` (NaN when there are no referable,
        resp. no non-referable, images) and ``referable_auc`` (NaN when only one class is present).
    """
    referable = (np.asarray(targets) >= REFERABLE_GRADE).astype(int)
    scores = referable_probability(probabilities)
    called = (scores >= threshold).astype(int)
    # Specificity is the recall of the negative class: one call gives both (the bootstrap calls this
    # a thousand times, and sklearn's per-call validation is what costs).
    specificity, sensitivity = recall_score(referable, called, labels=[0, 1], average=None, zero_division=np.nan)
    return {
        "referable_sensitivity": float(sensitivity),
        "referable_specificity": float(specificity),
        "referable_auc": _referable_auc(referable, scores),
    }


def per_grade_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """``precision_grade_{k}`` and ``recall_grade_{k}`` for every grade; 0 where undefined."""
    precision, recall, _, _ = precision_recall_fscore_support(
        targets, probabilities.argmax(axis=1), labels=GRADES, zero_division=0)
    metrics: dict[str, float] = {}
    for grade in GRADES:
        metrics[f"precision_grade_{grade}"] = float(precision[grade])
        metrics[f"recall_grade_{grade}"] = float(recall[grade])
    return metrics


def all_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Grading, referable-DR and per-grade metrics in one flat dict (what MLflow logs)."""
    return (classification_metrics(targets, probabilities)
            | referable_metrics(targets, probabilities)
            | per_grade_metrics(targets, probabilities))


def _resample_weights(groups: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each image appears in each resample, shape (n_resamples, N).

    Whole groups are drawn with replacement, so images sharing a group always appear equally often.
    """
    _, codes = np.unique(groups, return_inverse=True)
    n_groups = int(codes.max()) + 1
    picks = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    # One bincount over all resamples at once: offset each row into its own block of bins.
    offsets = np.arange(n_resamples)[:, None] * n_groups
    group_counts = np.bincount((picks + offsets).ravel(), minlength=n_resamples * n_groups)
    return group_counts.reshape(n_resamples, n_groups)[:, codes]


def bootstrap_intervals(targets: np.ndarray, probabilities: np.ndarray, *, groups: np.ndarray | None = None,
                        n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                        metric_fn: MetricFn = all_metrics) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals for every metric ``metric_fn`` returns.

    Args:
        targets: true grades, shape (N,).
        probabilities: softmax rows, shape (N, 5).
        groups: optional patient id per image; whole patients are resampled so that the two
            (correlated) eyes of a patient are in or out together, which keeps intervals honest.
        n_resamples: number of bootstrap resamples.
        seed: seed of the numpy generator; the same seed gives the same intervals.
        confidence: coverage of the two-sided interval.
        metric_fn: ``(targets, probabilities) -> {name: value}``.

    Returns:
        ``{name: (low, high)}``; resamples where a metric is NaN (e.g. AUC without positives) are
        left out for that metric only, and a metric NaN in every resample gets ``(nan, nan)``.
    """
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    if len(targets) != len(probabilities) or len(targets) == 0:
        raise ValueError(f"need as many targets as probability rows, and at least one: "
                         f"{len(targets)} targets, {len(probabilities)} rows")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if groups is None:
        groups = np.arange(len(targets))
    elif len(groups) != len(targets):
        raise ValueError(f"groups has {len(groups)} entries for {len(targets)} images")

    # A first call on the full sample lets sklearn validate the inputs once, with its checks on.
    names = list(metric_fn(targets, probabilities))
    weights = _resample_weights(np.asarray(groups), n_resamples, np.random.default_rng(seed))
    image_ids = np.arange(len(targets))
    values: dict[str, list[float]] = {name: [] for name in names}
    # Resamples hold the same (already validated) values, and sklearn's per-call argument and
    # finiteness checks would otherwise be most of the run time.
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True), warnings.catch_warnings():
        # Small resamples may lack a grade or a class; those values are NaN and dropped below.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        for row in weights:
            chosen = np.repeat(image_ids, row)
            for name, value in metric_fn(targets[chosen], probabilities[chosen]).items():
                values.setdefault(name, []).append(value)

    tail = (1 - confidence) / 2 * 100
    intervals: dict[str, tuple[float, float]] = {}
    for name, samples in values.items():
        finite = np.asarray(samples, dtype=float)
        finite = finite[~np.isnan(finite)]
        if finite.size == 0:
            intervals[name] = (float("nan"), float("nan"))
            continue
        if finite.size < len(samples):
            log.debug("%s: %d of %d resamples undefined, left out", name, len(samples) - finite.size, len(samples))
        low, high = np.percentile(finite, [tail, 100 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def roc_figure(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> Figure:
    """Referable-DR ROC curve with its AUC and the operating point at ``threshold`` marked."""
    referable = (np.asarray(targets) >= REFERABLE_GRADE).astype(int)
    scores = referable_probability(probabilities)
    point = referable_metrics(targets, probabilities, threshold)
    figure, axis = plt.subplots(figsize=(6, 5.5), layout="constrained")
    axis.set_title(f"Referable DR (grade ≥ {REFERABLE_GRADE}) ROC, {len(referable)} images")
    if np.isnan(point["referable_auc"]):
        # A tiny test split may hold one class only; a report should say so rather than fail.
        axis.text(0.5, 0.5, "ROC undefined:\nall images are " + ("referable" if referable.all() else "non-referable"),
                  ha="center", va="center", transform=axis.transAxes)
        return figure
    RocCurveDisplay.from_predictions(referable, scores, name="referable DR", ax=axis,
                                     plot_chance_level=True, chance_level_kw={"color": "0.6"})
    axis.plot(1 - point["referable_specificity"], point["referable_sensitivity"], "o", color="tab:red",
              markersize=8, zorder=3,
              label=(f"threshold {threshold:g}: sens {point['referable_sensitivity']:.2f}, "
                     f"spec {point['referable_specificity']:.2f}"))
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.legend(loc="lower right")
    return figure


def confusion_grid_figure(matrices_by_config: dict[str, dict]) -> Figure:
    """One row per configuration (counts | normalised), from ``confusion_matrices()`` dicts."""
    if not matrices_by_config:
        raise ValueError("confusion_grid_figure needs at least one configuration")
    rows = len(matrices_by_config)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 4.8 * rows), layout="constrained", squeeze=False)
    for (label, matrices), (left, right) in zip(matrices_by_config.items(), axes):
        ConfusionMatrixDisplay(np.array(matrices["counts"]), display_labels=GRADE_NAMES).plot(
            ax=left, cmap="Blues", colorbar=False, values_format="d")
        left.set_title(f"{label}: counts")
        ConfusionMatrixDisplay(np.array(matrices["normalized"]), display_labels=GRADE_NAMES).plot(
            ax=right, cmap="Blues", colorbar=False, values_format=".2f", im_kw={"vmin": 0, "vmax": 1})
        right.set_title(f"{label}: normalised by true grade")
        for axis in (left, right):
            axis.tick_params(axis="x", labelrotation=30)
    return figure


def epoch_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """What is logged per epoch besides loss and accuracy: kappa, balanced accuracy, macro-F1, referable DR."""
    metrics = classification_metrics(targets, probabilities) | referable_metrics(targets, probabilities)
    metrics.pop("accuracy")
    return metrics
