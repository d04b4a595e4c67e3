"""Models-from-code script of the ONNX grader (``served_onnx.OnnxGraderModel``): imports no torch."""

import mlflow

from pipeline.tracking.served_onnx import OnnxGraderModel

mlflow.models.set_model(OnnxGraderModel())
