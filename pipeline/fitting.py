"""What is fitted after training, in one place: from the selected network's outputs on the photos
it learnt from and was validated on, to everything the grader's spec holds besides the network.

In order, each step on what the previous ones left:

1. the novelty model on the training photos' pooled features (``gradability.NoveltyModel``);
2. the gradability thresholds on the training and validation photos' quality measures, and the
   novelty threshold on the validation photos' distances (``gradability.fit_thresholds``);
3. the temperature, on the gradable validation photos' probabilities (``calibration``), as the
   grader will serve them (with its TTA);
4. on the calibrated probabilities of each gradable validation eye alone (the served model grades
   single photos): the cut points (``decision=kappa_thresholds``), then the referable operating
   point; then the fellow eye's weight (``fuse_eyes``) with which those cut points score best.

No MLflow and no torch: ``steps/train.py`` calls ``fit_grader`` and logs what it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.calibration import calibrate, fit_temperature
from pipeline.catalog import DEFAULT_REFERABLE_THRESHOLD, NUM_GRADES
from pipeline.decision import CutPoints, fit_cut_points, fit_fuse_weight
from pipeline.gradability import GradabilityThresholds, NoveltyModel, fit_thresholds, reasons
from pipeline.metrics import operating_threshold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitOutputs:
    """One split's photos as the selected network saw them (uncalibrated)."""

    targets: np.ndarray  # (N,) true grades
    probabilities: np.ndarray  # (N, 5), at temperature 1
    features: np.ndarray  # (N, features): the pooled features the head reads
    measures: np.ndarray  # (N, 4) quality measures, ``QUALITY_MEASURES`` order
    patients: np.ndarray  # (N,) patient ids


@dataclass(frozen=True)
class GraderFit:
    """Everything fitted, for the spec (and the run's metrics)."""

    temperature: float
    cut_points: CutPoints | None
    fuse_weight: float
    referable_threshold: float
    operating_point_chosen: bool  # False: validation could not choose one, the default stands
    gradability: GradabilityThresholds
    novelty: NoveltyModel | None  # None where the features are not finite (a diverged model)

    def metrics(self, decision: str, fuse_eyes: bool) -> dict[str, float]:
        """The fitted numbers as the train run's metrics: ``temperature``, ``referable_threshold``,
        ``gradable_*``, and where asked for ``fuse_weight`` and ``threshold_1..4`` (NaN when
        validation kept argmax)."""
        metrics = {"temperature": self.temperature, "referable_threshold": self.referable_threshold,
                   **self.gradability.as_metrics()}
        if fuse_eyes:
            metrics["fuse_weight"] = self.fuse_weight
        if decision == "kappa_thresholds":
            cuts = self.cut_points or (float("nan"),) * (NUM_GRADES - 1)
            metrics |= {f"threshold_{k}": cut for k, cut in enumerate(cuts, start=1)}
        return metrics


def fit_grader(train: SplitOutputs, val: SplitOutputs, seen_measures: np.ndarray, *, decision: str,
               fuse_eyes: bool, target_sensitivity: float) -> GraderFit:
    """The grader's fitted parts (see the module's docstring).

    Args:
        train: training photos (a sample is enough) for the novelty model.
        val: the validation photos, for everything else.
        seen_measures: the quality measures of every training and validation photo.
        decision: ``argmax`` or ``kappa_thresholds``.
        fuse_eyes: whether to fit the fellow eye's weight.
        target_sensitivity: the referable sensitivity the operating point must reach on validation.
    """
    usable = len(train.targets) > 1 and np.isfinite(train.features).all() and np.isfinite(val.features).all()
    novelty = NoveltyModel.fit(train.features, train.targets) if usable else None
    val_novelty = None if novelty is None else novelty.distance(val.features)
    gradability = fit_thresholds(seen_measures, val_novelty)
    gradable = np.array([not reason for reason in reasons(val.measures, val_novelty, gradability)], dtype=bool)
    log.info("%d of %d validation photos gradable under the fitted thresholds", gradable.sum(), len(gradable))
    targets, patients = val.targets[gradable], val.patients[gradable]
    temperature = fit_temperature(targets, val.probabilities[gradable])
    probabilities = calibrate(val.probabilities[gradable], temperature)
    cut_points = fit_cut_points(targets, probabilities) if decision == "kappa_thresholds" else None
    threshold, chosen = choose_operating_point(targets, probabilities, target_sensitivity)
    weight = fit_fuse_weight(targets, probabilities, patients, cut_points) if fuse_eyes else 0.0
    return GraderFit(temperature, cut_points, weight, threshold, chosen, gradability, novelty)


def choose_operating_point(targets: np.ndarray, probabilities: np.ndarray, target_sensitivity: float
                           ) -> tuple[float, bool]:
    """The referable threshold chosen on validation (see ``metrics.operating_threshold``), and
    whether it was: without a referable eye or finite outputs it falls back on the default."""
    threshold = operating_threshold(targets, probabilities, target_sensitivity)
    if np.isnan(threshold):
        log.warning("no operating point can be chosen on validation (no referable eye, or the model diverged); "
                    "using P(grade >= 2) >= %g", DEFAULT_REFERABLE_THRESHOLD)
        return DEFAULT_REFERABLE_THRESHOLD, False
    return threshold, True
