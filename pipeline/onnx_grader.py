"""A grader that runs without torch: the exported network (``export``) in onnxruntime, with the
same photo preparation, judging and decisions as the torch grader (``photo_grader``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.gradability import NoveltyModel
from pipeline.photo_grader import GraderSpec, PhotoGrader

INPUT_NAME = "images"  # the exported graph's input: float32 (N, 3, H, W) in [0, 1]


def as_network_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) prepared photos -> the graph's input, converted as the torch grader
    converts them (one float32 division by 255)."""
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255)


class OnnxGrader(PhotoGrader):
    """``PhotoGrader`` whose network is an ONNX model file."""

    def __init__(self, model: str | Path | bytes, spec: GraderSpec, novelty: NoveltyModel | None = None,
                 threads: int = 0) -> None:
        import onnxruntime

        super().__init__(spec, novelty)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's choice (every physical core)
        source = model if isinstance(model, bytes) else str(model)
        self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def network_outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = self.session.run(None, {INPUT_NAME: as_network_input(pixels)})
        return probabilities.astype(np.float64), features
