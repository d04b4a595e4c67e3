"""What every grader does around its network, torch or ONNX alike (no torch here): the spec that
says how to use a trained network, judging photos (``gradability``), deciding grades and referable
calls, and answering the served model's requests of base64 photos.

A grader subclasses ``PhotoGrader`` with ``network_outputs``: calibrated grade probabilities and
pooled features of a batch of prepared photos (``prepare.network_input``'s uint8 arrays).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.catalog import DEFAULT_REFERABLE_THRESHOLD, NUM_GRADES
from pipeline.data.prepare import network_input_or_refused
from pipeline.data.quality import QUALITY_MEASURES
from pipeline.decision import CutPoints, fuse_eyes, predicted_grades
from pipeline.errors import DataError
from pipeline.gradability import GradabilityThresholds, NoveltyModel, reasons
from pipeline.metrics import referable_probability

log = logging.getLogger(__name__)

PROBABILITY_COLUMNS = [f"p_grade_{grade}" for grade in range(NUM_GRADES)]
# What the grader answers for each photo (predict's CSV, the served model's output). An
# ungradable photo has predicted_grade -1 and no referable call; its probabilities are there where
# the network saw it (for research), empty where it could not.
PREDICTION_COLUMNS = ["predicted_grade", *PROBABILITY_COLUMNS, "p_referable", "referable", "gradable",
                      "ungradable_reason"]
UNGRADED = -1  # the predicted_grade of an ungradable photo


@dataclass(frozen=True)
class GraderSpec:
    """How to rebuild and use a trained network."""

    model: str  # the torchvision architecture
    image_size: int  # the network's input side, px
    cache_size: int  # the processed cache's side: new photos are prepared through it
    referable_threshold: float = DEFAULT_REFERABLE_THRESHOLD  # referable when P(grade >= 2) reaches it
    tta: str = "none"  # test-time augmentation (models.with_tta), as at validation
    head: str = "classification"  # the network's head (models.build_model)
    cut_points: CutPoints | None = None  # decision=kappa_thresholds (see ``decision``); None: argmax
    fuse_weight: float = 0.0  # the fellow eye's weight where a patient's two photos are graded together
    enhance: str = "none"  # the cache's enhancement (prepare.cache_image): new photos get it too
    temperature: float = 1.0  # ``calibration``: the served probabilities are softmax(log p / temperature)
    gradability: GradabilityThresholds | None = None  # None: every photo with a fundus is graded

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GraderSpec:
        """A spec from ``to_dict``'s JSON; graders logged before a field existed get its default."""
        cut_points, gradability = values.get("cut_points"), values.get("gradability")
        return cls(**{**values, "cut_points": None if cut_points is None else tuple(cut_points),
                      "gradability": None if gradability is None else GradabilityThresholds(**gradability)})


@dataclass(frozen=True)
class Judged:
    """A batch of photos as the grader saw them: calibrated probabilities, the network's pooled
    features, the photos' quality measures and each one's reason to be refused ("" if none)."""

    probabilities: np.ndarray  # (N, 5), NaN where the network never saw the photo
    features: np.ndarray  # (N, features)
    measures: np.ndarray  # (N, 4), QUALITY_MEASURES order
    reasons: list[str]

    @property
    def gradable(self) -> np.ndarray:
        return np.array([not reason for reason in self.reasons], dtype=bool)


class PhotoGrader:
    """A trained network's use: judging and deciding, given its outputs (``network_outputs``)."""

    def __init__(self, spec: GraderSpec, novelty: NoveltyModel | None = None) -> None:
        self.spec = spec
        self.novelty = novelty  # the training photos' novelty model (None for graders logged before it)

    def network_outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated grade probabilities (N, 5) and pooled features (N, features) of prepared
        photos, uint8 (N, H, W, 3)."""
        raise NotImplementedError

    def judge(self, probabilities: np.ndarray, features: np.ndarray, measures: np.ndarray,
              refused: list[str] | None = None) -> Judged:
        """The gradability of photos the network saw (``refused``: a reason already known for
        some, such as no fundus, which no measure then overrides)."""
        novelty = None if self.novelty is None or len(features) == 0 else self.novelty.distance(features)
        found = reasons(measures, novelty, self.spec.gradability)
        if refused is not None:
            found = [earlier or later for earlier, later in zip(refused, found)]
        return Judged(probabilities, features, np.asarray(measures, dtype=np.float64), found)

    def judge_pixels(self, pixels: np.ndarray, measures: np.ndarray, refused: list[str]) -> Judged:
        """``judge`` of prepared photos, uint8 (N, H, W, 3), those already ``refused`` (black
        images: see ``prepare.network_input_or_refused``) without probabilities."""
        probabilities, features = self.network_outputs(pixels)
        probabilities[[bool(reason) for reason in refused]] = np.nan  # the network saw a blank
        return self.judge(probabilities, features, measures, refused)

    def fused(self, probabilities: np.ndarray, patients: np.ndarray | None,
              gradable: np.ndarray | None = None) -> np.ndarray:
        """``probabilities`` with each eye blended with its fellow's (``fuse_weight``), where the
        photos' ``patients`` are known; as they are otherwise. An ungradable photo neither gets
        nor gives a fellow's help."""
        if patients is None or self.spec.fuse_weight == 0:
            return probabilities
        patients = np.asarray(patients, dtype=object).copy()
        if gradable is not None:
            patients[~gradable] = [f"\x00ungradable-{index}" for index in np.flatnonzero(~gradable)]
        return fuse_eyes(probabilities, patients, self.spec.fuse_weight)

    def explain(self, pixels: np.ndarray, grades: np.ndarray) -> list[str]:
        """Base64 PNGs of the photos (uint8 (N, H, W, 3)) with a heat map of where the network saw
        evidence for ``grades``; the graders that can explain themselves override this."""
        raise DataError(f"{type(self).__name__} cannot explain its grades (explain=true needs the torch grader: "
                        "Grad-CAM follows the network's gradients)")

    def decide(self, judged: Judged, patients: np.ndarray | None = None) -> pd.DataFrame:
        """The prediction columns of judged photos (fused by patient when ``patients`` is given)."""
        gradable = judged.gradable
        return predictions_frame(self.fused(judged.probabilities, patients, gradable), self.spec.referable_threshold,
                                 self.spec.cut_points, judged.reasons)


def concatenated(parts: list[Judged]) -> Judged:
    """Batches of judged photos as one."""
    if not parts:
        return Judged(np.empty((0, NUM_GRADES)), np.empty((0, 0)), np.empty((0, len(QUALITY_MEASURES))), [])
    return Judged(np.concatenate([p.probabilities for p in parts]), np.concatenate([p.features for p in parts]),
                  np.concatenate([p.measures for p in parts]), [reason for p in parts for reason in p.reasons])


def predictions_frame(probabilities: np.ndarray, referable_threshold: float, cut_points: CutPoints | None = None,
                      refused: list[str] | None = None) -> pd.DataFrame:
    """``PREDICTION_COLUMNS`` per row: the grade (argmax, or by ``cut_points``), the probabilities,
    ``p_referable`` and the ``referable`` call at the threshold; ``refused`` gives each row's reason
    to be ungradable ("" where it is gradable), which leaves it ungraded."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    refused = refused if refused is not None else [""] * len(probabilities)
    gradable = np.array([not reason for reason in refused], dtype=bool)
    referable = referable_probability(probabilities)
    seen = np.isfinite(probabilities).all(axis=1)
    grades = np.full(len(probabilities), UNGRADED, dtype=np.int64)
    if seen.any():
        grades[seen] = predicted_grades(probabilities[seen], cut_points)
    frame = pd.DataFrame({"predicted_grade": np.where(gradable, grades, UNGRADED)})
    for column, values in zip(PROBABILITY_COLUMNS, probabilities.T):
        frame[column] = values
    frame["p_referable"] = referable
    # A nullable boolean: no call at all for an ungradable photo (empty in a CSV, null in JSON).
    frame["referable"] = pd.array(np.where(gradable, referable >= referable_threshold, False), dtype="boolean")
    frame.loc[~gradable, "referable"] = pd.NA
    frame["gradable"] = gradable
    frame["ungradable_reason"] = refused
    return frame


# The served model's input: one string column of base64-encoded photo file bytes.
IMAGE_COLUMN = "image"
# With the served model's parameter ``explain`` true, each graded photo's heat map for its grade:
# a base64 PNG of the photo as the network saw it with the map over it.
EXPLAIN_PARAM = "explain"
HEATMAP_COLUMN = "heatmap_png"
SERVED_BATCH_SIZE = 32


def encode_photos(photos: list[bytes]) -> pd.DataFrame:
    """Photo file bytes as the served model takes them (what a client sends)."""
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(photo).decode("ascii") for photo in photos]})


def grade_request(grader: PhotoGrader, request: pd.DataFrame, explain: bool = False) -> pd.DataFrame:
    """The served model's answer: one row of prediction columns per photo of ``request``; a photo
    that cannot be read or holds no fundus is a row refused with its reason. With ``explain``, the
    column ``HEATMAP_COLUMN`` too: each graded photo's heat map for its grade (``PhotoGrader.explain``),
    null for a refused one.

    Raises:
        DataError: naming the row of the first entry that is not base64 (a malformed request).
    """
    if IMAGE_COLUMN not in request.columns:
        raise DataError(f"the request has no '{IMAGE_COLUMN}' column (it has {', '.join(map(str, request.columns))}); "
                        f"send base64-encoded photo files in a column named '{IMAGE_COLUMN}'")
    texts = list(request[IMAGE_COLUMN])
    photos = [_decoded(row, text) for row, text in enumerate(texts)]
    frames = []
    # In batches: a request of hundreds of large photos must not hold them all in memory at once.
    # One photo, one eye: the served model never fuses (a request's rows need not be one patient's),
    # so each batch is decided on its own.
    for start in range(0, len(photos), SERVED_BATCH_SIZE):
        prepared = [network_input_or_refused(photo, grader.spec.cache_size, grader.spec.image_size,
                                             grader.spec.enhance, name=f"row {start + offset}")
                    for offset, photo in enumerate(photos[start:start + SERVED_BATCH_SIZE])]
        pixels, measures, refused = zip(*prepared)
        pixels = np.stack(pixels)
        frame = grader.decide(grader.judge_pixels(pixels, np.stack(measures), list(refused)))
        if explain:
            graded = frame["gradable"].to_numpy(bool)
            frame[HEATMAP_COLUMN] = None
            if graded.any():
                frame.loc[graded, HEATMAP_COLUMN] = grader.explain(pixels[graded],
                                                                   frame.loc[graded, "predicted_grade"].to_numpy())
        frames.append(frame)
    if not frames:
        return grader.decide(concatenated([]))
    return pd.concat(frames, ignore_index=True)


def _decoded(row: int, text: object) -> bytes:
    try:
        # Line breaks are allowed: MIME base64 (the `base64` tool without -w0, Spark's base64())
        # wraps its lines at 76 characters.
        return base64.b64decode("".join(text.split()) if isinstance(text, str) else text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise DataError(f"row {row}: '{IMAGE_COLUMN}' is not base64-encoded photo bytes") from None


def with_nulls(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every missing value None (its column then of objects): JSON null in the served
    answer, where a NaN would be the bare token ``NaN`` that strict JSON parsers refuse."""
    frame = frame.copy()
    for column in frame.columns:
        missing = frame[column].isna()
        if missing.any():
            frame[column] = frame[column].astype(object).where(~missing, None)
    return frame
