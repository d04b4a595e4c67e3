"""Models-from-code script of the torch grader (``served.GraderModel``)."""

import mlflow

from pipeline.tracking.served import GraderModel

mlflow.models.set_model(GraderModel())
