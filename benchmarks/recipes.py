"""Benchmark: the labs' recipe against the field's, over seeds, on synthetic photos with EyePACS's
grade shares (73.5/7/15/2.5/2 %).

It runs the study itself (``run_study``) with experiments/field.yaml's two recipes on a throwaway
embedded store, every configuration ``--seeds`` times, and prints per recipe the mean and std over
seeds of the selected model's test quadratic weighted kappa and referable-DR AUC (and accuracy),
with each seed's values. Both recipes train from scratch by default: ImageNet weights cannot be
downloaded on these machines (``--pretrained true`` where they are cached).
Run: ``python -m benchmarks.recipes [--seeds 3 --models resnet18 --epochs 8 --image-size 96]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from benchmarks.common import print_table, write_json
from pipeline.catalog import LAB_RECIPE
from pipeline.cli._runner import run_step
from pipeline.config import coerce_list, load_study_config
from pipeline.data.synthetic import EYEPACS_GRADE_SHARES, generate_eyepacs_layout
from pipeline.steps.study import run_study
from pipeline.tracking import tags

FIELD_STUDY = Path(__file__).resolve().parents[1] / "experiments" / "field.yaml"
EXPERIMENT = "recipes-benchmark"
REPORTED = ("selected_test_kappa", "selected_test_referable_auc", "selected_test_accuracy", "selected_val_kappa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="resnet18")
    parser.add_argument("--pretrained", default="false", help="for both recipes (field.yaml's field is pretrained only)")
    parser.add_argument("--train-patients", type=int, default=300, help="two photos each; validation is split off them")
    parser.add_argument("--test-patients", type=int, default=100)
    parser.add_argument("--photo-size", default="384x288", help="the synthetic photos' size")
    parser.add_argument("--cache", type=int, default=128, help="preprocess image_size")
    parser.add_argument("--image-size", type=int, default=96, help="train image_size")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lab-lr", type=float, default=0.003, help="the labs' SGD lr (the demo's, from scratch)")
    parser.add_argument("--field-lr", type=float, default=0.001, help="the field's AdamW lr (from scratch)")
    parser.add_argument("--work", default="", help="keep the data and the store here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recipes-benchmark-") as scratch:
        work = Path(args.work or scratch)
        rows = run_benchmark(args, work)
    summary = summarise(rows)
    print_table(f"Labs' recipe vs the field's: test metrics of the selected model, mean ± std over "
                f"{args.seeds} seeds ({args.models}, pretrained={args.pretrained}, {args.epochs} epochs at "
                f"{args.image_size} px)", summary)
    print_table("Per seed", rows)
    write_json("recipes", {"arguments": vars(args), "summary": summary, "runs": rows})


def run_benchmark(args: argparse.Namespace, work: Path) -> list[dict[str, object]]:
    raw, processed = work / "raw", work / "processed"
    if not (raw / "train_img.csv").is_file():
        started = time.perf_counter()
        width, height = (int(side) for side in args.photo_size.split("x"))
        generate_eyepacs_layout(raw, train_patients=args.train_patients, test_patients=args.test_patients,
                                size=(width, height), grade_shares=EYEPACS_GRADE_SHARES, seed=0,
                                workers=os.cpu_count() or 1)
        print(f"generated the photos in {time.perf_counter() - started:.0f} s", flush=True)
    pretrained = coerce_list(args.pretrained, bool, "pretrained")
    cfg = load_study_config(FIELD_STUDY, {
        "models": args.models, "pretrained": args.pretrained, "seeds": args.seeds, "raw_dir": str(raw),
        "data_dir": str(processed), "preprocess.image_size": args.cache, "train.image_size": args.image_size,
        "epochs": args.epochs, "batch_size": args.batch_size, "num_workers": 1, "checkpoint_artifact": False,
        "checkpoint_dir": str(work / "checkpoints"), "skip_unavailable_weights": True})
    recipes = []
    for recipe in cfg.recipes:
        lr = args.lab_lr if recipe.name == LAB_RECIPE else args.field_lr
        recipes.append(dataclasses.replace(recipe, pretrained=pretrained, train={**recipe.train, "lr": lr}))
    cfg = dataclasses.replace(cfg, recipes=recipes)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_EXPERIMENT_NAME"] = EXPERIMENT
    started = time.perf_counter()
    cwd = Path.cwd()
    os.chdir(work)  # the embedded store's artifacts (./mlruns) go with it
    try:
        if run_step("main", lambda: print(run_study(cfg).comparison), run_name="recipes-benchmark") != 0:
            raise SystemExit("the study failed; see the log above")
    finally:
        os.chdir(cwd)
    print(f"study wall time {time.perf_counter() - started:.0f} s", flush=True)
    return train_rows()


def train_rows() -> list[dict[str, object]]:
    """Every finished train run of the benchmark: its recipe, model, seed, wall time and metrics."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([experiment.experiment_id], f"tags.`{tags.STEP}` = 'train' and attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time ASC"])
    mlflow.set_tracking_uri(None)
    return [{"recipe": run.data.params["recipe"], "model": run.data.params["model"],
             "pretrained": run.data.params["pretrained"], "seed": int(run.data.params["seed"]),
             "minutes": round((run.info.end_time - run.info.start_time) / 60000, 2),
             **{name.removeprefix("selected_"): run.data.metrics.get(name) for name in REPORTED}}
            for run in found]


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    frame = pd.DataFrame(rows)
    summary = []
    for (recipe, model, pretrained), group in frame.groupby(["recipe", "model", "pretrained"], sort=False):
        row: dict[str, object] = {"recipe": recipe, "model": model, "pretrained": pretrained, "seeds": len(group)}
        for name in (n.removeprefix("selected_") for n in REPORTED):
            row[name] = f"{group[name].mean():.3f} ± {group[name].std(ddof=1):.3f}"
        row["minutes per run"] = round(float(group["minutes"].mean()), 2)
        summary.append(row)
    return summary


if __name__ == "__main__":
    main()
