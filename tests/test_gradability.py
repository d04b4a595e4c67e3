"""The gradability checks and their thresholds, on constructed measures and features."""

import numpy as np
import pytest

from pipeline.catalog import UNGRADABLE_REASONS
from pipeline.gradability import (
    MIN_OVEREXPOSED,
    REJECT_SHARE,
    ROBUST_SPREADS,
    GradabilityThresholds,
    NoveltyModel,
    fit_thresholds,
    lower_threshold,
    reasons,
    upper_threshold,
)


def test_a_threshold_rejects_at_most_its_share_and_keeps_its_distance_from_the_median():
    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(np.log(100), 0.1, 10000))  # log-normal: robust spread 0.1
    low, high = lower_threshold(values), upper_threshold(values)
    assert (values < low).mean() <= REJECT_SHARE and (values > high).mean() <= REJECT_SHARE
    # Four robust spreads of 0.1 from the median on the log scale: exp(+-0.4), ~0.67x and 1.49x.
    assert low == pytest.approx(100 * np.exp(-ROBUST_SPREADS * 0.1), rel=0.03)
    assert high == pytest.approx(100 * np.exp(ROBUST_SPREADS * 0.1), rel=0.03)


def test_on_a_few_photos_the_threshold_is_the_quantile_when_that_is_further_out():
    values = np.array([50, 100, 101, 102, 103, 104, 105, 106, 107, 108.0])
    # median - 4 robust spreads is ~93 here; the 0.5% quantile lies just above the outlier, lower.
    assert 50 < lower_threshold(values) < 55


def test_thresholds_fitted_on_photos_with_no_burnt_out_pixels_keep_the_floor():
    measures = np.column_stack([np.full(50, 90.0), np.zeros(50), np.full(50, 3.0), np.full(50, 20.0)])
    thresholds = fit_thresholds(measures, novelty=None)
    assert thresholds.max_overexposed == MIN_OVEREXPOSED and thresholds.max_novelty is None
    assert thresholds.min_brightness == pytest.approx(90.0) and thresholds.min_focus == pytest.approx(3.0)


def test_the_first_failing_check_names_the_reason():
    thresholds = GradabilityThresholds(min_brightness=40, max_overexposed=5, min_focus=1, min_contrast=10, max_novelty=3)
    measures = np.array([
        [80, 0, 2, 20],   # fine
        [20, 9, 0.5, 5],  # dark, burnt, blurred, flat: dark first
        [80, 9, 0.5, 5],  # burnt first
        [80, 0, 0.5, 5],  # blurred first
        [80, 0, 2, 5],    # flat
        [80, 0, 2, 20],   # unlike
    ])
    novelty = np.array([1, 9, 9, 9, 9, 9])
    assert reasons(measures, novelty, thresholds) == ["", "too dark", "over-exposed", "out of focus", "low contrast",
                                                      "unlike the training photos"]
    assert reasons(measures, None, None) == [""] * 6  # a grader from before the checks
    assert UNGRADABLE_REASONS[:2] == ("not a fundus photograph", "unreadable photo")


def test_the_novelty_distance_is_the_mahalanobis_distance_to_the_nearest_grade():
    """Two grades around (0, 0) and (10, 0) with independent unit spreads: the distance of a point
    to the nearer mean is its Euclidean distance there (Ledoit-Wolf barely shrinks 4000 photos)."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal([0, 0], 1, (2000, 2)), rng.normal([10, 0], 1, (2000, 2))])
    grades = np.repeat([0, 3], 2000)
    model = NoveltyModel.fit(features, grades)
    points = np.array([[0.0, 0.0], [10.0, 3.0], [5.0, 0.0], [0.0, -20.0]])
    assert model.distance(points) == pytest.approx([0.0, 3.0, 5.0, 20.0], abs=0.15)
    stretched = NoveltyModel.fit(features * [1, 4], grades)  # four times the spread along y
    assert stretched.distance(np.array([[0.0, 12.0]])) == pytest.approx([3.0], abs=0.15)
    assert NoveltyModel.from_arrays(model.to_arrays()).distance(points) == pytest.approx(model.distance(points))
