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
# Candidate positions of one cut point per search step: every gap between distinct expected grades
# on a small validation set, quantiles of them on a large one (each step scores every candidate).
MAX_CANDIDATES = 200
MAX_ROUNDS = 10  # coordinate ascent passes over the four cut points; it converges in 2-4 here
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
_QUADRATIC_WEIGHTS = (np.arange(NUM_GRADES)[:, None] - np.arange(NUM_GRADES)[None, :]) ** 2


def search_kappa(targets: np.ndarray, grades: np.ndarray) -> float:
    """``quadratic_kappa`` from one bincount: the cut point search scores thousands of candidate
    decisions, where sklearn's per-call overhead (~0.3 ms) would be most of its time. A test
    keeps the two equal."""
    observed = np.bincount(targets * NUM_GRADES + grades, minlength=NUM_GRADES ** 2).reshape(NUM_GRADES, NUM_GRADES)
    chance = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    disagreement = (_QUADRATIC_WEIGHTS * chance).sum()
    return 0.0 if disagreement == 0 else float(1 - (_QUADRATIC_WEIGHTS * observed).sum() / disagreement)


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
    """Cut points on the expected grade that maximise QWK on these images (the validation set).

    Coordinate ascent: each cut point in turn moves to the best of the candidate positions between
    its neighbours, until a full pass changes nothing. It starts from the midpoints (0.5, ..., 3.5)
    and from the cut points that reproduce argmax's share of each grade, and keeps the better.

    Returns:
        The cut points, or None when they score below argmax here (argmax is not a set of cut
        points on the expected grade, so no search start contains it): the decision then stays
        argmax, and cut points never do worse than argmax on the set they were fitted on.
    """
    targets = np.asarray(targets)
    expected = expected_grade(probabilities)
    if not np.isfinite(expected).all() or len(targets) == 0:
        return None
    argmax_grades = predicted_grades(probabilities)
    argmax_kappa = quadratic_kappa(targets, argmax_grades)
    candidates = _candidates(expected)
    fitted = [_ascend(targets, expected, start, candidates)
              for start in (MIDPOINT_CUTS, _share_matching_cuts(expected, argmax_grades))]
    cuts = max(fitted, key=lambda pair: pair[0])[1]
    kappa = quadratic_kappa(targets, predicted_grades(probabilities, cuts))
    log.info("cut points %s on the expected grade: QWK %.4f on the fitting set (argmax %.4f)",
             ", ".join(f"{c:.3f}" for c in cuts), kappa, argmax_kappa)
    if kappa < argmax_kappa:
        log.warning("no cut points beat argmax on validation (QWK %.4f < %.4f): the decision stays argmax",
                    kappa, argmax_kappa)
        return None
    return cuts


def _candidates(expected: np.ndarray) -> np.ndarray:
    values = np.unique(expected)
    if len(values) > MAX_CANDIDATES:
        values = np.unique(np.quantile(values, np.linspace(0, 1, MAX_CANDIDATES)))
    # Midway between neighbours (no image sits on a cut point), plus one below and one above all.
    between = (values[1:] + values[:-1]) / 2
    return np.concatenate([[values[0] - 0.5], between, [values[-1] + 0.5]])


def _share_matching_cuts(expected: np.ndarray, argmax_grades: np.ndarray) -> CutPoints:
    """Cut points that give each grade as many images as argmax gives it."""
    shares = np.cumsum(np.bincount(argmax_grades, minlength=NUM_GRADES))[:-1] / len(expected)
    return tuple(float(q) for q in np.quantile(expected, shares))


def _ascend(targets: np.ndarray, expected: np.ndarray, start: CutPoints, candidates: np.ndarray
            ) -> tuple[float, CutPoints]:
    cuts = list(start)
    best = search_kappa(targets, np.searchsorted(cuts, expected, side="right"))
    for _ in range(MAX_ROUNDS):
        moved = False
        for k in range(len(cuts)):
            low = cuts[k - 1] if k > 0 else -np.inf
            high = cuts[k + 1] if k + 1 < len(cuts) else np.inf
            for candidate in candidates[(candidates >= low) & (candidates <= high)]:
                trial = [*cuts[:k], float(candidate), *cuts[k + 1:]]
                kappa = search_kappa(targets, np.searchsorted(trial, expected, side="right"))
                if kappa > best:  # strictly: a tie keeps the current position
                    best, cuts, moved = kappa, trial, True
        if not moved:
            break
    return best, tuple(float(c) for c in cuts)


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
