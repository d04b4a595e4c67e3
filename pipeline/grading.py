"""The grader: what a train run hands on. Photos in, grades out, the same way in evaluate, predict
and the served model.

A grader is the trained network plus the facts needed to use it: the size of the processed cache
it learnt from (a new photo is prepared through that same cache encoding), its input size, the
operating point of the referable-DR call, and how probabilities become a grade (argmax or cut
points on the expected grade, and the fellow eye's weight where both eyes are graded together).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.catalog import DEFAULT_REFERABLE_THRESHOLD, NUM_GRADES
from pipeline.data.dataset import RawPhotoDataset, photo_input, to_unit_float
from pipeline.data.photos import PhotoSource
from pipeline.decision import CutPoints, fuse_eyes, predicted_grades
from pipeline.errors import DataError
from pipeline.metrics import referable_probability
from pipeline.models import build_model, serving_model

log = logging.getLogger(__name__)

PROBABILITY_COLUMNS = [f"p_grade_{grade}" for grade in range(NUM_GRADES)]
# What the grader answers for each photo (predict's CSV, the served model's output).
PREDICTION_COLUMNS = ["predicted_grade", *PROBABILITY_COLUMNS, "p_referable", "referable"]


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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GraderSpec:
        """A spec from ``to_dict``'s JSON; graders logged before a field existed get its default."""
        cut_points = values.get("cut_points")
        return cls(**{**values, "cut_points": None if cut_points is None else tuple(cut_points)})


class Grader:
    """A trained network with normalisation and softmax attached, and the spec to use it."""

    def __init__(self, network: nn.Module, spec: GraderSpec) -> None:
        self.network = network  # the plain torchvision module (logits), for research
        self.spec = spec
        self._served = serving_model(network.float().cpu(), spec.tta)

    @classmethod
    def from_state_dict(cls, spec: GraderSpec, state: dict[str, torch.Tensor]) -> Grader:
        network = build_model(spec.model, pretrained=False, head=spec.head)
        network.load_state_dict(state)
        return cls(network, spec)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Grade probabilities of a batch of uint8 (or [0, 1] float) images, shape (N, 5)."""
        return self._served(to_unit_float(images)).float().numpy()

    def probabilities_of(self, loader: DataLoader, progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(targets, probabilities) over every (image, target) batch of ``loader``, in order."""
        targets, probabilities = [], []
        for images, batch_targets in tqdm(loader, desc=progress, unit="batch", disable=None if progress else True):
            probabilities.append(self.probabilities(images))
            targets.append(np.asarray(batch_targets))
        return np.concatenate(targets), np.concatenate(probabilities)

    def fused(self, probabilities: np.ndarray, patients: np.ndarray | None) -> np.ndarray:
        """``probabilities`` with each eye blended with its fellow's (``fuse_weight``), where the
        photos' ``patients`` are known; as they are otherwise."""
        return probabilities if patients is None else fuse_eyes(probabilities, patients, self.spec.fuse_weight)

    def decide(self, probabilities: np.ndarray, patients: np.ndarray | None = None) -> pd.DataFrame:
        """The prediction columns of probability rows (fused by patient when ``patients`` is given)."""
        return predictions_frame(self.fused(probabilities, patients), self.spec.referable_threshold,
                                 self.spec.cut_points)

    def grade_photos(self, sources: list[PhotoSource], *, patients: np.ndarray | None = None, batch_size: int = 32,
                     num_workers: int = 0) -> pd.DataFrame:
        """The prediction columns for new photos (files or their bytes), in order; with ``patients``
        each eye's grade also draws on its fellow eye's photo (``fuse_weight``)."""
        dataset = RawPhotoDataset(sources, self.spec.cache_size, self.spec.image_size, self.spec.enhance)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        _, probabilities = self.probabilities_of(loader, progress="predict")
        return self.decide(probabilities, patients)


def predictions_frame(probabilities: np.ndarray, referable_threshold: float,
                      cut_points: CutPoints | None = None) -> pd.DataFrame:
    """``predicted_grade`` (argmax, or by ``cut_points``), ``p_grade_0``..``p_grade_4``,
    ``p_referable`` and ``referable`` per row."""
    referable = referable_probability(probabilities)
    frame = pd.DataFrame({"predicted_grade": predicted_grades(probabilities, cut_points)})
    for column, values in zip(PROBABILITY_COLUMNS, probabilities.T):
        frame[column] = values.astype(np.float64)
    frame["p_referable"] = referable.astype(np.float64)
    frame["referable"] = referable >= referable_threshold
    return frame


# The served model's input: one string column of base64-encoded photo file bytes.
IMAGE_COLUMN = "image"
SERVED_BATCH_SIZE = 32


def encode_photos(photos: list[bytes]) -> pd.DataFrame:
    """Photo file bytes as the served model takes them (what a client sends)."""
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(photo).decode("ascii") for photo in photos]})


def grade_request(grader: Grader, request: pd.DataFrame) -> pd.DataFrame:
    """The served model's answer: one row of prediction columns per photo of ``request``.

    Raises:
        DataError: naming the row of the first photo that is not base64 or not a readable photo.
    """
    if IMAGE_COLUMN not in request.columns:
        raise DataError(f"the request has no '{IMAGE_COLUMN}' column (it has {', '.join(map(str, request.columns))}); "
                        f"send base64-encoded photo files in a column named '{IMAGE_COLUMN}'")
    texts = list(request[IMAGE_COLUMN])
    chunks = [np.empty((0, NUM_GRADES), dtype=np.float32)]
    # In batches: a request of hundreds of large photos must not hold them all in memory at once.
    for start in range(0, len(texts), SERVED_BATCH_SIZE):
        images = [_prepared(start + offset, text, grader.spec)
                  for offset, text in enumerate(texts[start:start + SERVED_BATCH_SIZE])]
        chunks.append(grader.probabilities(torch.stack(images)))
    # One photo, one eye: the served model never fuses (a request's rows need not be one patient's).
    return grader.decide(np.concatenate(chunks))


def _prepared(row: int, text: object, spec: GraderSpec) -> torch.Tensor:
    """One request row as the network's input; errors name the row."""
    try:
        photo = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise DataError(f"row {row}: '{IMAGE_COLUMN}' is not base64-encoded photo bytes") from None
    try:
        return photo_input(photo, spec.cache_size, spec.image_size, spec.enhance)
    except DataError as exc:
        raise DataError(f"row {row}: {exc}") from None
