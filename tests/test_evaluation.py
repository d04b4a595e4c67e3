import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pipeline.evaluation import classification_metrics, confusion_figure, confusion_matrices


def one_hot(predictions):
    probabilities = np.full((len(predictions), 5), 0.01)
    probabilities[np.arange(len(predictions)), predictions] = 0.96
    return probabilities


def test_confusion_matrices_worked_by_hand():
    targets = np.array([0, 0, 0, 2, 2, 4])
    predictions = np.array([0, 0, 2, 2, 0, 4])
    matrices = confusion_matrices(targets, predictions)
    counts = np.zeros((5, 5), int)
    counts[0, 0], counts[0, 2], counts[2, 2], counts[2, 0], counts[4, 4] = 2, 1, 1, 1, 1
    assert matrices["counts"] == counts.tolist()
    assert matrices["labels"] == [0, 1, 2, 3, 4]
    assert matrices["normalized"][0] == pytest.approx([2 / 3, 0, 1 / 3, 0, 0], abs=1e-4)
    assert matrices["normalized"][1] == [0, 0, 0, 0, 0]  # no grade-1 images: a zero row, not NaN
    json.dumps(matrices)  # logged as JSON as is


def test_metrics_worked_by_hand():
    targets = np.array([0, 0, 1, 2])
    predictions = np.array([0, 1, 1, 0])
    metrics = classification_metrics(targets, one_hot(predictions))
    assert metrics["accuracy"] == 0.5
    # Quadratic weights w_ij = (i-j)^2 / 16 over 5 grades. Observed disagreement: (0,1) w=1/16,
    # (2,0) w=4/16 -> sum 5/16, /4 images = 5/64. Expected from marginals true (2,1,1) x pred (2,2,0):
    # sum_ij p_i q_j w_ij = [2*2*0 + 2*2*1 + 1*2*1 + 1*2*0 + 1*2*4 + 1*2*1] / 16 / 16 = 16/256 = 1/16.
    assert metrics["kappa"] == pytest.approx(1 - (5 / 64) / (1 / 16))
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_confusion_figure_has_both_panels():
    figure = confusion_figure(confusion_matrices(np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2, 3, 3])), "t")
    titles = [axis.get_title() for axis in figure.axes]
    assert "counts" in titles and "normalised by true grade" in titles
    plt.close(figure)
