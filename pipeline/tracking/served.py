"""The served model: the torch grader as an MLflow pyfunc that takes photos (``served_photos``
says what it takes and answers)."""

import mlflow
import torch

from pipeline.grading import Grader
from pipeline.tracking.served_photos import NOVELTY_ARTIFACT, SPEC_ARTIFACT, PhotoGraderModel, novelty_of, spec_of

WEIGHTS_ARTIFACT = "weights"  # the network's state dict (torch.load(..., weights_only=True))
__all__ = ["GraderModel", "NOVELTY_ARTIFACT", "SPEC_ARTIFACT", "WEIGHTS_ARTIFACT"]


class GraderModel(PhotoGraderModel):
    """Rebuilt from its artifacts on load: no pickled network, only a state dict and a spec."""

    grader: Grader

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        state = torch.load(context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True)
        self.grader = Grader.from_state_dict(spec_of(context), state, novelty_of(context))
