"""Metrics from predictions, with scikit-learn doing the arithmetic: grading, referable DR,
per grade, and patient-level bootstrap confidence intervals. No plotting here (see ``figures``)."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable

import numpy as np
import sklearn
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from pipeline.calibration import negative_log_likelihood, true_grade_log_loss
from pipeline.catalog import DEFAULT_REFERABLE_THRESHOLD, GRADES, NUM_GRADES, REFERABLE_GRADE
from pipeline.decision import QUADRATIC_WEIGHTS, CutPoints, predicted_grades

log = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
# Every bootstrap resample's metrics at once: (targets, probabilities, draws) -> {name: values},
# where draws[r, i] is how often resample r drew image i and values[r] is its metric.
ResampledMetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


def classification_metrics(targets: np.ndarray, probabilities: np.ndarray,
                           cut_points: CutPoints | None = None) -> dict[str, float]:
    """Accuracy, quadratic weighted kappa (the EyePACS metric), balanced accuracy and macro-F1 of
    the grades argmax (or ``cut_points``, see ``decision``) gives."""
    predictions = predicted_grades(probabilities, cut_points)
    with warnings.catch_warnings():
        # A set without some grade (an external one, a small test split) gets predictions of it:
        # balanced accuracy is then over the grades present, which is what it should be.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(targets, predictions))
    return {
        "accuracy": float(accuracy_score(targets, predictions)),
        "kappa": float(cohen_kappa_score(targets, predictions, labels=list(GRADES), weights="quadratic")),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(targets, predictions, labels=list(GRADES), average="macro", zero_division=0)),
    }


def confusion_matrices(targets: np.ndarray, predictions: np.ndarray) -> dict[str, list]:
    """Counts and row-normalised (recall per true grade) matrices over all five grades."""
    counts = confusion_matrix(targets, predictions, labels=list(GRADES))
    normalized = confusion_matrix(targets, predictions, labels=list(GRADES), normalize="true")
    return {"labels": list(GRADES), "counts": counts.tolist(), "normalized": np.round(normalized, 4).tolist()}


def referable_targets(targets: np.ndarray) -> np.ndarray:
    """1 for an image whose true grade is referable (>= REFERABLE_GRADE), else 0."""
    return (np.asarray(targets) >= REFERABLE_GRADE).astype(int)


def referable_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(grade >= REFERABLE_GRADE) per image: the softmax mass of the referable grades."""
    return probabilities[:, REFERABLE_GRADE:].sum(axis=1)


def _referable_auc(referable: np.ndarray, scores: np.ndarray) -> float:
    # AUC is undefined with a single class, or when a diverging model output non-finite scores;
    # NaN lets bootstrap resamples without one class drop out.
    if np.unique(referable).size < 2 or not np.isfinite(scores).all():
        return float("nan")
    return float(roc_auc_score(referable, scores))


def referable_metrics(targets: np.ndarray, probabilities: np.ndarray,
                      threshold: float = DEFAULT_REFERABLE_THRESHOLD) -> dict[str, float]:
    """Referable DR (grade >= 2) as a binary screening decision.

    Args:
        targets: true grades, shape (N,).
        probabilities: softmax rows, shape (N, 5).
        threshold: an image is called referable when P(grade >= 2) >= threshold.

    Returns:
        ``referable_sensitivity``, ``referable_specificity`` (NaN when there are no referable,
        resp. no non-referable, images) and ``referable_auc`` (NaN when only one class is present).
    """
    referable = referable_targets(targets)
    scores = referable_probability(probabilities)
    called = (scores >= threshold).astype(int)
    # Specificity is the recall of the negative class: one call gives both (the bootstrap calls this
    # a thousand times, and sklearn's per-call validation is what costs).
    specificity, sensitivity = recall_score(referable, called, labels=[0, 1], average=None, zero_division=np.nan)
    return {
        "referable_sensitivity": float(sensitivity),
        "referable_specificity": float(specificity),
        "referable_auc": _referable_auc(referable, scores),
    }


def per_grade_metrics(targets: np.ndarray, probabilities: np.ndarray,
                      cut_points: CutPoints | None = None) -> dict[str, float]:
    """``precision_grade_{k}`` and ``recall_grade_{k}`` for every grade; 0 where undefined."""
    precision, recall, _, _ = precision_recall_fscore_support(
        targets, predicted_grades(probabilities, cut_points), labels=list(GRADES), zero_division=0)
    metrics: dict[str, float] = {}
    for grade in GRADES:
        metrics[f"precision_grade_{grade}"] = float(precision[grade])
        metrics[f"recall_grade_{grade}"] = float(recall[grade])
    return metrics


# Equal-mass bins of the expected calibration error: each holds a fifteenth of the photos.
CALIBRATION_BINS = 15


def expected_calibration_error(confidences: np.ndarray, outcomes: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE over equal-mass bins: the photos sorted by confidence, split into ``bins`` groups of
    (nearly) equal size; the mean over groups, weighted by their size, of |share of outcomes that
    happened - mean confidence|. NaN without photos."""
    confidences, outcomes = np.asarray(confidences, dtype=np.float64), np.asarray(outcomes, dtype=np.float64)
    if len(confidences) == 0:
        return float("nan")
    order = np.argsort(confidences, kind="stable")
    groups = np.array_split(order, min(bins, len(order)))
    return float(sum(len(g) * abs(outcomes[g].mean() - confidences[g].mean()) for g in groups) / len(order))


def calibration_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """How far the probabilities are to be trusted: ``ece`` (of the top grade's probability
    against whether argmax is right), ``referable_ece`` (of P(grade >= 2) against referable DR),
    ``brier`` (mean squared error of the five probabilities, summed over grades) and ``nll`` (mean
    -log p of the true grade)."""
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(targets) == 0 or not np.isfinite(probabilities).all():
        return {"ece": float("nan"), "referable_ece": float("nan"), "brier": float("nan"), "nll": float("nan")}
    return {
        "ece": expected_calibration_error(probabilities.max(axis=1), probabilities.argmax(axis=1) == targets),
        "referable_ece": expected_calibration_error(referable_probability(probabilities), referable_targets(targets)),
        "brier": float(_brier_scores(targets, probabilities).mean()),
        "nll": negative_log_likelihood(targets, probabilities),
    }


def _brier_scores(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each row's squared error of its five probabilities against its one-hot grade, summed over grades."""
    return ((probabilities - np.eye(len(GRADES))[targets]) ** 2).sum(axis=1)


def all_metrics(targets: np.ndarray, probabilities: np.ndarray, threshold: float = DEFAULT_REFERABLE_THRESHOLD,
                cut_points: CutPoints | None = None) -> dict[str, float]:
    """Grading (grades by argmax or ``cut_points``), referable-DR (called at ``threshold``) and
    per-grade metrics in one flat dict."""
    return (classification_metrics(targets, probabilities, cut_points)
            | referable_metrics(targets, probabilities, threshold)
            | per_grade_metrics(targets, probabilities, cut_points))


def operating_threshold(targets: np.ndarray, probabilities: np.ndarray, target_sensitivity: float) -> float:
    """The most specific threshold on P(grade >= 2) at which the referable sensitivity on these
    images reaches ``target_sensitivity``.

    Every threshold between the score of the last referable eye it must find and the next lower
    score gives the same calls here; the midpoint is taken, so that rounding (a bf16-trained model
    rescored in fp32) cannot drop that eye below it. NaN when there is no referable image to find,
    or the scores are not finite.
    """
    referable = referable_targets(targets)
    scores = referable_probability(probabilities)
    if referable.sum() == 0 or not np.isfinite(scores).all():  # none to find, or a diverged model
        return float("nan")
    # roc_curve's thresholds (every distinct score) fall and its sensitivities rise; the first
    # that reaches the target is the highest.
    _, sensitivity, thresholds = roc_curve(referable, scores, drop_intermediate=False)
    index = int(np.argmax(sensitivity >= target_sensitivity))
    if index + 1 == len(thresholds):  # the lowest score of all: nothing below it to go half-way to
        return float(thresholds[index])
    return float((thresholds[index] + thresholds[index + 1]) / 2)


def _resample_weights(groups: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each image appears in each resample, shape (n_resamples, N).

    Whole groups are drawn with replacement, so images sharing a group always appear equally often.
    """
    _, codes = np.unique(groups, return_inverse=True)
    n_groups = int(codes.max()) + 1
    picks = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    # One bincount over all resamples at once: offset each row into its own block of bins.
    offsets = np.arange(n_resamples)[:, None] * n_groups
    group_counts = np.bincount((picks + offsets).ravel(), minlength=n_resamples * n_groups)
    return group_counts.reshape(n_resamples, n_groups)[:, codes]


def bootstrap_intervals(targets: np.ndarray, probabilities: np.ndarray, *, groups: np.ndarray | None = None,
                        n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                        metric_fn: MetricFn = all_metrics, resampled_fn: ResampledMetricFn | None = None
                        ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals for every metric ``metric_fn`` returns.

    Args:
        targets: true grades, shape (N,).
        probabilities: softmax rows, shape (N, 5).
        groups: optional patient id per image; whole patients are resampled so that the two
            (correlated) eyes of a patient are in or out together, which keeps intervals honest.
        n_resamples: number of bootstrap resamples.
        seed: seed of the numpy generator; the same seed gives the same intervals.
        confidence: coverage of the two-sided interval.
        metric_fn: ``(targets, probabilities) -> {name: value}``, called on each resample.
        resampled_fn: every resample's metrics at once from the draw counts (such as
            ``resampled_all_metrics``); used instead of ``metric_fn`` when given.

    Returns:
        ``{name: (low, high)}``; resamples where a metric is NaN (e.g. AUC without positives) are
        left out for that metric only, and a metric NaN in every resample gets ``(nan, nan)``.
    """
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    if len(targets) != len(probabilities) or len(targets) == 0:
        raise ValueError(f"need as many targets as probability rows, and at least one: "
                         f"{len(targets)} targets, {len(probabilities)} rows")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if groups is None:
        groups = np.arange(len(targets))
    elif len(groups) != len(targets):
        raise ValueError(f"groups has {len(groups)} entries for {len(targets)} images")

    draws = _resample_weights(np.asarray(groups), n_resamples, np.random.default_rng(seed))
    values = (resampled_fn or each_resample(metric_fn))(targets, probabilities, draws)
    tail = (1 - confidence) / 2 * 100
    intervals: dict[str, tuple[float, float]] = {}
    for name, samples in values.items():
        finite = samples[~np.isnan(samples)]
        if finite.size == 0:
            intervals[name] = (float("nan"), float("nan"))
            continue
        if finite.size < len(samples):
            log.debug("%s: %d of %d resamples undefined, left out", name, len(samples) - finite.size, len(samples))
        low, high = np.percentile(finite, [tail, 100 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def each_resample(metric_fn: MetricFn) -> ResampledMetricFn:
    """``metric_fn`` called on each resample's images in turn: any metric, one call per resample."""
    def resampled(targets: np.ndarray, probabilities: np.ndarray, draws: np.ndarray) -> dict[str, np.ndarray]:
        # A first call on the full sample lets sklearn validate the inputs once, with its checks on.
        values: dict[str, list[float]] = {name: [] for name in metric_fn(targets, probabilities)}
        image_ids = np.arange(len(targets))
        # Resamples hold the same (already validated) values, and sklearn's per-call argument and
        # finiteness checks would otherwise be most of the run time.
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=True), warnings.catch_warnings():
            # Small resamples may lack a grade or a class; those values are NaN and dropped.
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            for row in draws:
                chosen = np.repeat(image_ids, row)
                for name, value in metric_fn(targets[chosen], probabilities[chosen]).items():
                    values.setdefault(name, []).append(value)
        return {name: np.asarray(samples, dtype=float) for name, samples in values.items()}
    return resampled


# Images x resamples held at once by each array of the referable AUC's or the ECE's work over
# every resample (~32 MB of float64): a large set's resamples are taken a block at a time.
_RESAMPLE_BLOCK = 4_000_000


def resampled_all_metrics(targets: np.ndarray, probabilities: np.ndarray, draws: np.ndarray, *,
                          threshold: float = DEFAULT_REFERABLE_THRESHOLD, cut_points: CutPoints | None = None
                          ) -> dict[str, np.ndarray]:
    """``all_metrics`` of every resample at once (a ``ResampledMetricFn``), to rounding.

    A resample changes how often each image counts, never its decision: each metric is computed
    from draw-weighted confusion matrices (and, for the AUC, draw-weighted score ranks), with the
    definitions and undefined cases of the scikit-learn calls in ``all_metrics``. One resample of
    ``all_metrics`` costs ~20 ms of sklearn's per-call validation whatever the set's size; this
    does a thousand in about that.
    """
    targets = np.asarray(targets)
    counts = np.asarray(draws, dtype=np.float64)
    decided = predicted_grades(probabilities, cut_points)
    # matrix[r, i, j]: the images of true grade i decided j, as often as resample r drew them.
    cells = np.eye(NUM_GRADES * NUM_GRADES)[targets * NUM_GRADES + decided]
    matrix = (counts @ cells).reshape(-1, NUM_GRADES, NUM_GRADES)
    true_counts, decided_counts = matrix.sum(axis=2), matrix.sum(axis=1)
    agreed = np.diagonal(matrix, axis1=1, axis2=2)
    total = true_counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = agreed / true_counts  # NaN for a grade the resample lacks
        precision = agreed / decided_counts
        f1 = 2 * agreed / (true_counts + decided_counts)
        chance = true_counts[:, :, None] * decided_counts[:, None, :] / total[:, None, None]  # laid out as matrix
        disagreement = (QUADRATIC_WEIGHTS * matrix).sum(axis=(1, 2))
        chance_disagreement = (QUADRATIC_WEIGHTS * chance).sum(axis=(1, 2))
        kappa = np.where(chance_disagreement == 0, np.nan, 1 - disagreement / chance_disagreement)
    metrics = {
        "accuracy": agreed.sum(axis=1) / total,
        "kappa": kappa,
        "balanced_accuracy": np.nanmean(np.where(true_counts > 0, recall, np.nan), axis=1),
        "macro_f1": np.nan_to_num(f1).mean(axis=1),  # a grade neither true nor decided counts 0
    }
    metrics |= _resampled_referable(targets, probabilities, counts, threshold)
    for grade in GRADES:
        metrics[f"precision_grade_{grade}"] = np.nan_to_num(precision[:, grade])
        metrics[f"recall_grade_{grade}"] = np.nan_to_num(recall[:, grade])
    return metrics


def _resampled_referable(targets: np.ndarray, probabilities: np.ndarray, counts: np.ndarray,
                         threshold: float) -> dict[str, np.ndarray]:
    """``referable_metrics`` of every resample: sensitivity and specificity at ``threshold``
    (NaN without referable, resp. non-referable, draws) and the AUC (NaN likewise, or with
    non-finite scores): the chance that a referable draw outscores a non-referable one, ties half."""
    referable = referable_targets(targets).astype(bool)
    scores = referable_probability(np.asarray(probabilities))
    called = scores >= threshold
    positives, negatives = counts[:, referable].sum(axis=1), counts[:, ~referable].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = counts[:, referable & called].sum(axis=1) / positives
        specificity = counts[:, ~referable & ~called].sum(axis=1) / negatives
    auc = np.full(len(counts), np.nan)
    if np.isfinite(scores).all() and referable.any() and (~referable).any():
        _, level = np.unique(scores, return_inverse=True)  # rank of each distinct score
        levels = int(level.max()) + 1
        block = max(1, _RESAMPLE_BLOCK // max(len(scores), levels))
        for start in range(0, len(counts), block):
            chunk = counts[start:start + block]
            rows = np.arange(len(chunk))[:, None]
            # The non-referable draws at each score level, per resample.
            at_level = np.bincount((rows * levels + level[~referable]).ravel(), weights=chunk[:, ~referable].ravel(),
                                   minlength=len(chunk) * levels).reshape(len(chunk), levels)
            # What a referable draw at each level beats: every non-referable draw below it, half of those tied.
            beaten = np.cumsum(at_level, axis=1) - at_level / 2
            wins = (beaten[:, level[referable]] * chunk[:, referable]).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                auc[start:start + block] = wins / (positives[start:start + block] * negatives[start:start + block])
    return {"referable_sensitivity": sensitivity, "referable_specificity": specificity, "referable_auc": auc}


def resampled_calibration_metrics(targets: np.ndarray, probabilities: np.ndarray, draws: np.ndarray
                                  ) -> dict[str, np.ndarray]:
    """``calibration_metrics`` of every resample at once (a ``ResampledMetricFn``), to rounding.

    Brier score and NLL are draw-weighted means. The ECE's equal-mass bins split each resample's
    photos sorted by confidence, where an image drawn k times fills k neighbouring places: each
    bin's sums of confidences and outcomes are differences of running sums at its edges. A resample
    that draws a row with non-finite probabilities gets NaN for all four, as ``calibration_metrics`` does.
    """
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    counts = np.asarray(draws, dtype=np.float64)
    finite = np.isfinite(probabilities).all(axis=1)
    # Rows that are not finite are zeroed here: every resample that draws one is NaN in the end.
    probabilities = np.where(finite[:, None], probabilities, 0.0)
    total = counts.sum(axis=1)
    # An empty resample (which _resample_weights never draws) is NaN, as calibration_metrics says quietly.
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics = {
            "ece": _resampled_ece(probabilities.max(axis=1), probabilities.argmax(axis=1) == targets, counts),
            "referable_ece": _resampled_ece(referable_probability(probabilities), referable_targets(targets), counts),
            "brier": counts @ _brier_scores(targets, probabilities) / total,
            "nll": counts @ np.where(finite, true_grade_log_loss(targets, probabilities), 0.0) / total,
        }
    unsound = counts[:, ~finite].sum(axis=1) > 0
    return {name: np.where(unsound, np.nan, values) for name, values in metrics.items()}


def _resampled_ece(confidences: np.ndarray, outcomes: np.ndarray, counts: np.ndarray,
                   bins: int = CALIBRATION_BINS) -> np.ndarray:
    """``expected_calibration_error`` of every resample; ``counts[r, i]``: how often resample r drew image i."""
    block = max(1, _RESAMPLE_BLOCK // counts.shape[1])
    if len(counts) > block:
        return np.concatenate([_resampled_ece(confidences, outcomes, counts[start:start + block], bins)
                               for start in range(0, len(counts), block)])
    # A resample's photos in order of confidence are the images in this (stable) order, each as
    # often as drawn: np.repeat keeps an image's copies together, ties in image order.
    order = np.argsort(confidences, kind="stable")
    confidences, outcomes = confidences[order], np.asarray(outcomes, dtype=np.float64)[order]
    counts = counts[:, order]
    ends = np.cumsum(counts, axis=1)  # the place after each image's last copy
    size = ends[:, -1]
    # np.array_split's edges: min(bins, size) groups, the first size % groups of them one longer;
    # edges past the last group stay at the end (empty groups).
    groups = np.minimum(bins, size)
    edge = np.arange(bins + 1)[None, :]
    edges = np.minimum(edge * (size // groups)[:, None] + np.minimum(edge, (size % groups)[:, None]), size[:, None])
    # The image holding each edge's place (the first not yet over at it), in one search over all
    # resamples: row r's places are shifted past row r - 1's.
    shift = np.arange(len(counts))[:, None] * (size.max() + 1)
    found = np.searchsorted((ends + shift).ravel(), (edges + shift).ravel(), side="right").reshape(edges.shape)
    image = found - np.arange(len(counts))[:, None] * counts.shape[1]
    inside = image < counts.shape[1]  # an edge at the very end holds no image
    image = np.minimum(image, counts.shape[1] - 1)
    rows = np.arange(len(counts))[:, None]
    started = ends[rows, image] - counts[rows, image]  # places before the image's first copy
    running = {}  # the sums of confidences and outcomes over each edge's places before it
    for name, values in (("confidence", confidences), ("outcome", outcomes)):
        sums = np.cumsum(counts * values, axis=1)
        before = sums[rows, image] - counts[rows, image] * values[image]
        running[name] = np.where(inside, before + (edges - started) * values[image], sums[:, -1:])
    gaps = np.abs(np.diff(running["outcome"], axis=1) - np.diff(running["confidence"], axis=1))
    return gaps.sum(axis=1) / size


def epoch_metrics(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """What is logged per epoch besides loss and accuracy: kappa, balanced accuracy, macro-F1, referable DR."""
    metrics = classification_metrics(targets, probabilities) | referable_metrics(targets, probabilities)
    metrics.pop("accuracy")
    return metrics


def metrics_with_intervals(targets: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, *,
                           threshold: float, resamples: int, seed: int, cut_points: CutPoints | None = None
                           ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Every metric (referable DR called at ``threshold``, grades by argmax or ``cut_points``) and,
    with ``resamples`` > 0, its 95% interval from a bootstrap over patients."""
    metrics = all_metrics(targets, probabilities, threshold, cut_points)
    if not resamples:
        return metrics, {}
    intervals = bootstrap_intervals(targets, probabilities, groups=patients, n_resamples=resamples, seed=seed,
                                    resampled_fn=functools.partial(resampled_all_metrics, threshold=threshold,
                                                                   cut_points=cut_points))
    return metrics, intervals


def calibration_with_intervals(targets: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, *,
                               resamples: int, seed: int) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """``calibration_metrics`` and, with ``resamples`` > 0, their 95% intervals from a bootstrap over patients."""
    metrics = calibration_metrics(targets, probabilities)
    if not resamples or len(targets) == 0:
        return metrics, {}
    return metrics, bootstrap_intervals(targets, probabilities, groups=patients, n_resamples=resamples, seed=seed,
                                        resampled_fn=resampled_calibration_metrics)
