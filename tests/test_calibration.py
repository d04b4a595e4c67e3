"""Temperature scaling and the calibration metrics, on constructed inputs with known answers."""

import numpy as np
import pytest
from scipy.special import softmax

from pipeline.calibration import calibrate, fit_temperature, negative_log_likelihood
from pipeline.metrics import calibration_metrics, expected_calibration_error


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_the_grades_were_drawn_at(true_temperature):
    """Logits z; grades drawn from softmax(z / T*): the network's softmax(z) is calibrated by T*."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 5))
    drawn = softmax(logits / true_temperature, axis=1)
    targets = np.array([rng.choice(5, p=row) for row in drawn])
    fitted = fit_temperature(targets, softmax(logits, axis=1))
    assert fitted == pytest.approx(true_temperature, rel=0.04)


def test_calibrating_divides_the_logits_by_the_temperature():
    logits = np.array([[2.0, 1.0, 0.0, -1.0, -3.0], [0.5, 0.4, 0.3, 0.2, 0.1]])
    by_hand = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    assert np.allclose(calibrate(softmax(logits, axis=1), 2.0), by_hand, atol=1e-12)
    assert calibrate(softmax(logits, axis=1), 2.0).argmax(axis=1).tolist() == [0, 0]  # grades by argmax stay


def test_the_ece_of_a_hand_worked_example():
    """Four photos in two equal-mass bins: {0.3 wrong, 0.6 right} and {0.8 wrong, 0.9 right}: each
    bin is right half the time at mean confidence 0.45 and 0.85, so ECE = (0.05 + 0.35) / 2 = 0.2."""
    confidences = np.array([0.9, 0.8, 0.6, 0.3])
    right = np.array([1, 0, 1, 0])
    assert expected_calibration_error(confidences, right, bins=2) == pytest.approx(0.2)
    # Fifteen equal-mass bins of 30 photos, two each: ten bins at confidence 0.5 with one photo
    # right and one wrong, five at 1.0 with both right: every bin exact, ECE 0. All at 0.5 but
    # all right: ECE 0.5.
    confidences = np.concatenate([np.full(20, 0.5), np.full(10, 1.0)])
    right = np.concatenate([np.tile([1, 0], 10), np.ones(10)])
    assert expected_calibration_error(confidences, right) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(30, 0.5), np.ones(30)) == pytest.approx(0.5)


def test_brier_and_nll_of_a_hand_worked_example():
    """Two photos, true grades 0 and 2: Brier = ((0.3^2 + 0.2^2 + 0.1^2 ...) per photo), mean."""
    probabilities = np.array([[0.7, 0.2, 0.1, 0.0, 0.0], [0.1, 0.1, 0.6, 0.1, 0.1]])
    targets = np.array([0, 2])
    brier = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.1 ** 2 * 4 + 0.4 ** 2)) / 2
    metrics = calibration_metrics(targets, probabilities)
    assert metrics["brier"] == pytest.approx(brier)
    assert metrics["nll"] == pytest.approx(-(np.log(0.7) + np.log(0.6)) / 2)
    assert negative_log_likelihood(targets, probabilities) == pytest.approx(metrics["nll"])


def test_an_over_confident_network_is_cooled_and_its_ece_falls():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (5000, 5))
    targets = np.array([rng.choice(5, p=row) for row in softmax(logits, axis=1)])
    over_confident = softmax(3 * logits, axis=1)
    temperature = fit_temperature(targets, over_confident)
    assert temperature == pytest.approx(3, rel=0.08)
    before = calibration_metrics(targets, over_confident)
    after = calibration_metrics(targets, calibrate(over_confident, temperature))
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
