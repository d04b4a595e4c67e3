"""From grade probabilities to a grade: the labs' argmax, or the field's cut points on the expected
grade fitted for quadratic weighted kappa (QWK), and the blend of a patient's two eyes.

All of it is fitted on the validation set once the best epoch is chosen, and travels with the
grader (``grading.GraderSpec``), so evaluate, predict and the served model decide the same way.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score

from pipeline.catalog import GRADES, NUM_GRADES

log = logging.getLogger(__name__)

CutPoints = tuple[float, ...]  # t_1 <= ... <= t_4: grade >= k where the expected grade reaches t_k
# The cut points argmax would be, were the probabilities of a grade peaked around it.
MIDPOINT_CUTS: CutPoints = tuple(grade + 0.5 for grade in range(NUM_GRADES - 1))
# Dinkelbach rounds of the cut point search: each strictly raises QWK; it converges in 2-5 here.
MAX_ROUNDS = 50
# Weights of the fellow eye tried on validation: 0 (each eye alone) up to 0.5 (the mean of both).
FUSE_WEIGHTS = tuple(np.round(np.linspace(0.0, 0.5, 11), 2))


def quadratic_kappa(targets: np.ndarray, grades: np.ndarray) -> float:
    """QWK over the five grades; 0 where it is undefined (one grade only, on both sides)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # 0/0 on a constant prediction
        kappa = cohen_kappa_score(targets, grades, labels=list(GRADES), weights="quadratic")
    return 0.0 if np.isnan(kappa) else float(kappa)


# (i - j)^2 for true grade i and decided grade j: QWK's disagreement weights.
QUADRATIC_WEIGHTS = (np.arange(NUM_GRADES)[:, None] - np.arange(NUM_GRADES)[None, :]) ** 2


def expected_grade(probabilities: np.ndarray) -> np.ndarray:
    """sum_k k * p_k per image: the mean grade under the model's probabilities."""
    return np.asarray(probabilities, dtype=np.float64) @ np.arange(NUM_GRADES)


def predicted_grades(probabilities: np.ndarray, cut_points: CutPoints | None = None) -> np.ndarray:
    """The grade of every row: argmax without ``cut_points``, else the number of cut points its
    expected grade reaches."""
    probabilities = np.asarray(probabilities)
    if cut_points is None:
        return probabilities.argmax(axis=1)
    return np.searchsorted(np.asarray(cut_points, dtype=np.float64), expected_grade(probabilities), side="right")


def fit_cut_points(targets: np.ndarray, probabilities: np.ndarray) -> CutPoints | None:
    """Cut points on the expected grade that maximise QWK on these images (the validation set):
    the best of every way to cut them, in order of expected grade, into five consecutive grades
    (``best_cut_points``).

    Returns:
        The cut points, or None when they score below argmax here (argmax is not a set of cut
        points on the expected grade, so the search cannot contain it): the decision then stays
        argmax, and cut points never do worse than argmax on the set they were fitted on.
    """
    targets = np.asarray(targets)
    expected = expected_grade(probabilities)
    if not np.isfinite(expected).all() or len(targets) == 0:
        return None
    argmax_kappa = quadratic_kappa(targets, predicted_grades(probabilities))
    cuts = best_cut_points(targets, expected)
    kappa = quadratic_kappa(targets, predicted_grades(probabilities, cuts))
    log.info("cut points %s on the expected grade: QWK %.4f on the fitting set (argmax %.4f)",
             ", ".join(f"{c:.3f}" for c in cuts), kappa, argmax_kappa)
    if kappa < argmax_kappa:
        log.warning("no cut points beat argmax on validation (QWK %.4f < %.4f): the decision stays argmax",
                    kappa, argmax_kappa)
        return None
    return cuts


def best_cut_points(targets: np.ndarray, expected: np.ndarray) -> CutPoints:
    """The cut points of the highest QWK, exactly: no search start or grid can miss it.

    QWK = 1 - O / E, where O sums each image's weight w(true grade, decided grade) and E sums each
    image's chance weight e(decided grade) = sum_i w(i, decided) * n_i / n (n_i: the images of true
    grade i, fixed). Both are sums over images, so for a fixed ``ratio`` the decision minimising
    O - ratio * E is one dynamic programme over the images in order of expected grade
    (``_cheapest_ordered_grades``); Dinkelbach's iteration (ratio = O / E of the last decision)
    lowers O / E to its minimum, QWK's maximum, in a few rounds. Images of equal expected grade
    share a grade (no cut point can part them); each cut point lies midway between neighbours.
    """
    values, group = np.unique(expected, return_inverse=True)
    true_counts = np.zeros((len(values), NUM_GRADES))
    np.add.at(true_counts, (group, targets), 1)
    observed = true_counts @ QUADRATIC_WEIGHTS  # (group, decided grade): the group's O if decided so
    chance_weight = np.bincount(targets, minlength=NUM_GRADES) @ QUADRATIC_WEIGHTS / len(targets)
    chance = true_counts.sum(axis=1, keepdims=True) * chance_weight  # the group's E if decided so
    rows = np.arange(len(values))
    grades = np.searchsorted(MIDPOINT_CUTS, values, side="right")
    for _ in range(MAX_ROUNDS):
        disagreement = chance[rows, grades].sum()
        if disagreement == 0:  # one true grade only: QWK is 0 whatever the decision
            break
        ratio = observed[rows, grades].sum() / disagreement
        cost = observed - ratio * chance  # O - ratio * E of each group at each grade
        candidate = _cheapest_ordered_grades(cost)
        if cost[rows, candidate].sum() >= -1e-12 * disagreement:
            break  # nothing lowers O / E below ratio: the decision is optimal
        grades = candidate
    return _cuts_between(values, grades)


def _cheapest_ordered_grades(cost: np.ndarray) -> np.ndarray:
    """The non-decreasing grades (one per row, in row order) of least total ``cost[row, grade]``."""
    rows, grade_index = len(cost), np.arange(NUM_GRADES)
    total = cost[0].copy()
    came_from = np.zeros((rows, NUM_GRADES), dtype=np.int64)
    for row in range(1, rows):
        # The cheapest way to end the previous row at a grade <= g, for every g, and that grade.
        best_before = np.minimum.accumulate(total)
        lowers = np.concatenate([[True], total[1:] < best_before[:-1]])
        came_from[row] = np.maximum.accumulate(np.where(lowers, grade_index, 0))
        total = best_before + cost[row]
    grades = np.empty(rows, dtype=np.int64)
    grades[-1] = int(np.argmin(total))
    for row in range(rows - 1, 0, -1):
        grades[row - 1] = came_from[row, grades[row]]
    return grades


def _cuts_between(values: np.ndarray, grades: np.ndarray) -> CutPoints:
    """The cut points that decide ``grades`` for the sorted distinct ``values``: t_k midway between
    the last value below grade k and the first at or above it (0.5 beyond the ends)."""
    cuts = []
    for k in range(1, NUM_GRADES):
        first = int(np.searchsorted(grades, k, side="left"))  # grades are sorted
        if first == 0:
            cuts.append(float(values[0] - 0.5))
        elif first == len(values):
            cuts.append(float(values[-1] + 0.5))
        else:
            midway = (values[first - 1] + values[first]) / 2
            # Two values a rounding step apart have no number between them: cut at the upper one.
            cuts.append(float(midway if midway > values[first - 1] else values[first]))
    return tuple(cuts)


def fellow_eye_probabilities(probabilities: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every photo, the mean probabilities of the *other* photos of the same patient (its
    fellow eye), and whether it has one. Photos of other patients never enter."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    groups = pd.DataFrame(probabilities).groupby(np.asarray(patients), sort=False)
    totals = groups.transform("sum").to_numpy()
    counts = groups[0].transform("size").to_numpy()
    has_fellow = counts > 1
    fellows = np.zeros_like(probabilities)
    fellows[has_fellow] = (totals[has_fellow] - probabilities[has_fellow]) / (counts[has_fellow] - 1)[:, None]
    return fellows, has_fellow


def fuse_eyes(probabilities: np.ndarray, patients: np.ndarray, weight: float) -> np.ndarray:
    """Each photo's probabilities blended with its fellow eye's: (1 - weight) * own + weight * fellow.

    A photo whose patient has no other photo here keeps its own probabilities.
    """
    if weight == 0:
        return np.asarray(probabilities)
    return _blend(probabilities, *fellow_eye_probabilities(probabilities, patients), weight)


def _blend(probabilities: np.ndarray, fellows: np.ndarray, has_fellow: np.ndarray, weight: float) -> np.ndarray:
    if weight == 0:  # each eye alone, exactly (no 0 * a diverged fellow's NaN)
        return np.asarray(probabilities)
    fused = np.array(probabilities, dtype=np.float64)
    fused[has_fellow] = (1 - weight) * fused[has_fellow] + weight * fellows[has_fellow]
    return fused.astype(np.asarray(probabilities).dtype)


def fit_fuse_weight(targets: np.ndarray, probabilities: np.ndarray, patients: np.ndarray,
                    cut_points: CutPoints | None = None) -> float:
    """The fellow eye's weight (of ``FUSE_WEIGHTS``) whose blend gets the best QWK here under the
    grader's decision (argmax, or ``cut_points``); the smallest on a tie, and 0 when no patient
    has two photos."""
    fellows, has_fellow = fellow_eye_probabilities(probabilities, patients)  # once, for every weight tried
    if not has_fellow.any():
        log.warning("no patient has two photos in the validation set: eyes are not fused")
        return 0.0
    scores = [quadratic_kappa(targets, predicted_grades(_blend(probabilities, fellows, has_fellow, w), cut_points))
              for w in FUSE_WEIGHTS]
    best = int(np.argmax(scores))
    log.info("fellow eye's weight %.2f: QWK %.4f on the fitting set (each eye alone %.4f)",
             FUSE_WEIGHTS[best], scores[best], scores[0])
    return float(FUSE_WEIGHTS[best])
