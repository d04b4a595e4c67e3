"""Whether the grader may grade a photo, and why not: the checks every grader applies alike.

A screening programme sends an ungradable photo back ("retake, or examine in person"); so does the
grader. It refuses a photo, with the first reason that applies (``catalog.UNGRADABLE_REASONS``), in
this order:

1. ``not a fundus photograph``: no field of view was found (``data.fov``);
2. ``unreadable photo``: the file is corrupt, truncated or no image;
3. ``too dark``, ``over-exposed``, ``out of focus``, ``low contrast``: a quality measure of the field
   (``data.quality``) beyond its threshold;
4. ``unlike the training photos``: the network's own view of the photo, its pooled features, lies
   further from every grade's training photos than the photos it was validated on
   (``NoveltyModel``, a Mahalanobis distance), though the simple measures pass.

The thresholds are fitted at the end of training on the photos the model learnt from (``fit``):
each rejects at most ``REJECT_SHARE`` of them and lies at least ``ROBUST_SPREADS`` robust standard
deviations from their median. No torch here: every grader judges photos with this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.covariance import LedoitWolf

from pipeline.catalog import LOW_CONTRAST, OUT_OF_FOCUS, OVEREXPOSED, TOO_DARK, UNLIKE_TRAINING
from pipeline.data.quality import QUALITY_MEASURES

# Each threshold rejects at most this share of the photos it is fitted on...
REJECT_SHARE = 0.005
# ...and lies at least this many robust standard deviations (1.4826 x the median absolute
# deviation, on a log scale) from their median: on a small set the extreme quantile is its most
# extreme photo, and a threshold must not hug it.
ROBUST_SPREADS = 4.0
# A field less burnt out than this (% of its pixels) is never called over-exposed, whatever the
# training photos did: most have no burnt-out pixel at all, and a threshold of 0 would refuse a
# photo for one glint; a glaring optic disc alone burns out 2-3% of a real field (skimage's retina: 2.0%).
MIN_OVEREXPOSED = 5.0
# The novelty model is fitted on at most this many training photos (evenly spread over the split).
NOVELTY_PHOTOS = 2000


@dataclass(frozen=True)
class GradabilityThresholds:
    """The limits a photo must keep to be graded (see the module's docstring), logged as the train
    run's ``gradable_*`` metrics and carried in the grader's spec."""

    min_brightness: float  # median grey level of the field, 0-255
    max_overexposed: float  # % of the field burnt out
    min_focus: float  # fine detail, % of the brightness
    min_contrast: float  # spread of grey levels, % of the brightness
    max_novelty: float | None  # Mahalanobis distance of the pooled features (None: no novelty check)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def as_metrics(self) -> dict[str, float]:
        return {f"gradable_{name}": value for name, value in asdict(self).items() if value is not None}


def _log_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and robust standard deviation of log(values)."""
    logs = np.log(np.maximum(values, 1e-6))
    median = float(np.median(logs))
    return median, 1.4826 * float(np.median(np.abs(logs - median)))


def lower_threshold(values: np.ndarray) -> float:
    """The level below which a measure refuses a photo: at most ``REJECT_SHARE`` of ``values``
    fall below it, and it is at least ``ROBUST_SPREADS`` robust spreads below their median."""
    values = np.asarray(values, dtype=np.float64)
    median, spread = _log_spread(values)
    return float(min(np.quantile(values, REJECT_SHARE), np.exp(median - ROBUST_SPREADS * spread)))


def upper_threshold(values: np.ndarray) -> float:
    """The level above which a measure refuses a photo (``lower_threshold``'s mirror)."""
    values = np.asarray(values, dtype=np.float64)
    median, spread = _log_spread(values)
    return float(max(np.quantile(values, 1 - REJECT_SHARE), np.exp(median + ROBUST_SPREADS * spread)))


def fit_thresholds(measures: np.ndarray, novelty: np.ndarray | None) -> GradabilityThresholds:
    """The thresholds of the photos a model learnt from.

    Args:
        measures: (N, 4) quality measures (``QUALITY_MEASURES`` order) of the training and
            validation photos.
        novelty: the validation photos' novelty distances (the training photos' own are biased
            low: the novelty model was fitted on them); None without a novelty model.
    """
    columns = dict(zip(QUALITY_MEASURES, np.asarray(measures, dtype=np.float64).T))
    return GradabilityThresholds(
        min_brightness=lower_threshold(columns["brightness"]),
        max_overexposed=max(MIN_OVEREXPOSED, upper_threshold(columns["overexposed"])),
        min_focus=lower_threshold(columns["focus"]),
        min_contrast=lower_threshold(columns["contrast"]),
        max_novelty=None if novelty is None or len(novelty) == 0 else upper_threshold(novelty),
    )


def reasons(measures: np.ndarray, novelty: np.ndarray | None, thresholds: GradabilityThresholds | None) -> list[str]:
    """Each photo's reason to be refused ("" where it is gradable), checked in
    ``UNGRADABLE_REASONS``' order; every photo is gradable without thresholds (a grader logged
    before they existed)."""
    measures = np.asarray(measures, dtype=np.float64).reshape(-1, len(QUALITY_MEASURES))
    if thresholds is None:
        return [""] * len(measures)
    brightness, overexposed, focus, contrast = measures.T
    checks = [(TOO_DARK, brightness < thresholds.min_brightness),
              (OVEREXPOSED, overexposed > thresholds.max_overexposed),
              (OUT_OF_FOCUS, focus < thresholds.min_focus),
              (LOW_CONTRAST, contrast < thresholds.min_contrast)]
    if novelty is not None and thresholds.max_novelty is not None:
        checks.append((UNLIKE_TRAINING, np.asarray(novelty) > thresholds.max_novelty))
    found = [""] * len(measures)
    for reason, failing in reversed(checks):  # the first check that fails names the reason
        for index in np.flatnonzero(failing):
            found[index] = reason
    return found


@dataclass
class NoveltyModel:
    """How unlike the training photos a photo looks to the network: the Mahalanobis distance of its
    pooled features to the nearest grade's mean over the training photos, under their shared
    within-grade covariance (Ledoit-Wolf shrinkage, which keeps it invertible with fewer photos
    than features; Lee et al., 2018)."""

    means: np.ndarray  # (grades seen in training, features)
    precision: np.ndarray  # (features, features): the inverse of the shared covariance

    @classmethod
    def fit(cls, features: np.ndarray, grades: np.ndarray) -> NoveltyModel:
        """Grade means and the shared within-grade precision of (N, features) training rows."""
        features = np.asarray(features, dtype=np.float64)
        grades = np.asarray(grades)
        seen = np.unique(grades)
        means = np.stack([features[grades == grade].mean(axis=0) for grade in seen])
        centred = features - means[np.searchsorted(seen, grades)]
        covariance = LedoitWolf(assume_centered=True, store_precision=False).fit(centred).covariance_
        # Shrunk towards a scaled identity, the covariance is positive definite: a plain inverse,
        # a third of the cost of the eigendecomposition (pinvh) LedoitWolf would store (2048 features).
        precision = np.linalg.inv(covariance)
        return cls(means.astype(np.float32), precision.astype(np.float32))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) distances of (N, features) rows to the nearest grade mean."""
        features = np.asarray(features, dtype=np.float64)
        means, precision = self.means.astype(np.float64), self.precision.astype(np.float64)
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm, for every row and mean at once.
        projected = features @ precision
        squared = ((projected * features).sum(axis=1)[:, None] - 2 * projected @ means.T
                   + ((means @ precision) * means).sum(axis=1)[None, :])
        return np.sqrt(np.maximum(squared, 0.0)).min(axis=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"means": self.means, "precision": self.precision}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NoveltyModel:
        return cls(np.asarray(arrays["means"]), np.asarray(arrays["precision"]))
