"""The served model: the grader as an MLflow pyfunc that takes photos.

Input: a DataFrame with one string column ``image`` of base64-encoded photo files (JPEG, PNG,
TIFF, BMP or DICOM, any size). Output: one row per photo, ``grading.PREDICTION_COLUMNS``: the grade,
probabilities and referable call, or for a photo the grader refuses (unreadable, no fundus, too
dark, ...) ``gradable`` false, its ``ungradable_reason``, grade -1 and no referable call. Only a
row that is not base64 fails the request (``mlflow models serve`` answers HTTP 400, naming it).
"""

import json

import mlflow
import numpy as np
import pandas as pd
import torch

from pipeline.errors import DataError
from pipeline.gradability import NoveltyModel
from pipeline.grading import Grader, GraderSpec, grade_request, with_nulls

WEIGHTS_ARTIFACT = "weights"  # the network's state dict (torch.load(..., weights_only=True))
SPEC_ARTIFACT = "grader"  # GraderSpec as JSON
NOVELTY_ARTIFACT = "novelty"  # gradability.NoveltyModel's arrays (.npz, loaded without pickle)


class GraderModel(mlflow.pyfunc.PythonModel):
    """Rebuilt from its artifacts on load: no pickled network, only a state dict and a spec."""

    grader: Grader

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        with open(context.artifacts[SPEC_ARTIFACT]) as file:
            spec = GraderSpec.from_dict(json.load(file))
        state = torch.load(context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True)
        novelty = None
        if NOVELTY_ARTIFACT in context.artifacts:  # graders logged before it existed have none
            with np.load(context.artifacts[NOVELTY_ARTIFACT], allow_pickle=False) as arrays:
                novelty = NoveltyModel.from_arrays(dict(arrays))
        self.grader = Grader.from_state_dict(spec, state, novelty)

    # A DataFrame hint: MLflow infers no signature from it, so the one logged with the model holds.
    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``model_input``: a DataFrame with the column ``image``; returns the prediction columns."""
        try:
            return with_nulls(grade_request(self.grader, model_input))
        except DataError as exc:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(exc)) from None
