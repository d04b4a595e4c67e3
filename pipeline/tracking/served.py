"""The served model: the grader as an MLflow pyfunc that takes photos.

Input: a DataFrame with one string column ``image`` of base64-encoded photo files (JPEG or PNG,
any size). Output: one row per photo, ``predicted_grade``, ``p_grade_0``..``p_grade_4``,
``p_referable``, ``referable``. A photo that cannot be read is refused naming its row
(``mlflow models serve`` answers HTTP 400), never graded.
"""

import json

import mlflow
import pandas as pd
import torch

from pipeline.errors import DataError
from pipeline.grading import Grader, GraderSpec, grade_request

WEIGHTS_ARTIFACT = "weights"  # the network's state dict (torch.load(..., weights_only=True))
SPEC_ARTIFACT = "grader"  # GraderSpec as JSON


class GraderModel(mlflow.pyfunc.PythonModel):
    """Rebuilt from its artifacts on load: no pickled network, only a state dict and a spec."""

    grader: Grader

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        with open(context.artifacts[SPEC_ARTIFACT]) as file:
            spec = GraderSpec.from_dict(json.load(file))
        state = torch.load(context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True)
        self.grader = Grader.from_state_dict(spec, state)

    # A DataFrame hint: MLflow infers no signature from it, so the one logged with the model holds.
    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``model_input``: a DataFrame with the column ``image``; returns the prediction columns."""
        try:
            return grade_request(self.grader, model_input)
        except DataError as exc:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(exc)) from None
