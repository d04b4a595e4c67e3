"""Metrics and confusion matrices from predictions, with scikit-learn doing the arithmetic."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: entry points run on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
)

from pipeline.data.eyepacs import NUM_GRADES

GRADES = list(range(NUM_GRADES))
GRADE_NAMES = ["0 none", "1 mild", "2 moderate", "3 severe", "4 prolif."]


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
