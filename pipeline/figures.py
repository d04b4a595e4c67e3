"""Every figure the project draws, as matplotlib Figures: confusion matrices, the referable-DR ROC,
the labs' per-epoch curves and Grad-CAM panels. Plotting only: the numbers come from ``metrics``
(or are read back by ``tracking``), and ``figure_png`` turns a figure into the bytes that get logged.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: entry points run on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from pipeline.catalog import DEFAULT_REFERABLE_THRESHOLD, GRADE_NAMES, LAB_RECIPE, REFERABLE_GRADE, Configuration  # noqa: E402
from pipeline.metrics import (  # noqa: E402
    CALIBRATION_BINS,
    expected_calibration_error,
    referable_metrics,
    referable_probability,
    referable_targets,
)
from pipeline.records import TrainRunRecord  # noqa: E402


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes; the figure is closed so long report runs do not pile them up."""
    buffer = io.BytesIO()
    try:
        # Every figure is laid out "constrained", so it fits its canvas: no second, "tight" draw.
        fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _draw_matrices(left, right, matrices: dict[str, list], label: str = "") -> None:
    """Counts on ``left``, row-normalised recall per true grade on ``right`` (on a fixed 0-1 scale)."""
    prefix = f"{label}: " if label else ""
    ConfusionMatrixDisplay(np.array(matrices["counts"]), display_labels=GRADE_NAMES).plot(
        ax=left, cmap="Blues", colorbar=False, values_format="d")
    left.set_title(f"{prefix}counts")
    ConfusionMatrixDisplay(np.array(matrices["normalized"]), display_labels=GRADE_NAMES).plot(
        ax=right, cmap="Blues", colorbar=False, values_format=".2f", im_kw={"vmin": 0, "vmax": 1})
    right.set_title(f"{prefix}normalised by true grade")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=30)


def confusion_figure(matrices: dict[str, list], title: str) -> Figure:
    """Counts and row-normalised matrices side by side, from a ``metrics.confusion_matrices()`` dict."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    _draw_matrices(left, right, matrices)
    figure.suptitle(title)
    return figure


def roc_figure(targets: np.ndarray, probabilities: np.ndarray,
               threshold: float = DEFAULT_REFERABLE_THRESHOLD) -> Figure:
    """Referable-DR ROC curve with its AUC and the operating point at ``threshold`` marked."""
    referable = referable_targets(targets)
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


def reliability_figure(targets: np.ndarray, uncalibrated: np.ndarray, calibrated: np.ndarray, title: str) -> Figure:
    """Reliability diagrams, before and after calibration: the share of photos whose argmax grade is
    right against their top grade's probability, and the share of referable eyes against
    P(grade >= 2), over equal-mass bins (the ECE's), with each curve's ECE."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    targets = np.asarray(targets)
    panels = (("top grade's probability", "share graded right (argmax)",
               lambda p: (p.argmax(axis=1) == targets, p.max(axis=1))),
              (f"P(grade >= {REFERABLE_GRADE})", "share referable",
               lambda p: (referable_targets(targets), referable_probability(p))))
    for axis, (xlabel, ylabel, outcome_and_confidence) in zip(axes, panels):
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
        for name, probabilities, style in (("uncalibrated", uncalibrated, "o--"), ("calibrated", calibrated, "s-")):
            outcomes, confidences = outcome_and_confidence(np.asarray(probabilities))
            # A sum of probabilities (P(grade >= 2)) may pass 1 by a rounding error; sklearn refuses it.
            confidences = np.clip(confidences, 0.0, 1.0)
            if len(targets) and np.isfinite(confidences).all():
                bins = min(CALIBRATION_BINS, len(targets))
                observed, predicted = calibration_curve(outcomes.astype(int), confidences, n_bins=bins, strategy="quantile")
                ece = expected_calibration_error(confidences, outcomes)
                axis.plot(predicted, observed, style, label=f"{name} (ECE {ece:.3f})")
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel=ylabel)
        axis.legend(loc="upper left")
    figure.suptitle(title)
    return figure


def confusion_grid_figure(matrices_by_config: dict[str, dict]) -> Figure:
    """One row per configuration (counts | normalised), from ``metrics.confusion_matrices()`` dicts."""
    if not matrices_by_config:
        raise ValueError("confusion_grid_figure needs at least one configuration")
    rows = len(matrices_by_config)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 4.8 * rows), layout="constrained", squeeze=False)
    for (label, matrices), (left, right) in zip(matrices_by_config.items(), axes):
        _draw_matrices(left, right, matrices, label)
    return figure


def _series(records: list[TrainRunRecord], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Epochs, mean and std over runs of one per-epoch metric (epochs all runs share)."""
    histories = [dict(r.history[metric]) for r in records if r.history.get(metric)]
    if not histories:
        return None
    epochs = sorted(set.intersection(*(set(h) for h in histories)))
    values = np.array([[h[e] for e in epochs] for h in histories])
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(epochs))
    return np.array(epochs), values.mean(axis=0), std


def curves_figure(records: list[TrainRunRecord], configurations: list[Configuration],
                  metrics: tuple[str, ...], ylabel: str) -> Figure:
    """Per depth, the given per-epoch metrics of each configuration of it (pretrained solid, scratch
    dashed; another recipe than the labs' with square markers; bands: run-to-run std)."""
    models = list(dict.fromkeys(configuration.model for configuration in configurations))
    figure, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False, layout="constrained")
    for axis, model in zip(axes[0], models):
        for configuration in (c for c in configurations if c.model == model):
            runs = [r for r in records if r.configuration == configuration]
            for metric in metrics:
                series = _series(runs, metric)
                if series is None:
                    continue
                epochs, mean, std = series
                setting = configuration.label.removeprefix(f"{model} ")
                line, = axis.plot(epochs, mean, marker="o" if configuration.recipe == LAB_RECIPE else "s",
                                  linestyle="-" if configuration.pretrained else "--",
                                  label=f"{metric.replace('_', ' ')} ({setting})")
                if len(runs) > 1:
                    axis.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        axis.set_title(model)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=axis.transAxes)
    return figure


def gradcam_figure(images_01: torch.Tensor, heatmaps: torch.Tensor, titles: list[str], *,
                   columns: int | None = None, alpha: float = 0.45, cmap: str = "jet") -> Figure:
    """A grid of images with their heatmaps blended over them.

    Args:
        images_01: (N, 3, H, W) RGB images in [0, 1] (not normalised).
        heatmaps: (N, H, W) heatmaps in [0, 1], as ``grad_cam`` returns.
        titles: one per image, e.g. "grade 2, predicted 3".
        columns: panels per row; pass the images per grade to get one row per grade. Default: up to 5.
        alpha: opacity of the heatmap.
        cmap: matplotlib colormap of the heatmap.
    """
    count = len(images_01)
    if not len(heatmaps) == len(titles) == count or count == 0:
        raise ValueError(f"need as many heatmaps and titles as images (at least one): {count} images, "
                         f"{len(heatmaps)} heatmaps, {len(titles)} titles")
    columns = columns or min(count, 5)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 0.8, 2.8 * rows),
                                layout="constrained", squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(images_01[index].detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        axis.imshow(heatmaps[index].detach().cpu().numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        axis.set_title(titles[index], fontsize=9)
    # A separate opaque mappable: a colorbar of the blended layer would show washed-out colours.
    scale = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
    figure.colorbar(scale, ax=axes, shrink=0.9 if rows == 1 else 0.6, fraction=0.04,
                    label="Grad-CAM, scaled per image")
    return figure


HEATMAP_ALPHA = 0.45  # the heat map's opacity over the photo (as in ``gradcam_figure``)
HEATMAP_COLORMAP = "jet"


def heatmap_overlay_png(pixels: np.ndarray, heatmap: np.ndarray) -> bytes:
    """A PNG of a prepared photo (uint8 (H, W, 3)) with a [0, 1] heat map (H, W) laid over it in
    ``HEATMAP_COLORMAP`` at ``HEATMAP_ALPHA``: the photo as the network saw it, at its size."""
    colours = matplotlib.colormaps[HEATMAP_COLORMAP](np.clip(heatmap, 0, 1))[..., :3] * 255
    blended = (1 - HEATMAP_ALPHA) * pixels.astype(np.float64) + HEATMAP_ALPHA * colours
    buffer = io.BytesIO()
    Image.fromarray(np.clip(blended.round(), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
