"""The grader's network as one ONNX graph, for graders that run without torch (``onnx_grader``).

The graph takes what the torch grader's network takes, photos prepared by ``prepare.network_input``
as float32 (N, 3, H, W) in [0, 1], and gives what the torch grader gives: the calibrated grade
probabilities (ImageNet normalisation, test-time augmentation, softmax and temperature inside) and
the pooled features its novelty check measures. ``int8`` is onnxruntime's static quantization
(QDQ, per-channel weights), its activation ranges calibrated on training photos. No MLflow here.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from pipeline.grading import Grader
from pipeline.models import FLIPS, head_of, pooled_features
from pipeline.onnx_grader import INPUT_NAME, as_network_input

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8")
EXPORT_FORMATS = ("onnx",)
OUTPUT_NAMES = ("probabilities", "features")
OPSET = 18
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
# Probabilities below this are clamped before their log, as the torch grader's TTA and calibration do.
_TINY = float(torch.finfo(torch.float32).tiny)


class ExportedNetwork(nn.Module):
    """[0, 1] RGB batch -> (calibrated grade probabilities, pooled features): the torch grader's
    ``outputs`` as one module (the features of the photo itself, not of its flips)."""

    def __init__(self, grader: Grader) -> None:
        super().__init__()
        self.network = grader.network.float().eval()
        self.flips = FLIPS if grader.spec.tta == "flips" else ((),)
        self.temperature = float(grader.spec.temperature)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.mean) / self.std
        # Under TTA the flips go through the network as one batch: one backbone in the graph.
        views = torch.cat([x.flip(dims) if dims else x for dims in self.flips]) if len(self.flips) > 1 else x
        pooled = pooled_features(self.network, views)
        probabilities = torch.softmax(head_of(self.network)(pooled), dim=1)
        features = pooled[:images.shape[0]]  # the photo itself
        if len(self.flips) > 1:
            mean = probabilities.reshape(len(self.flips), -1, probabilities.shape[1]).mean(dim=0)
            probabilities = torch.softmax(mean.clamp_min(_TINY).log(), dim=1)
        if self.temperature != 1.0:
            probabilities = torch.softmax(probabilities.clamp_min(_TINY).log() / self.temperature, dim=1)
        return probabilities, features


def export_onnx(grader: Grader, path: Path) -> Path:
    """Writes the grader's network as an ONNX model at ``path`` (any batch size, its input size)."""
    module = ExportedNetwork(grader).eval()
    example = torch.rand(2, 3, grader.spec.image_size, grader.spec.image_size)
    batch = torch.export.Dim("batch", min=1)
    for name in _EXPORTER_LOGGERS:  # their INFO lines narrate the exporter's own passes
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=UserWarning)  # the exporter's notes on its own internals
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        program = torch.onnx.export(module, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes={"images": {0: batch}}, opset_version=OPSET, dynamo=True,
                                    verbose=False)
    program.save(str(path))
    return path


class _CalibrationReader:
    """onnxruntime's calibration data reader: batches of prepared training photos."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32: Path, int8: Path, calibration_pixels: np.ndarray, batch_size: int = 16) -> Path:
    """``fp32`` statically quantized to int8 at ``int8``: QDQ, weights per channel, activation
    ranges from ``calibration_pixels`` (prepared training photos, uint8 (N, H, W, 3))."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = (as_network_input(calibration_pixels[start:start + batch_size])
               for start in range(0, len(calibration_pixels), batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8), _CalibrationReader(batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        # The head, softmax and temperature stay in float: they are a tiny share of
                        # the work and carry the probabilities' precision.
                        op_types_to_quantize=["Conv", "MatMul", "Add", "Relu", "MaxPool", "GlobalAveragePool"])
    return int8
