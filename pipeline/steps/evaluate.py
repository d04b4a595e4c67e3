"""The ``evaluate`` step: a logged or registered grader on the test split, with 95% CIs and its
per-image predictions; and the evaluation of a split that ``train`` logs for its selected model.

The grading metrics are the gradable photos' (the grader answers no others), and for comparison
also all photos' (``*_all_*``); ``*_ungradable_fraction`` says how many it refused. Calibration is
measured before (``*_uncalibrated_*``) and after the grader's temperature, on each gradable eye alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.catalog import INTERVAL_METRICS
from pipeline.data.dataset import EvalPreset, FundusDataset, ProcessedDataset, make_loader
from pipeline.data.quality import QUALITY_MEASURES
from pipeline.decision import predicted_grades
from pipeline.errors import DataError
from pipeline.figures import confusion_figure, figure_png, reliability_figure, roc_figure
from pipeline.grading import Grader
from pipeline.photo_grader import GraderSpec, Judged
from pipeline.metrics import calibration_with_intervals, confusion_matrices, metrics_with_intervals
from pipeline.tracking import artifacts, registry, runs, tags
from pipeline.tracking.sink import metric_sink

TEST_PREDICTIONS = "predictions/test_predictions.csv"
# An optional manifest column: the dataset's own gradability labels (true/false), against which the
# grader's refusals are scored.
GRADABLE_LABEL = "gradable"


def metric_scalars(metrics: dict[str, float], intervals: dict[str, tuple[float, float]], prefix: str
                   ) -> dict[str, float]:
    """``{prefix}{metric}`` for every metric, and ``{prefix}{metric}_ci_low/high`` where intervals exist."""
    scalars = {f"{prefix}{name}": value for name, value in metrics.items()}
    for name in INTERVAL_METRICS:
        if name in intervals:
            scalars[f"{prefix}{name}_ci_low"], scalars[f"{prefix}{name}_ci_high"] = intervals[name]
    return scalars


def split_metrics(grader: Grader, targets: np.ndarray, uncalibrated: np.ndarray, judged: Judged, patients: np.ndarray,
                  *, prefix: str, resamples: int, seed: int, labels: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one split, named ``{prefix}...`` (see the module's docstring).

    Args:
        uncalibrated: the network's probabilities before the grader's temperature.
        judged: the grader's view of the photos (calibrated probabilities, reasons).
        labels: the set's own gradability labels (True: graded by its readers), where it has them:
            photos labelled ungradable have no grade, so only the check is scored on them.
    """
    spec = grader.spec
    graded = np.ones(len(targets), bool) if labels is None else np.asarray(labels, dtype=bool)
    gradable = judged.gradable & graded
    scalars: dict[str, float] = {f"{prefix}images": float(len(targets)), f"{prefix}graded_images": float(gradable.sum()),
                                 f"{prefix}ungradable_fraction": float(1 - judged.gradable.mean()) if len(targets) else 0.0}
    found: tuple[dict[str, float], dict[str, tuple[float, float]]] = ({}, {})
    if gradable.any():
        found = metrics_with_intervals(
            targets[gradable], grader.fused(judged.probabilities, patients, gradable)[gradable], patients[gradable],
            threshold=spec.referable_threshold, resamples=resamples, seed=seed, cut_points=spec.cut_points)
        for name, probabilities in (("", judged.probabilities), ("uncalibrated_", uncalibrated)):
            scalars |= metric_scalars(*calibration_with_intervals(
                targets[gradable], probabilities[gradable], patients[gradable], resamples=resamples, seed=seed),
                prefix=f"{prefix}{name}")
    scalars |= metric_scalars(*found, prefix=prefix)
    # Every graded photo accepted: the same photos, the same figures (a bootstrap of them all costs ~10 s).
    if gradable.sum() == graded.sum():
        everyone = found
    else:
        everyone = metrics_with_intervals(
            targets[graded], grader.fused(judged.probabilities, patients, graded)[graded], patients[graded],
            threshold=spec.referable_threshold, resamples=resamples, seed=seed, cut_points=spec.cut_points)
    scalars |= metric_scalars(*everyone, prefix=f"{prefix}all_")
    if labels is not None and not graded.all():
        # The check as a detector of the photos the set labels ungradable: how many of those it
        # refused, and how many of the others it graded.
        scalars[f"{prefix}ungradable_sensitivity"] = float((~judged.gradable[~graded]).mean())
        scalars[f"{prefix}ungradable_specificity"] = float(judged.gradable[graded].mean())
    return scalars


def log_split_figures(grader: Grader, targets: np.ndarray, uncalibrated: np.ndarray, judged: Judged,
                      patients: np.ndarray, *, title: str, split: str, metrics: dict[str, float], resamples: int,
                      seed: int) -> None:
    """The gradable photos' confusion matrices, referable ROC with the operating point and
    reliability diagram, and every metric in ``metrics/{split}_metrics.json``."""
    gradable = judged.gradable & (targets >= 0)  # labelled ungradable photos have no grade to show
    probabilities = grader.fused(judged.probabilities, patients, gradable)[gradable]
    if gradable.any():
        _log_gradable_figures(grader, targets[gradable], probabilities, uncalibrated[gradable],
                              judged.probabilities[gradable], title=title, split=split)
    artifacts.log_dict({"metrics": metrics, "referable_threshold": grader.spec.referable_threshold,
                        "temperature": grader.spec.temperature,
                        "cut_points": None if grader.spec.cut_points is None else list(grader.spec.cut_points),
                        "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed},
                        "images": len(targets), "gradable_images": int(gradable.sum())}, f"metrics/{split}_metrics.json")


def _log_gradable_figures(grader: Grader, targets: np.ndarray, probabilities: np.ndarray, uncalibrated: np.ndarray,
                          calibrated: np.ndarray, *, title: str, split: str) -> None:
    """``log_split_figures``' figures of the gradable photos (``probabilities`` fused where the
    grader fuses eyes, ``calibrated`` each eye alone)."""
    matrices = confusion_matrices(targets, predicted_grades(probabilities, grader.spec.cut_points))
    artifacts.log_dict(matrices, f"confusion_matrix/{split}_confusion_matrix.json")
    artifacts.log_bytes(figure_png(confusion_figure(matrices, title)), f"confusion_matrix/{split}_confusion_matrix.png")
    artifacts.log_bytes(figure_png(roc_figure(targets, probabilities, grader.spec.referable_threshold)),
                        f"roc/{split}_referable_roc.png")
    artifacts.log_bytes(figure_png(reliability_figure(
        targets, uncalibrated, calibrated, f"{title}: calibration at temperature {grader.spec.temperature:.3f}")),
        f"calibration/{split}_reliability.png")


def run_evaluate(model_ref: str, data_dir: str, batch_size: int = 32, num_workers: int = 0,
                 resamples: int = 1000) -> dict[str, float]:
    """Test metrics with 95% CIs of a logged or registered grader, linked to the run that trained it.

    Also logs every test image's prediction (predict's columns plus the true ``grade``) as
    ``predictions/test_predictions.csv``. A grader that fuses eyes blends each gradable test photo
    with its gradable fellow eye's (same patient) before deciding, as it did on validation.
    """
    uri = registry.model_uri_of(model_ref)
    loaded = registry.load_model(uri)
    grader, spec = loaded.grader, loaded.grader.spec
    runs.log_params({"model_uri": uri, "data_dir": data_dir, "batch_size": batch_size, "bootstrap_resamples": resamples})
    if loaded.source_run_id:
        runs.set_tags({tags.SOURCE_RUN: loaded.source_run_id})
    processed = graders_cache(uri, spec, data_dir)
    test_rows = processed.split("test", with_ungradable=True)
    test = FundusDataset(processed.root, test_rows, EvalPreset(spec.image_size))
    loader = make_loader(test, batch_size, shuffle=False, num_workers=num_workers, seed=0)
    targets, uncalibrated, features = grader.outputs_of(loader, calibrated=False)
    refused = refused_in_preprocess(test_rows)
    uncalibrated[[bool(reason) for reason in refused]] = np.nan  # the network saw a blank
    judged = grader.judge(grader.calibrated(uncalibrated), features, measures_of(processed, test_rows), refused)
    patients = test_rows["patient"].to_numpy()
    predictions = pd.concat([test_rows[["id"]], grader.decide(judged, patients)], axis=1)
    predictions["grade"] = targets
    artifacts.log_text(predictions.to_csv(index=False, float_format="%.6f"), TEST_PREDICTIONS)
    labels = gradable_labels(processed, test_rows)
    test_metrics = split_metrics(grader, targets, uncalibrated, judged, patients, prefix="test_", resamples=resamples,
                                 seed=0, labels=labels)
    log_split_figures(grader, targets, uncalibrated, judged, patients, title=f"{uri}: test set", split="test",
                      metrics=test_metrics, resamples=resamples, seed=0)
    test_metrics["referable_threshold"] = spec.referable_threshold
    metric_sink().log_summary(test_metrics, model_id=loaded.model_id)
    return test_metrics


def gradable_labels(processed: ProcessedDataset, rows: pd.DataFrame) -> np.ndarray | None:
    """The dataset's own gradability labels of ``rows`` (``GRADABLE_LABEL``), where it has them.

    Raises:
        DataError: naming a value that is no true/false.
    """
    if GRADABLE_LABEL not in rows.columns:
        return None
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    labels = []
    for value in rows[GRADABLE_LABEL]:
        label = words.get(str(value).strip().lower())
        if label is None:
            raise DataError(f"{processed.root / 'manifest.csv'}: '{GRADABLE_LABEL}' value {value!r} is neither true nor false")
        labels.append(label)
    return np.array(labels, dtype=bool)


def graders_cache(uri: str, spec: GraderSpec, data_dir: str) -> ProcessedDataset:
    """The processed cache a grader learnt from, in ``data_dir``: its own size and enhancement.

    Raises:
        DataError: the folder holds another size or enhancement (the grader would see other pixels).
    """
    processed = ProcessedDataset(data_dir, spec.cache_size, spec.enhance)
    if processed.image_size != spec.cache_size:
        raise DataError(f"{uri} was trained on the {spec.cache_size} px cache, but {data_dir} has "
                        f"{processed.image_size} px; run preprocess with image_size={spec.cache_size}")
    return processed


def refused_in_preprocess(rows: pd.DataFrame) -> list[str]:
    """Each row's reason to be refused known from preprocess: photos the set labels ungradable in
    which no fundus was found or that could not be read ("" for the others)."""
    if "refused" not in rows.columns:  # a dataset processed before labelled-ungradable photos were kept
        return [""] * len(rows)
    return rows["refused"].fillna("").astype(str).tolist()


def measures_of(processed: ProcessedDataset, rows: pd.DataFrame) -> np.ndarray:
    """The quality measures the manifest recorded for ``rows`` (``QUALITY_MEASURES`` order).

    Raises:
        DataError: for a processed dataset from before they were recorded.
    """
    missing = [name for name in QUALITY_MEASURES if name not in rows.columns]
    if missing:
        raise DataError(f"{processed.root} records no photo quality ({', '.join(missing)}): it was preprocessed by an "
                        "older retina-flow; run preprocess again")
    return rows[list(QUALITY_MEASURES)].to_numpy(dtype=np.float64)
