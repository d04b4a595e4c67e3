"""The pretrain x depth comparison: a table and the course labs' figures, from train-run records."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.config import parse_bool
from pipeline.tracking import TrainRunRecord


def config_label(model: str, pretrained: bool) -> str:
    return f"{model} {'pretrained' if pretrained else 'scratch'}"


def config_of(record: TrainRunRecord) -> tuple[str, bool]:
    return record.params["model"], parse_bool(record.params["pretrained"], "pretrained")


# Test metrics of the selected model that have 95% bootstrap intervals (logged by train).
CI_METRICS = ("kappa", "referable_auc")


def run_summary(record: TrainRunRecord) -> dict[str, float]:
    """The selected (best-validation) epoch of one run and the test figures around it."""
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
    for name in (*CI_METRICS, "referable_sensitivity", "referable_specificity"):
        value = record.metrics.get(f"selected_test_{name}")
        if value is not None:
            summary[f"test_{name}"] = value
    return summary


def _interval(record: TrainRunRecord, name: str) -> tuple[float, float] | None:
    low, high = (record.metrics.get(f"selected_test_{name}_ci_{side}") for side in ("low", "high"))
    return None if low is None or high is None else (low, high)


def comparison_table(records: list[TrainRunRecord], models: list[str], pretrained_values: list[bool],
                     not_run: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per configuration of the grid; several runs (seeds) of one give mean and std.

    Args:
        not_run: reason per configuration label for configurations the study skipped.
    """
    not_run = not_run or {}
    rows = []
    for model in models:
        for pretrained in pretrained_values:
            label = config_label(model, pretrained)
            runs = [r for r in records if config_of(r) == (model, pretrained)]
            summaries = [run_summary(r) for r in runs]
            row: dict[str, object] = {"configuration": label, "model": model, "pretrained": pretrained, "runs": len(summaries)}
            if not summaries:
                row["status"] = f"not run: {not_run.get(label, 'no finished train run found')}"
                rows.append(row)
                continue
            row["status"] = "ran"
            frame = pd.DataFrame(summaries)
            for column in frame.columns:
                row[column] = float(frame[column].mean())
                if len(frame) > 1:
                    row[f"{column}_std"] = float(frame[column].std(ddof=1))
            # One run: its bootstrap CI; several: the std above is the run-to-run spread.
            intervals = {name: _interval(runs[0], name) for name in CI_METRICS} if len(runs) == 1 else {}
            for name, interval in intervals.items():
                if interval is not None:
                    row[f"test_{name}_ci_low"], row[f"test_{name}_ci_high"] = interval
            rows.append(row)
    return pd.DataFrame(rows)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rounded, with ``mean ±std`` or ``value [low, high]`` cells: for the console and the report."""
    shown = table.drop(columns=["model", "pretrained"]).copy()
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


def format_table(table: pd.DataFrame) -> str:
    """The table as text for the console and the ``comparison.txt`` artifact."""
    return display_table(table).to_string(index=False)


def _series(records: list[TrainRunRecord], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Epochs, mean and std over runs of one per-epoch metric (epochs all runs share)."""
    histories = [dict(r.history[metric]) for r in records if r.history.get(metric)]
    if not histories:
        return None
    epochs = sorted(set.intersection(*(set(h) for h in histories)))
    values = np.array([[h[e] for e in epochs] for h in histories])
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(epochs))
    return np.array(epochs), values.mean(axis=0), std


def curves_figure(records: list[TrainRunRecord], models: list[str], pretrained_values: list[bool],
                  metrics: tuple[str, ...], ylabel: str) -> Figure:
    """Per depth, the given per-epoch metrics with and without pretraining (bands: run-to-run std)."""
    figure, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False, layout="constrained")
    for axis, model in zip(axes[0], models):
        for pretrained in pretrained_values:
            runs = [r for r in records if config_of(r) == (model, pretrained)]
            for metric in metrics:
                series = _series(runs, metric)
                if series is None:
                    continue
                epochs, mean, std = series
                label = f"{metric.replace('_', ' ')} ({'pretrained' if pretrained else 'scratch'})"
                line, = axis.plot(epochs, mean, marker="o", linestyle="-" if pretrained else "--", label=label)
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
