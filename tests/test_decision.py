"""Deciding a grade: cut points on the expected grade fitted for QWK, and the fellow eye's blend."""

import itertools

import numpy as np
import pytest

from pipeline.decision import (
    FUSE_WEIGHTS,
    MIDPOINT_CUTS,
    best_cut_points,
    expected_grade,
    fit_cut_points,
    fit_fuse_weight,
    fuse_eyes,
    predicted_grades,
    quadratic_kappa,
)


def test_cut_points_count_the_cuts_the_expected_grade_reaches():
    probabilities = np.array([
        [0.10, 0.30, 0.25, 0.20, 0.15],  # expected grade 0.3 + 0.5 + 0.6 + 0.6 = 2.0, argmax 1
        [0.90, 0.10, 0.00, 0.00, 0.00],  # 0.1
        [0.00, 0.00, 0.00, 0.50, 0.50],  # 3.5: on the last cut point counts as reaching it
    ])
    assert expected_grade(probabilities) == pytest.approx([2.0, 0.1, 3.5])
    assert predicted_grades(probabilities).tolist() == [1, 0, 3]
    assert predicted_grades(probabilities, MIDPOINT_CUTS).tolist() == [2, 0, 4]
    assert predicted_grades(probabilities, (0.05, 2.5, 2.6, 3.6)).tolist() == [1, 1, 3]


def underconfident_case(rng: np.random.Generator, images: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Grade 0 is always the most probable, but the rest of the mass leans towards the true grade:
    argmax says 0 for every image, the expected grade still orders them."""
    targets = rng.integers(0, 5, size=images)
    probabilities = np.full((images, 5), 0.1)
    probabilities[:, 0] = 0.4
    probabilities[np.arange(images), np.maximum(targets, 1)] += 0.2
    probabilities += rng.uniform(0, 0.02, size=probabilities.shape)
    return targets, probabilities / probabilities.sum(axis=1, keepdims=True)


def test_cut_points_raise_qwk_where_argmax_is_underconfident():
    targets, probabilities = underconfident_case(np.random.default_rng(0))
    argmax_kappa = quadratic_kappa(targets, predicted_grades(probabilities))
    cuts = fit_cut_points(targets, probabilities)
    assert cuts is not None and list(cuts) == sorted(cuts)
    fitted_kappa = quadratic_kappa(targets, predicted_grades(probabilities, cuts))
    assert argmax_kappa == 0.0  # a constant prediction
    assert fitted_kappa > 0.8
    # And they carry to new images of the same kind (fitted on one draw, scored on another).
    new_targets, new_probabilities = underconfident_case(np.random.default_rng(1))
    assert quadratic_kappa(new_targets, predicted_grades(new_probabilities, cuts)) > 0.8


def exhaustive_best_kappa(targets: np.ndarray, expected: np.ndarray) -> float:
    """The best QWK of all cut points, found by trying every non-decreasing 4 of the positions that
    decide differently: each distinct expected grade (it and those above reach the cut) and one
    above them all."""
    values = np.unique(expected)
    positions = np.concatenate([values, [values[-1] + 1]])
    cuts = np.array(list(itertools.combinations_with_replacement(positions, 4)))  # (M, 4), sorted rows
    decided = (expected[None, :, None] >= cuts[:, None, :]).sum(axis=2)  # (M, images)
    # QWK of every row at once, from its confusion matrix, as sklearn defines it.
    confusion = np.zeros((len(cuts), 5, 5))
    np.add.at(confusion, (np.arange(len(cuts))[:, None], targets[None, :], decided), 1)
    weights = (np.arange(5)[:, None] - np.arange(5)[None, :]) ** 2
    chance = confusion.sum(axis=2)[:, :, None] * confusion.sum(axis=1)[:, None, :] / len(targets)
    disagreement = (weights * chance).sum(axis=(1, 2))
    kappa = np.where(disagreement > 0, 1 - (weights * confusion).sum(axis=(1, 2)) / np.maximum(disagreement, 1e-300), 0)
    return float(kappa.max())


def small_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """6-12 images of noisy, partly informative probabilities; every fourth case with expected
    grades rounded so some coincide (images no cut point can part)."""
    rng = np.random.default_rng(seed)
    images = int(rng.integers(6, 13))
    targets = rng.choice(5, size=images, p=[0.4, 0.15, 0.25, 0.1, 0.1])
    logits = rng.normal(0, rng.uniform(0.5, 3), size=(images, 5))
    logits[np.arange(images), targets] += rng.uniform(0, 2)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if seed % 4 == 3:
        probabilities = np.round(probabilities, 1) + 1e-3
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    return targets, probabilities


@pytest.mark.parametrize("seeds", [range(0, 50), range(50, 100), range(100, 150)])
def test_the_search_finds_the_best_cut_points_of_all(seeds):
    for seed in seeds:
        targets, probabilities = small_case(seed)
        expected = expected_grade(probabilities)
        found = quadratic_kappa(targets, predicted_grades(probabilities, best_cut_points(targets, expected)))
        assert found == pytest.approx(exhaustive_best_kappa(targets, expected), abs=1e-12), seed


def test_most_random_cases_do_get_cut_points():
    """Cut points are not always dropped for argmax on realistic sets."""
    fitted = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        targets = rng.choice(5, size=200, p=[0.73, 0.07, 0.15, 0.025, 0.025])
        logits = rng.normal(0, 1.5, size=(200, 5))
        logits[np.arange(200), targets] += 1.0
        cuts = fit_cut_points(targets, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
        fitted += cuts is not None
    assert fitted >= 9


def test_diverged_probabilities_keep_argmax():
    probabilities = np.full((4, 5), np.nan)
    assert fit_cut_points(np.array([0, 1, 2, 3]), probabilities) is None


PATIENTS = np.array(["7", "7", "8", "9", "9"])  # 7 and 9 have both eyes, 8 one


def probability_rows(rng: np.random.Generator) -> np.ndarray:
    rows = rng.uniform(0.05, 1, size=(len(PATIENTS), 5))
    return rows / rows.sum(axis=1, keepdims=True)


def test_fused_eyes_blend_only_the_same_patients_other_eye():
    rng = np.random.default_rng(0)
    probabilities = probability_rows(rng)
    fused = fuse_eyes(probabilities, PATIENTS, 0.3)
    assert fused[0] == pytest.approx(0.7 * probabilities[0] + 0.3 * probabilities[1])
    assert fused[1] == pytest.approx(0.7 * probabilities[1] + 0.3 * probabilities[0])
    assert fused[2] == pytest.approx(probabilities[2])  # patient 8 has no other photo
    assert fused[3] == pytest.approx(0.7 * probabilities[3] + 0.3 * probabilities[4])
    assert fused.sum(axis=1) == pytest.approx(np.ones(len(PATIENTS)))
    # Another patient's photos never reach patient 7's: change them all, 7's stay.
    others = probability_rows(rng)
    others[:2] = probabilities[:2]
    assert fuse_eyes(others, PATIENTS, 0.3)[:2] == pytest.approx(fused[:2])
    assert fuse_eyes(probabilities, PATIENTS, 0.0) == pytest.approx(probabilities)


def test_the_fellow_eyes_weight_is_chosen_where_it_helps():
    """Each patient's two eyes share a grade; one eye of each pair is a coin toss, the other sure:
    blending lets the sure eye correct the other, and QWK picks a weight above 0."""
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, size=100)
    targets = np.repeat(grades, 2)
    patients = np.repeat(np.arange(100).astype(str), 2)
    probabilities = np.full((200, 5), 0.05)
    probabilities[np.arange(0, 200, 2), grades] = 0.8  # the sure eye
    noisy = rng.uniform(0, 1, size=(100, 5))
    probabilities[1::2] = noisy / noisy.sum(axis=1, keepdims=True)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    weight = fit_fuse_weight(targets, probabilities, patients)
    assert weight in FUSE_WEIGHTS and weight > 0
    fused = fuse_eyes(probabilities, patients, weight)
    assert quadratic_kappa(targets, predicted_grades(fused)) > quadratic_kappa(targets, predicted_grades(probabilities))
    # Scored with cut points (the grader's decision under kappa_thresholds) the blend helps too.
    with_cuts = fit_fuse_weight(targets, probabilities, patients, MIDPOINT_CUTS)
    assert with_cuts > 0 and quadratic_kappa(targets, predicted_grades(fuse_eyes(probabilities, patients, with_cuts),
                                                                      MIDPOINT_CUTS)) > quadratic_kappa(
        targets, predicted_grades(probabilities, MIDPOINT_CUTS))
    # Without a second photo of any patient there is nothing to blend.
    assert fit_fuse_weight(targets, probabilities, np.arange(200).astype(str)) == 0.0
