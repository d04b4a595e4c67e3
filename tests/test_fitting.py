"""The one place that fits the grader, on constructed outputs with known answers: no MLflow, no network."""

import dataclasses

import numpy as np
import pytest
from scipy.special import softmax

from pipeline.calibration import calibrate
from pipeline.fitting import SplitOutputs, fit_grader
from pipeline.metrics import referable_probability

TRUE_TEMPERATURE = 2.0


def constructed(n: int, seed: int) -> SplitOutputs:
    """Photos whose grades were drawn from softmax(logits / 2): the network is over-confident by 2."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.5, (n, 5))
    targets = np.array([rng.choice(5, p=row) for row in softmax(logits / TRUE_TEMPERATURE, axis=1)])
    features = rng.normal(0, 1, (n, 6)) + targets[:, None]  # grade-dependent, as a network's are
    measures = np.column_stack([rng.normal(90, 5, n), np.zeros(n), rng.normal(3, 0.2, n), rng.normal(20, 1, n)])
    return SplitOutputs(targets, softmax(logits, axis=1), features, measures, np.arange(n) // 2)


def fitted(val: SplitOutputs, **options):
    train = constructed(400, seed=1)
    options = {"decision": "argmax", "fuse_eyes": False, "target_sensitivity": 0.9} | options
    return fit_grader(train, val, np.concatenate([train.measures, val.measures]), **options)


def test_the_temperature_is_the_one_the_grades_were_drawn_at():
    fit = fitted(constructed(6000, seed=2))
    assert fit.temperature == pytest.approx(TRUE_TEMPERATURE, rel=0.05)
    metrics = fit.metrics("argmax", False)
    assert metrics["temperature"] == fit.temperature and {"gradable_min_brightness", "gradable_max_novelty",
                                                          "referable_threshold"} <= set(metrics)


def with_a_dark_confidently_wrong_photo(val: SplitOutputs) -> SplitOutputs:
    wrong = np.zeros((1, 5))
    wrong[0, 4] = 1.0  # certain of grade 4
    return SplitOutputs(np.append(val.targets, 0), np.vstack([val.probabilities, wrong]),
                        np.vstack([val.features, val.features[:1]]), np.vstack([val.measures, [[3.0, 0, 3, 20]]]),
                        np.append(val.patients, -1))


def test_a_photo_the_grader_refuses_fits_nothing():
    """A too-dark validation photo whose (ignored) output is certain and wrong would pull the
    temperature up and the operating point off: left out, it changes neither."""
    val = constructed(800, seed=3)
    clean, spoiled = fitted(val), fitted(with_a_dark_confidently_wrong_photo(val))
    assert spoiled.gradability.min_brightness > 3.0
    assert spoiled.temperature == clean.temperature and spoiled.referable_threshold == clean.referable_threshold


def test_the_operating_point_is_chosen_on_the_calibrated_probabilities():
    val = constructed(800, seed=4)
    fit = fitted(val, target_sensitivity=0.9)
    referable = val.targets >= 2
    calibrated = referable_probability(calibrate(val.probabilities, fit.temperature))
    uncalibrated = referable_probability(val.probabilities)
    # At the chosen threshold, the calibrated scores find 90% of the referable eyes, and just so:
    # the next referable eye up sits above the threshold, the one that would reach 90% below it.
    assert (calibrated[referable] >= fit.referable_threshold).mean() >= 0.9
    found = np.sort(calibrated[referable])[::-1]
    needed = int(np.ceil(0.9 * referable.sum()))
    assert found[needed - 1] >= fit.referable_threshold
    # The raw scores would call another share at that threshold: the two scales differ.
    assert (uncalibrated[referable] >= fit.referable_threshold).mean() != pytest.approx(
        (calibrated[referable] >= fit.referable_threshold).mean(), abs=0.02)


def test_cut_points_are_fitted_on_the_calibrated_probabilities():
    """Grade 0 always most probable, the rest of the mass leaning to the true grade: argmax gets no
    grade but 0, cut points on the expected grade do. Calibration changes the expected grades, so
    the cut points must be those of the calibrated probabilities: they score on them as fitted."""
    from pipeline.calibration import calibrate
    from pipeline.decision import predicted_grades, quadratic_kappa

    rng = np.random.default_rng(5)
    targets = rng.integers(0, 5, 600)
    probabilities = np.full((600, 5), 0.05)
    probabilities[:, 0] = 0.5
    probabilities[np.arange(600), np.maximum(targets, 1)] += 0.3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    base = constructed(600, seed=5)
    val = dataclasses.replace(base, targets=targets, probabilities=probabilities)
    fit = fitted(val, decision="kappa_thresholds", fuse_eyes=True)
    calibrated = calibrate(probabilities, fit.temperature)
    assert fit.temperature != pytest.approx(1.0, abs=0.05)
    assert fit.cut_points is not None
    assert quadratic_kappa(targets, predicted_grades(calibrated, fit.cut_points)) > 0.8
    assert quadratic_kappa(targets, predicted_grades(calibrated)) < 0.1  # argmax: grade 0 only
    metrics = fit.metrics("kappa_thresholds", True)
    assert {"threshold_1", "threshold_4", "fuse_weight"} <= set(metrics) and 0.0 <= fit.fuse_weight <= 0.5


def test_a_diverged_network_gets_no_novelty_model():
    val = constructed(100, seed=6)
    broken = dataclasses.replace(val, features=np.full_like(val.features, np.nan))
    fit = fit_grader(broken, val, val.measures, decision="argmax", fuse_eyes=False, target_sensitivity=0.9)
    assert fit.novelty is None and fit.gradability.max_novelty is None
    assert "gradable_max_novelty" not in fit.metrics("argmax", False)
