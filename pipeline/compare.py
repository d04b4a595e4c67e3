"""The comparison table of the study's configurations (depth x pretraining x recipe), from train-run
records (``figures`` draws the curves)."""

from __future__ import annotations

import pandas as pd

from pipeline.catalog import TABLE_INTERVAL_METRICS, Configuration
from pipeline.records import TrainRunRecord


def run_summary(record: TrainRunRecord) -> dict[str, float]:
    """The selected (best-validation) epoch of one run and the test figures around it.

    The ``val_*``, ``test_accuracy_at_best_val`` and ``highest_test_*`` columns come from the
    per-epoch curves (argmax, each eye alone, as the labs measure); ``test_accuracy``,
    ``test_kappa`` and ``test_referable_*`` are the selected grader's on the photos it grades,
    deciding as it does (cut points, fused eyes) where its recipe says so; ``test_ungradable_fraction``
    is the share of test photos it refused, ``test_ece`` its calibration error after its temperature
    (``test_uncalibrated_ece`` before).
    """
    test = dict(record.history["test_accuracy"])
    best_epoch = int(record.metrics["best_epoch"])
    highest_epoch, highest = max(test.items(), key=lambda item: (item[1], -item[0]))
    summary = {
        "best_val_epoch": best_epoch,
        "val_accuracy": dict(record.history["val_accuracy"])[best_epoch],
        "test_accuracy_at_best_val": test[best_epoch],
        "highest_test_accuracy": highest,
        "highest_test_epoch": highest_epoch,
    }
    if record.history.get("val_kappa"):
        summary["val_kappa"] = dict(record.history["val_kappa"])[best_epoch]
    if "referable_threshold" in record.metrics:  # the operating point the sensitivity and specificity are at
        summary["referable_threshold"] = record.metrics["referable_threshold"]
    for name in ("accuracy", *TABLE_INTERVAL_METRICS, "referable_sensitivity", "referable_specificity",
                 "ungradable_fraction", "ece", "uncalibrated_ece"):
        value = record.metrics.get(f"selected_test_{name}")
        if value is not None:
            summary[f"test_{name}"] = value
    return summary


def _interval(record: TrainRunRecord, name: str) -> tuple[float, float] | None:
    low, high = (record.metrics.get(f"selected_test_{name}_ci_{side}") for side in ("low", "high"))
    return None if low is None or high is None else (low, high)


def comparison_table(records: list[TrainRunRecord], configurations: list[Configuration],
                     not_run: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per configuration, in order; several runs (seeds) of one give mean and std.

    Args:
        not_run: reason per configuration label for configurations the study skipped.
    """
    not_run = not_run or {}
    rows = []
    for configuration in configurations:
        runs = [r for r in records if r.configuration == configuration]
        summaries = [run_summary(r) for r in runs]
        row: dict[str, object] = {"configuration": configuration.label, "model": configuration.model,
                                  "pretrained": configuration.pretrained, "recipe": configuration.recipe,
                                  "runs": len(summaries)}
        if not summaries:
            row["status"] = f"not run: {not_run.get(configuration.label, 'no finished train run found')}"
            rows.append(row)
            continue
        row["status"] = "ran"
        frame = pd.DataFrame(summaries)
        for column in frame.columns:
            row[column] = float(frame[column].mean())
            if len(frame) > 1:
                row[f"{column}_std"] = float(frame[column].std(ddof=1))
        # One run: its bootstrap CI; several: the std above is the run-to-run spread.
        intervals = {name: _interval(runs[0], name) for name in TABLE_INTERVAL_METRICS} if len(runs) == 1 else {}
        for name, interval in intervals.items():
            if interval is not None:
                row[f"test_{name}_ci_low"], row[f"test_{name}_ci_high"] = interval
        rows.append(row)
    return pd.DataFrame(rows)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rounded, with ``mean ±std`` or ``value [low, high]`` cells: for the console and the report."""
    shown = table.drop(columns=["model", "pretrained", "recipe"]).copy()
    for column in list(shown.columns):
        if column.endswith(("_std", "_ci_low", "_ci_high")):
            continue
        values = shown[column]
        if column.endswith("epoch"):
            shown[column] = values.map(lambda v: "" if pd.isna(v) else f"{v:g}")
        elif pd.api.types.is_float_dtype(values):
            text = values.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
            if f"{column}_std" in shown:
                std = shown[f"{column}_std"]
                text = text + std.map(lambda v: "" if pd.isna(v) else f" ±{v:.3f}")
            if f"{column}_ci_low" in shown:
                low, high = shown[f"{column}_ci_low"], shown[f"{column}_ci_high"]
                text = text + [("" if pd.isna(lo) else f" [{lo:.2f}, {hi:.2f}]") for lo, hi in zip(low, high)]
            shown[column] = text
    shown = shown.drop(columns=[c for c in shown.columns if c.endswith(("_std", "_ci_low", "_ci_high"))])
    return shown.fillna("")


# What a run description shows at a glance (the UI shows the first rows of a description); the
# full table is the compare run's comparison.csv / report.html.
SUMMARY_COLUMNS = ("configuration", "runs", "status", "best_val_epoch", "val_kappa", "test_accuracy",
                   "test_kappa", "test_referable_auc", "test_referable_sensitivity", "test_referable_specificity",
                   "test_ungradable_fraction", "test_ece")


def markdown_table(table: pd.DataFrame) -> str:
    """The table's summary columns in markdown (for the study run's description in the MLflow UI);
    a configuration not run says only that: its reason is listed under the table."""
    shown = display_table(table)
    shown = shown[[c for c in SUMMARY_COLUMNS if c in shown.columns]].astype(str)
    shown["status"] = shown["status"].str.split(":").str[0]
    return markdown_of(shown)


def format_table(table: pd.DataFrame) -> str:
    """The whole table as text: the ``comparison.txt`` artifact."""
    return display_table(table).to_string(index=False)


# The terminal's view: the columns a reader compares first, within TERMINAL_WIDTH; the rest, and
# every interval but test kappa's, are in comparison.csv and the report.
TERMINAL_COLUMNS = ("configuration", "runs", "status", "val_kappa", "test_kappa", "test_referable_auc")
TERMINAL_WIDTH = 100


def terminal_table(table: pd.DataFrame) -> str:
    """The table for the console: ``TERMINAL_COLUMNS``, short statuses with each reason a
    configuration was not run listed under it."""
    shown = display_table(table[[c for c in table.columns if not c.startswith("test_referable_auc_ci")]])
    shown = shown[[c for c in TERMINAL_COLUMNS if c in shown.columns]].astype(str)
    reasons = [f"  {name}: {status}" for name, status in zip(shown["configuration"], shown["status"]) if ":" in status]
    shown["status"] = shown["status"].str.split(":").str[0]
    return "\n".join([shown.to_string(index=False), *reasons])


def terminal_cross_dataset(table: pd.DataFrame) -> str:
    """The cross-dataset table for the console: every figure, the interval of kappa only."""
    without = [c for c in table.columns if c.endswith(("_ci_low", "_ci_high")) and not c.startswith("kappa")]
    shown = display_cross_dataset(table.assign(**{column: float("nan") for column in without}))
    return shown.drop(columns=["layout"]).rename(columns=lambda c: c.replace("referable_", "ref_")).to_string(index=False)


# The champion's figures on each dataset (its internal test split and every external set), each
# with its patient-bootstrap 95% interval: ``cross_dataset_table``.
CROSS_DATASET_METRICS = ("kappa", "referable_auc", "referable_sensitivity", "referable_specificity")


def cross_dataset_table(evaluations: dict[str, dict[str, float]], layouts: dict[str, str]) -> pd.DataFrame:
    """One row per dataset from ``evaluate``'s metrics (``test_*``): ``n`` the photos graded,
    ``ungradable_fraction`` those refused, quadratic weighted kappa and referable AUC, sensitivity
    and specificity at the champion's operating point, each with ``_ci_low``/``_ci_high``."""
    rows = []
    for name, metrics in evaluations.items():
        row: dict[str, object] = {"dataset": name, "layout": layouts.get(name, ""),
                                  "n": metrics.get("test_graded_images"),
                                  "ungradable_fraction": metrics.get("test_ungradable_fraction")}
        for metric in CROSS_DATASET_METRICS:
            row[metric] = metrics.get(f"test_{metric}")
            row[f"{metric}_ci_low"] = metrics.get(f"test_{metric}_ci_low")
            row[f"{metric}_ci_high"] = metrics.get(f"test_{metric}_ci_high")
        rows.append(row)
    return pd.DataFrame(rows)


def display_cross_dataset(table: pd.DataFrame) -> pd.DataFrame:
    """``value [low, high]`` cells, for the report, the study's description and the model card."""
    shown = table[["dataset", "layout"]].copy()
    shown["n"] = table["n"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    shown["ungradable"] = table["ungradable_fraction"].map(lambda v: "" if pd.isna(v) else f"{v:.1%}")
    for metric in CROSS_DATASET_METRICS:
        shown[metric] = [_with_interval(v, lo, hi) for v, lo, hi in
                         zip(table[metric], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"])]
    return shown


def _with_interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.3f}" + ("" if low is None or pd.isna(low) else f" [{low:.3f}, {high:.3f}]")


def markdown_of(table: pd.DataFrame) -> str:
    """A display table as markdown rows."""
    rows = [list(table.columns), ["---"] * len(table.columns), *table.astype(str).to_numpy().tolist()]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)