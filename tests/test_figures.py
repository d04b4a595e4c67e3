"""Every figure: the panels, titles and marks a reader relies on (the numbers come from ``metrics``)."""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.catalog import Configuration
from pipeline.figures import (
    reliability_figure,
    confusion_figure,
    confusion_grid_figure,
    curves_figure,
    figure_png,
    gradcam_figure,
    roc_figure,
)
from pipeline.metrics import confusion_matrices
from tests.test_compare import record
from tests.test_gradcam import SIZE, fundus_batch
from tests.test_metrics import P_REFERABLE, REFERABLE_TARGETS, with_referable_mass


def test_figure_png_gives_png_bytes_and_closes_the_figure():
    figure, axis = plt.subplots()
    axis.plot([0, 1])
    png = figure_png(figure)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert not plt.fignum_exists(figure.number)
    assert Image.open(io.BytesIO(png)).size[0] > 100


def test_confusion_figure_has_both_panels():
    figure = confusion_figure(confusion_matrices(np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2, 3, 3])), "t")
    titles = [axis.get_title() for axis in figure.axes]
    assert "counts" in titles and "normalised by true grade" in titles
    plt.close(figure)


def test_roc_figure_marks_the_operating_point():
    figure = roc_figure(REFERABLE_TARGETS, with_referable_mass(P_REFERABLE), threshold=0.5)
    (axis,) = figure.axes
    assert "Referable DR" in axis.get_title()
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert any("AUC = 0.91" in text for text in legend)  # 14.5/16 = 0.906
    (point,) = [line for line in axis.get_lines() if line.get_label().startswith("threshold 0.5")]
    # Operating point: (1 - specificity, sensitivity) = (1/4, 3/4) from the hand-worked example.
    assert (point.get_xdata()[0], point.get_ydata()[0]) == pytest.approx((0.25, 0.75))
    assert "sensitivity" in axis.get_ylabel() and "specificity" in axis.get_xlabel()
    plt.close(figure)


def test_roc_figure_with_a_single_class_says_so():
    figure = roc_figure(np.array([0, 1, 0]), with_referable_mass(np.array([0.1, 0.6, 0.2])))
    (axis,) = figure.axes
    assert any("undefined" in text.get_text() for text in axis.texts)
    plt.close(figure)


def test_confusion_grid_has_a_row_per_configuration():
    targets = np.array([0, 1, 2, 3, 4, 4])
    matrices = {label: confusion_matrices(targets, predictions) for label, predictions in
                [("resnet18 scratch", np.array([0, 1, 2, 3, 4, 3])), ("resnet18 pretrained", targets),
                 ("resnet50 pretrained", np.array([0, 0, 2, 2, 4, 4]))]}
    figure = confusion_grid_figure(matrices)
    assert len(figure.axes) == 6
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == [f"{label}: {kind}" for label in matrices for kind in ("counts", "normalised by true grade")]
    rows = sorted({round(axis.get_position().y0, 3) for axis in figure.axes})
    assert len(rows) == 3  # laid out as three rows, not one strip
    plt.close(figure)
    with pytest.raises(ValueError):
        confusion_grid_figure({})


def test_curves_figure_one_panel_per_depth():
    records = [record("resnet18", True, [0.5, 0.6], [0.4, 0.5]), record("resnet50", False, [0.5, 0.7], [0.5, 0.6])]
    configurations = [Configuration(m, p) for m in ("resnet18", "resnet50") for p in (True, False)]
    figure = curves_figure(records, configurations, ("train_accuracy", "test_accuracy"), "accuracy")
    assert [axis.get_title() for axis in figure.axes] == ["resnet18", "resnet50"]
    assert len(figure.axes[0].lines) == 2 and len(figure.axes[1].lines) == 2
    plt.close(figure)


def test_gradcam_figure_grid():
    images = fundus_batch([0, 0, 4, 4])
    heatmaps = torch.rand(4, SIZE, SIZE)
    titles = ["grade 0 a", "grade 0 b", "grade 4 a", "grade 4 b"]
    figure = gradcam_figure(images, heatmaps, titles, columns=2)
    panels = [axis for axis in figure.axes if axis.get_title()]
    assert [axis.get_title() for axis in panels] == titles
    assert all(len(axis.get_images()) == 2 for axis in panels)  # photo + blended heatmap
    assert len({round(axis.get_position().y0, 3) for axis in panels}) == 2  # one row per grade
    plt.close(figure)
    with pytest.raises(ValueError):
        gradcam_figure(images, heatmaps[:3], titles)


def test_a_referable_probability_one_rounding_error_above_1_still_draws():
    """P(grade >= 2) is a sum of probabilities: 0.8000192733557423 + 0.1999807266442528 + 5.04e-15
    is 1.0000000000000002 in floats (a demo's calibrated ResNet50 met one), which sklearn's
    calibration curve refuses."""
    row = [1.69e-29, 1.84e-32, 0.8000192733557423, 0.1999807266442528, 5.0399268034791476e-15]
    probabilities = np.array([row, [0.7, 0.1, 0.1, 0.05, 0.05], [0.1, 0.1, 0.2, 0.3, 0.3], [0.5, 0.3, 0.1, 0.05, 0.05]])
    assert probabilities[0, 2:].sum() > 1.0
    figure = reliability_figure(np.array([2, 0, 4, 1]), probabilities, probabilities, "t")
    assert len(figure.axes[1].lines) == 3  # the diagonal, uncalibrated and calibrated curves
    plt.close(figure)
