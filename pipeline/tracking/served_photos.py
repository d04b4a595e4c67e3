"""What every served grader shares (no torch here): the pyfunc's photo-in ``predict``, and reading
the spec and the novelty model back from the model's artifacts.

Input: a DataFrame with one string column ``image`` of base64-encoded photo files (JPEG, PNG,
TIFF, BMP or DICOM, any size); the parameter ``explain`` (default false) adds heat maps. Output:
one row per photo, ``photo_grader.PREDICTION_COLUMNS``: the grade, probabilities and referable
call, or for a photo the grader refuses (unreadable, no fundus, too dark, ...) ``gradable`` false,
its ``ungradable_reason``, grade -1 and no referable call. Only a row that is not base64 fails the
request (``mlflow models serve`` answers HTTP 400, naming it).
"""

import json

import mlflow
import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.gradability import NoveltyModel
from pipeline.photo_grader import EXPLAIN_PARAM, GraderSpec, PhotoGrader, grade_request, with_nulls

SPEC_ARTIFACT = "grader"  # GraderSpec as JSON
NOVELTY_ARTIFACT = "novelty"  # gradability.NoveltyModel's arrays (.npz, loaded without pickle)


def spec_of(context: mlflow.pyfunc.PythonModelContext) -> GraderSpec:
    with open(context.artifacts[SPEC_ARTIFACT]) as file:
        return GraderSpec.from_dict(json.load(file))


def novelty_of(context: mlflow.pyfunc.PythonModelContext) -> NoveltyModel | None:
    """The novelty model; None for graders logged before it existed."""
    if NOVELTY_ARTIFACT not in context.artifacts:
        return None
    with np.load(context.artifacts[NOVELTY_ARTIFACT], allow_pickle=False) as arrays:
        return NoveltyModel.from_arrays(dict(arrays))


class PhotoGraderModel(mlflow.pyfunc.PythonModel):
    """A served grader: ``load_context`` sets ``grader``; ``predict`` answers photos."""

    grader: PhotoGrader

    # A DataFrame hint: MLflow infers no signature from it, so the one logged with the model holds.
    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``model_input``: a DataFrame with the column ``image``; returns the prediction columns
        (with ``params`` ``{"explain": true}``, each graded photo's heat map too)."""
        try:
            explain = bool((params or {}).get(EXPLAIN_PARAM, False))
            return with_nulls(grade_request(self.grader, model_input, explain=explain))
        except DataError as exc:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(exc)) from None
