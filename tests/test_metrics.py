import json
from itertools import product

import numpy as np
import pytest

from pipeline.metrics import (
    _resample_weights,
    all_metrics,
    bootstrap_intervals,
    calibration_metrics,
    classification_metrics,
    confusion_matrices,
    each_resample,
    epoch_metrics,
    metrics_with_intervals,
    operating_threshold,
    per_grade_metrics,
    referable_metrics,
    resampled_all_metrics,
    resampled_calibration_metrics,
)


def one_hot(predictions):
    probabilities = np.full((len(predictions), 5), 0.01)
    probabilities[np.arange(len(predictions)), predictions] = 0.96
    return probabilities


def test_confusion_matrices_worked_by_hand():
    targets = np.array([0, 0, 0, 2, 2, 4])
    predictions = np.array([0, 0, 2, 2, 0, 4])
    matrices = confusion_matrices(targets, predictions)
    counts = np.zeros((5, 5), int)
    counts[0, 0], counts[0, 2], counts[2, 2], counts[2, 0], counts[4, 4] = 2, 1, 1, 1, 1
    assert matrices["counts"] == counts.tolist()
    assert matrices["labels"] == [0, 1, 2, 3, 4]
    assert matrices["normalized"][0] == pytest.approx([2 / 3, 0, 1 / 3, 0, 0], abs=1e-4)
    assert matrices["normalized"][1] == [0, 0, 0, 0, 0]  # no grade-1 images: a zero row, not NaN
    json.dumps(matrices)  # logged as JSON as is


def test_metrics_worked_by_hand():
    targets = np.array([0, 0, 1, 2])
    predictions = np.array([0, 1, 1, 0])
    metrics = classification_metrics(targets, one_hot(predictions))
    assert metrics["accuracy"] == 0.5
    # Quadratic weights w_ij = (i-j)^2 / 16 over 5 grades. Observed disagreement: (0,1) w=1/16,
    # (2,0) w=4/16 -> sum 5/16, /4 images = 5/64. Expected from marginals true (2,1,1) x pred (2,2,0):
    # sum_ij p_i q_j w_ij = [2*2*0 + 2*2*1 + 1*2*1 + 1*2*0 + 1*2*4 + 1*2*1] / 16 / 16 = 16/256 = 1/16.
    assert metrics["kappa"] == pytest.approx(1 - (5 / 64) / (1 / 16))
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)


# --- referable DR, per grade, bootstrap ------------------------------------------------------

# Eight images. Referable = grade >= 2: images 2, 3, 4, 6 (4 positives); 0, 1, 5, 7 negatives.
REFERABLE_TARGETS = np.array([0, 1, 2, 3, 4, 0, 2, 1])
P_REFERABLE = np.array([0.1, 0.6, 0.9, 0.4, 0.8, 0.2, 0.6, 0.3])


def with_referable_mass(p_referable):
    """Softmax rows putting 1 - p on grade 0 and p on grade 2, so P(grade >= 2) = p exactly."""
    probabilities = np.zeros((len(p_referable), 5))
    probabilities[:, 0] = 1 - p_referable
    probabilities[:, 2] = p_referable
    return probabilities


def pairwise_auc(labels, scores):
    """AUC from its definition: the share of (positive, negative) pairs ranked right, ties 1/2."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_referable_metrics_worked_by_hand():
    metrics = referable_metrics(REFERABLE_TARGETS, with_referable_mass(P_REFERABLE), threshold=0.5)
    # Called referable (p >= 0.5): images 1, 2, 4, 6.
    # Positives 2, 4, 6 called, 3 (p=0.4) missed -> sensitivity 3/4.
    # Negatives 0, 5, 7 not called, 1 (p=0.6) called -> specificity 3/4.
    assert metrics["referable_sensitivity"] == pytest.approx(3 / 4)
    assert metrics["referable_specificity"] == pytest.approx(3 / 4)
    # Positive scores 0.9, 0.8, 0.6, 0.4 against negatives 0.1, 0.2, 0.3, 0.6:
    # 0.9 and 0.8 beat all 4 (8); 0.6 beats 3 and ties 1 (3.5); 0.4 beats 3 (3) -> 14.5 / 16.
    assert metrics["referable_auc"] == pytest.approx(14.5 / 16)
    assert metrics["referable_auc"] == pytest.approx(pairwise_auc((REFERABLE_TARGETS >= 2).astype(int), P_REFERABLE))


def test_referable_threshold_is_inclusive():
    # At 0.6 the two p=0.6 images (1: negative, 6: positive) are still called: same as at 0.5.
    at_06 = referable_metrics(REFERABLE_TARGETS, with_referable_mass(P_REFERABLE), threshold=0.6)
    assert (at_06["referable_sensitivity"], at_06["referable_specificity"]) == pytest.approx((3 / 4, 3 / 4))
    # At 0.65 only 2 and 4 are called: sensitivity 2/4, every negative cleared.
    at_065 = referable_metrics(REFERABLE_TARGETS, with_referable_mass(P_REFERABLE), threshold=0.65)
    assert (at_065["referable_sensitivity"], at_065["referable_specificity"]) == pytest.approx((1 / 2, 1))
    assert at_065["referable_auc"] == at_06["referable_auc"]  # AUC does not depend on the threshold


def test_referable_probability_sums_grades_2_to_4():
    probabilities = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.1, 0.6, 0.1, 0.1, 0.1]])
    # Image 0: argmax grade 0 but P(>= 2) = 0.3; image 1: argmax grade 1, P(>= 2) = 0.3 as well.
    metrics = referable_metrics(np.array([3, 0]), probabilities, threshold=0.3)
    assert metrics["referable_sensitivity"] == 1.0 and metrics["referable_specificity"] == 0.0


def test_referable_auc_is_nan_with_a_single_class():
    metrics = referable_metrics(np.array([0, 1, 0, 1]), with_referable_mass(np.array([0.1, 0.7, 0.3, 0.2])))
    assert np.isnan(metrics["referable_auc"])
    assert np.isnan(metrics["referable_sensitivity"])  # no referable image: undefined, not 0
    assert metrics["referable_specificity"] == pytest.approx(3 / 4)
    only_referable = referable_metrics(np.array([2, 4]), with_referable_mass(np.array([0.9, 0.4])))
    assert np.isnan(only_referable["referable_auc"]) and np.isnan(only_referable["referable_specificity"])


def test_per_grade_metrics_worked_by_hand():
    targets = np.array([0, 0, 1, 2, 2, 2, 4, 4])
    predictions = np.array([0, 1, 1, 2, 2, 0, 4, 3])
    metrics = per_grade_metrics(targets, one_hot(predictions))
    # grade: (predicted as it -> of those right), (truly it -> of those found)
    # 0: predicted at 0, 5 -> 1 right = 1/2; true at 0, 1 -> found 0 = 1/2
    # 1: predicted at 1, 2 -> 1 right = 1/2; true at 2 -> found = 1
    # 2: predicted at 3, 4 -> both right = 1; true at 3, 4, 5 -> found 2 = 2/3
    # 3: predicted at 7 (a 4) -> 0; never true -> recall 0 by the zero_division convention
    # 4: predicted at 6 -> right = 1; true at 6, 7 -> found 1 = 1/2
    expected_precision = [1 / 2, 1 / 2, 1, 0, 1]
    expected_recall = [1 / 2, 1, 2 / 3, 0, 1 / 2]
    for grade in range(5):
        assert metrics[f"precision_grade_{grade}"] == pytest.approx(expected_precision[grade])
        assert metrics[f"recall_grade_{grade}"] == pytest.approx(expected_recall[grade])
    assert len(metrics) == 10


def test_all_metrics_is_the_union():
    targets, probabilities = REFERABLE_TARGETS, with_referable_mass(P_REFERABLE)
    parts = [classification_metrics(targets, probabilities), referable_metrics(targets, probabilities),
             per_grade_metrics(targets, probabilities)]
    combined = all_metrics(targets, probabilities)
    assert len(combined) == sum(len(part) for part in parts) == 17  # no name collides
    for part in parts:
        assert {name: combined[name] for name in part} == part
    assert all(isinstance(value, float) for value in combined.values())  # loggable as is


def noisy_predictions(n, seed, skill=1.5):
    """Targets over all grades and softmax rows leaning towards the true grade."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5))
    logits[np.arange(n), targets] += skill
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return targets, probabilities


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_bootstrap_is_deterministic_per_seed():
    targets, probabilities = noisy_predictions(60, seed=1)
    first = bootstrap_intervals(targets, probabilities, n_resamples=50, seed=7)
    assert first == bootstrap_intervals(targets, probabilities, n_resamples=50, seed=7)
    assert first != bootstrap_intervals(targets, probabilities, n_resamples=50, seed=8)
    assert set(first) == set(all_metrics(targets, probabilities))


def test_bootstrap_interval_of_accuracy_is_the_binomial_one():
    """The images are independent here, so accuracy's 95% interval is known without resampling:
    p +- 1.96 sqrt(p (1 - p) / n). The percentile bootstrap must land on it (to its own Monte
    Carlo error, ~0.006 at 1000 resamples; the seed is fixed)."""
    targets, probabilities = noisy_predictions(200, seed=2)

    def accuracy_of(targets, probabilities):
        return {"accuracy": float((probabilities.argmax(axis=1) == targets).mean())}

    accuracy = classification_metrics(targets, probabilities)["accuracy"]
    low, high = bootstrap_intervals(targets, probabilities, n_resamples=1000, seed=0,
                                    metric_fn=accuracy_of)["accuracy"]
    half_width = 1.96 * np.sqrt(accuracy * (1 - accuracy) / len(targets))
    assert 0.05 < half_width < 0.1  # a real interval on these predictions
    assert low == pytest.approx(accuracy - half_width, abs=0.01)
    assert high == pytest.approx(accuracy + half_width, abs=0.01)


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_bootstrap_narrows_with_more_data():
    def width(n):
        targets, probabilities = noisy_predictions(n, seed=3)
        low, high = bootstrap_intervals(targets, probabilities, n_resamples=200, seed=0,
                                        metric_fn=classification_metrics)["accuracy"]
        return high - low

    # Width goes as 1/sqrt(n): 16x the images should give about a quarter of the width.
    assert width(1600) < 0.5 * width(100)


def rounded_predictions(n, seed, decimals):
    """``noisy_predictions`` rounded to ``decimals`` (many tied scores), renormalised."""
    targets, probabilities = noisy_predictions(n, seed)
    probabilities = np.round(probabilities, decimals) + 1e-3
    return targets, probabilities / probabilities.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n, seed, decimals, cut_points, threshold", [
    (40, 0, 1, None, 0.5),  # ties everywhere: the AUC's half credit and the calls at the threshold
    (12, 1, 2, None, 0.3),  # resamples without some grades, or without a referable eye
    (200, 2, 6, (0.6, 1.5, 2.4, 3.3), 0.45),  # grades cut on the expected grade
    (5, 3, 1, None, 0.5),  # five images: resamples of one grade, where kappa is undefined
])
def test_every_resample_at_once_gives_all_metrics_of_each_resample(n, seed, decimals, cut_points, threshold):
    """The bootstrap's vectorised metrics against scikit-learn's, called on every resample's images."""
    targets, probabilities = rounded_predictions(n, seed, decimals)
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=60)
    at_once = resampled_all_metrics(targets, probabilities, draws, threshold=threshold, cut_points=cut_points)
    one_by_one = each_resample(lambda t, p: all_metrics(t, p, threshold, cut_points))(targets, probabilities, draws)
    assert set(at_once) == set(one_by_one) == set(all_metrics(targets, probabilities))
    for name, expected in one_by_one.items():
        np.testing.assert_allclose(at_once[name], expected, rtol=1e-12, atol=1e-12, err_msg=name)
    undefined = {name for name, values in one_by_one.items() if np.isnan(values).any()}
    if n <= 12:  # the small sets reach the undefined cases this test is for
        assert {"referable_auc", "kappa"} & undefined, undefined


@pytest.mark.parametrize("n, seed, decimals, grouping, block", [
    (40, 0, 1, "image", None),  # tied confidences across bins' edges
    (200, 2, 6, "patient", None),  # two eyes a patient
    (200, 2, 6, "uneven", None),  # groups of 1 to ~6 photos: resamples of different sizes
    (200, 2, 6, "uneven", 1000),  # the resamples taken a few at a time
    (5, 3, 1, "image", None),  # fewer photos than bins in every resample
    (1, 4, 2, "image", None),  # one photo
])
def test_every_resample_at_once_gives_the_calibration_of_each_resample(monkeypatch, n, seed, decimals, grouping, block):
    """The bootstrap's vectorised ECE, Brier score and NLL against ``calibration_metrics`` on every
    resample's photos (its equal-mass bins split as np.array_split splits them)."""
    if block:
        monkeypatch.setattr("pipeline.metrics._RESAMPLE_BLOCK", block)
    targets, probabilities = rounded_predictions(n, seed, decimals)
    groups = {"image": np.arange(n), "patient": np.arange(n) // 2,
              "uneven": np.random.default_rng(seed).integers(0, max(1, n // 3), n)}[grouping]
    draws = _resample_weights(groups, 60, np.random.default_rng(seed))
    if grouping == "uneven":
        assert len(np.unique(draws.sum(axis=1))) > 1
    at_once = resampled_calibration_metrics(targets, probabilities, draws)
    one_by_one = each_resample(calibration_metrics)(targets, probabilities, draws)
    assert set(at_once) == set(one_by_one) == {"ece", "referable_ece", "brier", "nll"}
    for name, expected in one_by_one.items():
        np.testing.assert_allclose(at_once[name], expected, rtol=1e-12, atol=1e-12, err_msg=name)
    assert np.ptp(at_once["ece"]) > 0 or n == 1  # the resamples differ: not one value copied


def test_a_resample_that_draws_non_finite_probabilities_has_no_calibration():
    targets, probabilities = noisy_predictions(12, seed=6)
    probabilities[3] = np.nan  # a diverged model's photo
    draws = np.random.default_rng(1).multinomial(12, np.full(12, 1 / 12), size=40)
    at_once = resampled_calibration_metrics(targets, probabilities, draws)
    drew_it = draws[:, 3] > 0
    assert drew_it.any() and (~drew_it).any()
    for name, expected in each_resample(calibration_metrics)(targets, probabilities, draws).items():
        assert np.isnan(at_once[name][drew_it]).all(), name
        np.testing.assert_allclose(at_once[name][~drew_it], expected[~drew_it], rtol=1e-12, err_msg=name)


def test_non_finite_scores_leave_the_auc_undefined_in_every_resample():
    targets, probabilities = noisy_predictions(30, seed=4)
    probabilities[3] = np.nan
    draws = np.random.default_rng(0).multinomial(30, np.full(30, 1 / 30), size=20)
    assert np.isnan(resampled_all_metrics(targets, probabilities, draws)["referable_auc"]).all()


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_intervals_of_all_metrics_are_the_same_at_once_or_one_by_one():
    targets, probabilities = noisy_predictions(80, seed=5)
    patients = np.arange(80) // 2
    one_by_one = bootstrap_intervals(targets, probabilities, groups=patients, n_resamples=200, seed=3)
    at_once = bootstrap_intervals(targets, probabilities, groups=patients, n_resamples=200, seed=3,
                                  resampled_fn=resampled_all_metrics)
    assert set(at_once) == set(one_by_one)
    for name in one_by_one:
        assert at_once[name] == pytest.approx(one_by_one[name], abs=1e-12), name


def recording_metric(log):
    """A metric_fn that records which images (ids carried in column 0) each resample drew."""
    def metric_fn(targets, probabilities):
        log.append(probabilities[:, 0].astype(int))
        return {"size": float(len(targets))}
    return metric_fn


def test_bootstrap_resamples_whole_patients():
    n_patients = 20
    ids = np.arange(2 * n_patients)
    patients = ids // 2  # images 2k and 2k+1 are the two eyes of patient k
    carrier = np.column_stack([ids, np.zeros((len(ids), 4))])
    draws = []
    bootstrap_intervals(np.zeros(len(ids), int), carrier, groups=patients, n_resamples=100,
                        metric_fn=recording_metric(draws))
    resamples = draws[1:]  # the first call is on the full sample
    assert len(resamples) == 100
    for drawn in resamples:
        counts = np.bincount(drawn, minlength=len(ids))
        assert (counts[0::2] == counts[1::2]).all()  # both eyes equally often, in or out together
        assert len(drawn) == len(ids)  # n_patients patients drawn, two eyes each
    # It is resampling, not a copy: some patients left out, some drawn twice or more.
    all_counts = np.array([np.bincount(d, minlength=len(ids)) for d in resamples])
    assert (all_counts == 0).any() and (all_counts >= 2).any()

    # Without groups the eyes come apart, which shows the check above can fail.
    draws.clear()
    bootstrap_intervals(np.zeros(len(ids), int), carrier, n_resamples=20, metric_fn=recording_metric(draws))
    assert any((np.bincount(d, minlength=len(ids))[0::2] != np.bincount(d, minlength=len(ids))[1::2]).any()
               for d in draws[1:])


def test_bootstrap_groups_of_unequal_size():
    # Patient "b" has one eye only; string ids work as well as integers.
    groups = np.array(["a", "a", "b", "c", "c"])
    carrier = np.column_stack([np.arange(5), np.zeros((5, 4))])
    draws = []
    bootstrap_intervals(np.zeros(5, int), carrier, groups=groups, n_resamples=50, metric_fn=recording_metric(draws))
    for drawn in draws[1:]:
        counts = np.bincount(drawn, minlength=5)
        assert counts[0] == counts[1] and counts[3] == counts[4]
        assert counts[[0, 2, 3]].sum() == 3  # three patients drawn per resample


def test_bootstrap_skips_undefined_resamples_per_metric():
    # One referable image out of ten: about a third of the resamples miss it and have no AUC.
    targets = np.array([0, 0, 1, 0, 1, 0, 0, 1, 3, 0])
    p_referable = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.5, 0.2, 0.3, 0.7, 0.6])
    intervals = bootstrap_intervals(targets, with_referable_mass(p_referable), n_resamples=100,
                                    metric_fn=referable_metrics)
    low, high = intervals["referable_auc"]
    assert 0 <= low <= high <= 1
    assert not np.isnan(intervals["referable_specificity"]).any()

    def partly_undefined(targets, probabilities):
        return {"never": float("nan"), "mean": float(targets.mean())}

    never = bootstrap_intervals(targets, with_referable_mass(p_referable), n_resamples=20, metric_fn=partly_undefined)
    assert np.isnan(never["never"]).all() and not np.isnan(never["mean"]).any()


def test_bootstrap_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="groups"):
        bootstrap_intervals(np.zeros(4, int), one_hot(np.zeros(4, int)), groups=np.arange(3))
    with pytest.raises(ValueError, match="targets"):
        bootstrap_intervals(np.zeros(4, int), one_hot(np.zeros(3, int)))


def test_non_finite_outputs_of_a_diverging_model_give_nan_auc_not_an_error():
    probabilities = np.full((4, 5), 0.2)
    probabilities[1] = np.nan
    metrics = epoch_metrics(np.array([0, 2, 3, 1]), probabilities)
    assert np.isnan(metrics["referable_auc"])
    assert np.isfinite(metrics["kappa"])


def test_operating_threshold_is_the_highest_that_reaches_the_sensitivity():
    # Referable scores (P(grade >= 2)) of the four referable images: 0.9, 0.8, 0.6, 0.4; every
    # score, highest first: 0.9, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1. Half-way to the next lower score:
    targets = REFERABLE_TARGETS
    probabilities = with_referable_mass(P_REFERABLE)
    assert operating_threshold(targets, probabilities, 0.5) == pytest.approx(0.7)  # 2 of 4 found
    assert operating_threshold(targets, probabilities, 0.75) == pytest.approx(0.5)  # 3 of 4
    assert operating_threshold(targets, probabilities, 0.9) == pytest.approx(0.35)  # all 4
    for target in (0.5, 0.75, 0.9):
        threshold = operating_threshold(targets, probabilities, target)
        assert referable_metrics(targets, probabilities, threshold)["referable_sensitivity"] >= target
        # and no higher threshold that changes a call reaches it: the next score up is the limit
        higher = min(s for s in P_REFERABLE if s > threshold) + 1e-9
        assert referable_metrics(targets, probabilities, higher)["referable_sensitivity"] < target


def test_operating_threshold_without_referable_images_or_finite_scores_is_nan():
    assert np.isnan(operating_threshold(np.array([0, 1, 0]), with_referable_mass(np.array([0.1, 0.6, 0.2])), 0.9))
    diverged = with_referable_mass(np.array([0.1, 0.6, 0.2]))
    diverged[1] = np.nan
    assert np.isnan(operating_threshold(np.array([0, 2, 3]), diverged, 0.9))


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_intervals_use_the_operating_point():
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 5, 60)
    probabilities = with_referable_mass(np.clip(targets / 4 + rng.normal(0, 0.2, 60), 0, 1))
    strict, _ = metrics_with_intervals(targets, probabilities, np.arange(60), threshold=0.9, resamples=0, seed=0)
    lenient, intervals = metrics_with_intervals(targets, probabilities, np.arange(60), threshold=0.2,
                                                resamples=200, seed=0)
    assert strict["referable_sensitivity"] < lenient["referable_sensitivity"]
    low, high = intervals["referable_sensitivity"]
    assert low <= lenient["referable_sensitivity"] <= high


def test_balanced_accuracy_of_a_set_missing_a_grade_is_quiet_and_over_the_grades_present():
    import warnings

    from pipeline.metrics import classification_metrics

    targets = np.array([0, 0, 2, 2])
    probabilities = np.eye(5)[[0, 4, 2, 2]]  # one grade-0 eye called grade 4, absent from the set
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(targets, probabilities)
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
