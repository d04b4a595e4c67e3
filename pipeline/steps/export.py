"""The ``export`` step: a torch grader -> its network as ONNX (fp32 or int8), checked against the
torch grader on validation and test photos, logged as a torch-free photo-in pyfunc and registered
as a new version of the same registered model, tagged with its format."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline.config import require_choice
from pipeline.data.dataset import ProcessedDataset
from pipeline.data.prepare import cached_pixels
from pipeline.errors import DataError
from pipeline.export import EXPORT_FORMATS, QUANTIZATIONS, export_onnx, quantize_int8
from pipeline.onnx_grader import OnnxGrader
from pipeline.photo_grader import PhotoGrader, concatenated
from pipeline.steps.evaluate import graders_cache, measures_of
from pipeline.tracking import registry, runs, tags
from pipeline.tracking.sink import metric_sink

log = logging.getLogger(__name__)

# An fp32 export must give the torch grader's probabilities to this (and every call the same).
FP32_TOLERANCE = 1e-4
CHECK_SPLITS = ("val", "test")
MODEL_NAME = "grader_onnx"  # the LoggedModel's name in the export run


def evenly_spread(count: int, limit: int) -> np.ndarray:
    """Up to ``limit`` row indices out of ``count``, spread over them all."""
    return np.unique(np.linspace(0, count - 1, num=min(count, limit)).round().astype(int)) if count else np.array([], int)


def split_pixels(processed: ProcessedDataset, split: str, image_size: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` photos of a split as the network receives them (uint8 (N, H, W, 3)) and
    their quality measures."""
    rows = processed.split(split)
    rows = rows.iloc[evenly_spread(len(rows), limit)]
    pixels = np.stack([cached_pixels(processed.root / file, image_size) for file in rows["file"]])
    return pixels, measures_of(processed, rows)


def agreement(reference: PhotoGrader, other: PhotoGrader, pixels: np.ndarray, measures: np.ndarray,
              batch_size: int = 32) -> dict[str, float]:
    """How far ``other``'s answers on prepared photos are from ``reference``'s: the largest
    difference of a probability, and the shares of equal grades, referable calls and gradable calls."""
    answers = []
    for grader in (reference, other):
        judged = concatenated([grader.judge_pixels(pixels[start:start + batch_size], measures[start:start + batch_size],
                                                   [""] * len(pixels[start:start + batch_size]))
                               for start in range(0, len(pixels), batch_size)])
        answers.append((judged.probabilities, grader.decide(judged)))
    (p_ref, ref), (p_other, out) = answers
    return {"photos_compared": float(len(pixels)),
            "max_abs_probability_difference": float(np.abs(p_ref - p_other).max()),
            "grade_agreement": float((ref["predicted_grade"] == out["predicted_grade"]).mean()),
            "referable_agreement": float((ref["referable"].fillna(False) == out["referable"].fillna(False)).mean()),
            "gradable_agreement": float((ref["gradable"] == out["gradable"]).mean())}


def run_export(model_uri: str, data_dir: str, export_format: str = "onnx", quantize: str = "none",
               check_photos: int = 100, calibration_photos: int = 64, min_agreement: float = 0.98) -> dict[str, float]:
    """Exports the grader of ``model_uri`` (see the module's docstring); returns the check's figures.

    Raises:
        ConfigError: an unknown format or quantization.
        DataError: the export does not agree with the torch grader (nothing is logged or registered).
    """
    require_choice("format", export_format, EXPORT_FORMATS)
    require_choice("quantize", quantize, QUANTIZATIONS)
    uri = registry.model_uri_of(model_uri)
    loaded = registry.load_model(uri)
    grader, spec = loaded.grader, loaded.grader.spec
    runs.log_params({"model_uri": uri, "data_dir": data_dir, "format": export_format, "quantize": quantize,
                     "check_photos": check_photos, "calibration_photos": calibration_photos,
                     "min_agreement": min_agreement})
    if loaded.source_run_id:
        runs.set_tags({tags.SOURCE_RUN: loaded.source_run_id})
    processed = graders_cache(uri, spec, data_dir)
    checks = {split: split_pixels(processed, split, spec.image_size, check_photos) for split in CHECK_SPLITS}
    with tempfile.TemporaryDirectory(prefix="retina-flow-export-") as tmp:
        network = export_onnx(grader, Path(tmp) / "grader.onnx")
        if quantize == "int8":
            calibration, _ = split_pixels(processed, "train", spec.image_size, calibration_photos)
            network = quantize_int8(network, Path(tmp) / "grader-int8.onnx", calibration)
        exported = OnnxGrader(network, spec, grader.novelty)
        figures = {"onnx_file_bytes": float(network.stat().st_size)}
        for split, (pixels, measures) in checks.items():
            figures |= {f"{split}_{name}": value for name, value in agreement(grader, exported, pixels, measures).items()}
        metric_sink().log_summary(figures)
        _check(figures, quantize, min_agreement)
        examples = [(processed.root / file).read_bytes() for file in processed.split("test")["file"][:2]]
        model_uri_out, _ = registry.log_onnx_grader(exported, network, examples, MODEL_NAME)
    name, alias = registry.registered_name_and_alias(uri)
    if name:
        suffix = "-onnx" + ("-int8" if quantize == "int8" else "")
        version = registry.register_model(model_uri_out, name, f"{alias}{suffix}" if alias else "",
                                          version_tags={tags.FORMAT: export_format, tags.QUANTIZE: quantize,
                                                        tags.EXPORTED_FROM: uri})
        runs.set_tags({tags.REGISTERED_VERSION: f"{name} v{version}"})
        figures["registered_version"] = float(version)
        log.info("registered %s as %s v%s%s", model_uri_out, name, version, f" (alias @{alias}{suffix})" if alias else "")
    runs.set_tags({tags.MODEL_URI: model_uri_out})
    return figures


def _check(figures: dict[str, float], quantize: str, min_agreement: float) -> None:
    for split in CHECK_SPLITS:
        if quantize == "none":
            difference = figures[f"{split}_max_abs_probability_difference"]
            calls = [figures[f"{split}_{name}"] for name in ("grade_agreement", "referable_agreement", "gradable_agreement")]
            if difference > FP32_TOLERANCE or min(calls) < 1.0:
                raise DataError(f"the fp32 ONNX grader differs from the torch grader on {split} photos: probabilities "
                                f"by up to {difference:.2e} (allowed {FP32_TOLERANCE:g}), calls agreeing {min(calls):.1%}")
        else:
            worst = min(figures[f"{split}_grade_agreement"], figures[f"{split}_referable_agreement"])
            if worst < min_agreement:
                raise DataError(f"the int8 ONNX grader agrees with the torch grader on only {worst:.1%} of the {split} "
                                f"photos' grades or referable calls (min_agreement={min_agreement}); nothing was registered")
