"""The served ONNX grader: the same photo-in pyfunc as ``served``'s (``served_photos``), its network
an ONNX model run by onnxruntime. Nothing it imports needs torch, so its environment holds none
(``registry.ONNX_SERVED_PACKAGES``)."""

import mlflow

from pipeline.onnx_grader import OnnxGrader
from pipeline.tracking.served_photos import NOVELTY_ARTIFACT, SPEC_ARTIFACT, PhotoGraderModel, novelty_of, spec_of

ONNX_ARTIFACT = "network"  # the exported network (export.ExportedNetwork) as an .onnx file
__all__ = ["NOVELTY_ARTIFACT", "ONNX_ARTIFACT", "OnnxGraderModel", "SPEC_ARTIFACT"]


class OnnxGraderModel(PhotoGraderModel):
    """Rebuilt from its artifacts on load: the ONNX file, the spec and the novelty model's arrays."""

    grader: OnnxGrader

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.grader = OnnxGrader(context.artifacts[ONNX_ARTIFACT], spec_of(context), novelty_of(context))
