import pandas as pd
import pytest

from pipeline.catalog import Configuration
from pipeline.compare import (
    comparison_table,
    cross_dataset_table,
    display_cross_dataset,
    format_table,
    markdown_of,
    markdown_table,
    run_summary,
)
from pipeline.records import TrainRunRecord


def grid(models, pretrained_values, recipes=("lab",)):
    return [Configuration(m, p, r) for r in recipes for m in models for p in pretrained_values]


def record(model, pretrained, val, test, run_id="r", recipe=None):
    epochs = range(1, len(val) + 1)
    best = max(epochs, key=lambda e: val[e - 1])
    params = {"model": model, "pretrained": str(pretrained).lower()} | ({"recipe": recipe} if recipe else {})
    return TrainRunRecord(
        run_id, run_id, "FINISHED", params, {"best_epoch": best},
        {"val_accuracy": list(zip(epochs, val)), "test_accuracy": list(zip(epochs, test)),
         "train_accuracy": list(zip(epochs, val)), "train_loss": list(zip(epochs, test)),
         "val_loss": list(zip(epochs, test)), "test_loss": list(zip(epochs, test))},
    )


def test_run_summary_uses_the_validation_epoch():
    summary = run_summary(record("resnet18", True, val=[0.5, 0.8, 0.7], test=[0.9, 0.6, 0.95]))
    assert summary == {"best_val_epoch": 2, "val_accuracy": 0.8, "test_accuracy_at_best_val": 0.6,
                       "highest_test_accuracy": 0.95, "highest_test_epoch": 3}


def test_table_has_the_whole_grid_and_says_why_a_configuration_did_not_run():
    records = [record("resnet18", False, [0.7, 0.72], [0.71, 0.73]), record("resnet50", False, [0.6], [0.65])]
    table = comparison_table(records, grid(["resnet18", "resnet50"], [True, False]),
                             {"resnet18 pretrained": "ImageNet weights unavailable: put resnet18-f37072fd.pth in ..."})
    assert table["configuration"].tolist() == ["resnet18 pretrained", "resnet18 scratch", "resnet50 pretrained", "resnet50 scratch"]
    status = dict(zip(table["configuration"], table["status"]))
    assert status["resnet18 pretrained"] == "not run: ImageNet weights unavailable: put resnet18-f37072fd.pth in ..."
    assert status["resnet50 pretrained"] == "not run: no finished train run found"
    assert status["resnet18 scratch"] == "ran"
    row = table.set_index("configuration").loc["resnet18 scratch"]
    assert (row["best_val_epoch"], row["test_accuracy_at_best_val"], row["highest_test_accuracy"]) == (2, 0.73, 0.73)
    text = format_table(table)
    assert "not run: ImageNet weights unavailable" in text and "0.730" in text


def test_several_runs_give_mean_and_std():
    records = [record("resnet18", True, [0.8], [0.7], "a"), record("resnet18", True, [0.6], [0.5], "b")]
    row = comparison_table(records, grid(["resnet18"], [True])).iloc[0]
    assert row["runs"] == 2
    assert row["test_accuracy_at_best_val"] == pytest.approx(0.6)
    assert row["test_accuracy_at_best_val_std"] == pytest.approx(0.1414, abs=1e-3)




def test_the_markdown_summary_keeps_the_glance_columns_and_short_statuses():
    records = [record("resnet18", False, [0.7, 0.72], [0.71, 0.73])]
    records[0].metrics["selected_test_accuracy"] = 0.75  # the grader's decision (cut points, say), not argmax's
    table = comparison_table(records, grid(["resnet18"], [True, False]), {"resnet18 pretrained": "no ImageNet weights (x.pth)"})
    lines = markdown_table(table).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["configuration", "runs", "status", "best_val_epoch", "test_accuracy"]
    assert table["test_accuracy_at_best_val"].tolist()[1] == 0.73  # the curve's, left to the full table
    assert lines[2].startswith("| resnet18 pretrained | 0 | not run |") and "x.pth" not in lines[2]
    assert lines[3].startswith("| resnet18 scratch | 1 | ran | 2 | 0.750")


def test_each_recipe_is_a_row_of_its_own():
    """Runs logged before recipes (no ``recipe`` param) are the labs'; the field's runs fill the
    field's rows only."""
    records = [record("resnet18", True, [0.7], [0.71], "old"), record("resnet18", True, [0.8], [0.82], "f", "field")]
    configurations = grid(["resnet18"], [True, False]) + [Configuration("resnet18", True, "field")]
    table = comparison_table(records, configurations)
    assert table["configuration"].tolist() == ["resnet18 pretrained", "resnet18 scratch", "resnet18 pretrained field"]
    assert table["test_accuracy_at_best_val"].tolist()[::2] == [0.71, 0.82]
    assert table["status"].tolist()[1] == "not run: no finished train run found"


def test_each_configuration_shows_its_refusals_and_calibration():
    run = record("resnet18", False, val=[0.5, 0.8], test=[0.6, 0.7])
    run.metrics.update({"selected_test_ungradable_fraction": 0.04, "selected_test_ece": 0.031,
                        "selected_test_uncalibrated_ece": 0.12})
    table = comparison_table([run], grid(["resnet18"], [False]))
    assert table.loc[0, "test_ungradable_fraction"] == 0.04 and table.loc[0, "test_ece"] == 0.031
    assert table.loc[0, "test_uncalibrated_ece"] == 0.12
    header = markdown_table(table).splitlines()[0]
    assert "test_ungradable_fraction" in header and "test_ece" in header


def evaluation(n, kappa, auc=None, ungradable=0.0):
    metrics = {"test_graded_images": n, "test_ungradable_fraction": ungradable, "test_kappa": kappa,
               "test_kappa_ci_low": kappa - 0.1, "test_kappa_ci_high": kappa + 0.05,
               "test_referable_sensitivity": 0.8, "test_referable_sensitivity_ci_low": 0.7,
               "test_referable_sensitivity_ci_high": 0.9, "test_referable_specificity": 0.6}
    return metrics | ({"test_referable_auc": auc} if auc is not None else {})


def test_cross_dataset_table_has_a_row_per_dataset_with_its_intervals():
    table = cross_dataset_table({"internal test": evaluation(40, 0.5, auc=0.81), "m2": evaluation(9, 0.25, ungradable=0.1)},
                                {"internal test": "labs", "m2": "messidor2"})
    assert table["dataset"].tolist() == ["internal test", "m2"] and table["layout"].tolist() == ["labs", "messidor2"]
    assert table["n"].tolist() == [40, 9] and table["kappa_ci_low"].tolist() == pytest.approx([0.4, 0.15])
    assert table.loc[1, "ungradable_fraction"] == 0.1 and pd.isna(table.loc[1, "referable_auc"])
    shown = display_cross_dataset(table)
    assert shown.loc[0, "kappa"] == "0.500 [0.400, 0.550]" and shown.loc[1, "ungradable"] == "10.0%"
    assert shown.loc[1, "referable_auc"] == "-" and shown.loc[0, "referable_specificity"] == "0.600"  # no interval logged
    lines = markdown_of(shown).splitlines()
    assert lines[0].startswith("| dataset | layout | n | ungradable | kappa |") and lines[1].startswith("| --- |")
    assert lines[3].startswith("| m2 | messidor2 | 9 | 10.0% | 0.250 [0.150, 0.300] |")


def test_the_terminal_tables_fit_100_columns_and_list_why_a_configuration_did_not_run():
    from pipeline.compare import TERMINAL_WIDTH, terminal_cross_dataset, terminal_table

    records = [record(model, pretrained, [0.7, 0.72], [0.71, 0.73], recipe=recipe)
               for model in ("resnet18", "resnet50") for pretrained in (True, False) for recipe in ("lab", "field")
               if not (model == "resnet50" and pretrained and recipe == "field")]
    table = comparison_table(records, grid(["resnet18", "resnet50"], [True, False], ("lab", "field")),
                             {"resnet50 pretrained field": "no ImageNet weights (resnet50-0676ba61.pth)"})
    for column in ("test_kappa", "test_referable_auc"):  # the widest cells: value [low, high]
        table[column], table[f"{column}_ci_low"], table[f"{column}_ci_high"] = 0.6434, 0.5351, 0.7312
    text = terminal_table(table)
    assert max(len(line) for line in text.splitlines()) <= TERMINAL_WIDTH, text
    assert "resnet50 pretrained field" in text and "0.643 [0.54, 0.73]" in text
    assert "  resnet50 pretrained field: not run: no ImageNet weights (resnet50-0676ba61.pth)" in text.splitlines()
    cross = cross_dataset_table({"internal test": evaluation(97, 0.643, auc=0.933, ungradable=0.03),
                                 "messidor2-synthetic": evaluation(90, 0.497, auc=0.857, ungradable=0.1)},
                                {"internal test": "labs", "messidor2-synthetic": "messidor2"})
    text = terminal_cross_dataset(cross)
    assert max(len(line) for line in text.splitlines()) <= TERMINAL_WIDTH, text
    assert "0.643 [0.543, 0.693]" in text and "messidor2-synthetic" in text
