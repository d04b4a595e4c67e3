"""The ``compare`` step: train runs read back from the tracking server -> the comparison table,
the labs' curves, the confusion matrices and one self-contained HTML report."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from pipeline.catalog import Configuration
from pipeline.compare import (
    comparison_table,
    display_cross_dataset,
    display_table,
    format_table,
    markdown_of,
    markdown_table,
    terminal_cross_dataset,
    terminal_table,
)
from pipeline.engine import ranking_score
from pipeline.figures import confusion_grid_figure, curves_figure, figure_png
from pipeline.model_card import CARD_ARTIFACT
from pipeline.records import TrainRunRecord
from pipeline.report import build_html_report
from pipeline.tracking import artifacts, readback, runs

REPORT_TITLE = "retina-flow: ResNet depth x ImageNet pretraining x training recipe"
CROSS_DATASET_CSV = "comparison/cross_dataset.csv"
REPORT_ARTIFACT = "comparison/report.html"
CROSS_DATASET_HEADING = "The champion on each dataset (95% CI)"
# (artifact name, report heading, per-epoch metrics, y axis): the course labs' curves.
CURVES = (
    ("accuracy_curves", "Train and test accuracy per epoch", ("train_accuracy", "test_accuracy"), "accuracy"),
    ("kappa_curves", "Quadratic weighted kappa per epoch", ("val_kappa", "test_kappa"), "kappa"),
    ("loss_curves", "Train and validation loss per epoch", ("train_loss", "val_loss"), "cross-entropy loss"),
)
CHAMPION_FIGURES = (
    ("roc/test_referable_roc.png", "Champion: referable DR (grade >= 2) ROC on test"),
    ("calibration/test_reliability.png", "Champion: reliability on test, before and after its temperature"),
    ("gradcam/test_gradcam.png", "Champion: Grad-CAM on a fixed test sample per grade"),
)


@dataclass
class Comparison:
    text: str  # the table as logged in comparison/comparison.txt
    terminal: str  # the table (and the cross-dataset one) for the console, within compare.TERMINAL_WIDTH
    markdown: str  # the table, the champion and links to every train run, for a run description
    report: str = ""  # where the HTML report is: a local path, or its page in the tracking UI


def run_compare(configurations: list[Configuration], parent_run_id: str | None = None,
                cross_dataset: pd.DataFrame | None = None) -> Comparison:
    """Reads train runs back from the tracking server; logs the table, figures and an HTML report
    (with ``cross_dataset``, the champion's validation on each dataset, where the study made one)."""
    records = readback.search_train_runs(runs.experiment_ids(), parent_run_id)
    not_run = readback.skipped_configurations(parent_run_id) if parent_run_id else {}
    table = comparison_table(records, configurations, not_run)
    text = format_table(table)
    runs.log_params({"configurations": [c.label for c in configurations], "parent_run_id": parent_run_id or "",
                     "train_runs": len(records)})
    terminal = terminal_table(table)
    tables = {}
    if cross_dataset is not None:
        artifacts.log_text(cross_dataset.to_csv(index=False), CROSS_DATASET_CSV)
        tables[CROSS_DATASET_HEADING] = display_cross_dataset(cross_dataset)
        text += f"\n\n{CROSS_DATASET_HEADING}:\n" + tables[CROSS_DATASET_HEADING].to_string(index=False)
        terminal += f"\n\n{CROSS_DATASET_HEADING}:\n" + terminal_cross_dataset(cross_dataset)
    artifacts.log_text(text, "comparison/comparison.txt")
    artifacts.log_text(table.to_csv(index=False), "comparison/comparison.csv")
    figures = log_comparison_figures(records, configurations)
    notes = [f"{label}: not run: {reason}" for label, reason in not_run.items()]
    run_links = {f"{r.run_name} ({r.run_id[:8]})": runs.run_url(r.run_id) for r in records}
    documents = {}
    if records:
        champion = max(records, key=lambda r: ranking_score(r.metrics.get("selection_score", float("nan"))))
        notes.append(f"Champion (best {champion.params.get('select_metric', 'validation')} on validation): "
                     f"{champion.run_name} ({champion.run_id})")
        for artifact, heading in CHAMPION_FIGURES:
            png = artifacts.read_artifact(champion.run_id, artifact)
            if png is not None:
                figures[heading] = png
        card = artifacts.read_artifact(champion.run_id, CARD_ARTIFACT)
        if card is not None:
            run_links[f"Champion's model card ({champion.run_id[:8]})"] = runs.artifact_url(champion.run_id, CARD_ARTIFACT)
            documents["Champion's model card"] = card.decode()
    report = build_html_report(title=REPORT_TITLE, summary_table=display_table(table), figures=figures, notes=notes,
                               run_links=run_links, documents=documents, tables=tables)
    artifacts.log_text(report, REPORT_ARTIFACT)
    lines = [markdown_table(table), ""] + [f"- {note}" for note in notes]
    if cross_dataset is not None:
        lines += ["", f"**{CROSS_DATASET_HEADING}**", "", markdown_of(display_cross_dataset(cross_dataset))]
    lines += ["", "Train runs: " + ", ".join(f"[{label}]({url})" for label, url in run_links.items()),
              "", f"The full report with every figure is the compare run's artifact `{REPORT_ARTIFACT}`."]
    return Comparison(text, terminal, "\n".join(lines) + "\n", runs.artifact_location(runs.active_run_id(), REPORT_ARTIFACT))


def log_comparison_figures(records: list[TrainRunRecord], configurations: list[Configuration]) -> dict[str, bytes]:
    """Logs the curves and the confusion-matrix grid; returns them as PNGs by report heading."""
    figures: dict[str, bytes] = {}
    for name, heading, metrics, ylabel in CURVES:
        png = figure_png(curves_figure(records, configurations, metrics, ylabel))
        artifacts.log_bytes(png, f"comparison/{name}.png")
        figures[heading] = png
    matrices = {}
    for record in records:
        label = record.configuration.label
        raw = artifacts.read_artifact(record.run_id, "confusion_matrix/test_confusion_matrix.json")
        if raw is not None and label not in matrices:
            matrices[label] = json.loads(raw)
    if matrices:
        png = figure_png(confusion_grid_figure(matrices))
        artifacts.log_bytes(png, "comparison/confusion_matrices.png")
        figures["Test confusion matrices of the selected epoch (first run of each configuration)"] = png
    return figures
