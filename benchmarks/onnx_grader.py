"""The torch grader against its ONNX exports (``export``): speed, file size and install size.

For resnet18 and resnet50 at the demo's (128 px) and the study's (224 px) input sizes: latency at
batch 1 (median) and throughput at batch 32 of the network as each grader runs it (torch fp32,
onnxruntime fp32, onnxruntime int8 calibrated on 64 prepared photos), the model files' sizes, and
the installed size of each served environment (the packages its requirements pull in, measured in
this interpreter's site-packages). The networks are untrained: speed does not depend on the
weights; the agreement of a trained grader's exports is what ``export`` logs. Run by hand:

    python -m benchmarks.onnx_grader [--sizes 128 224] [--models resnet18 resnet50]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import print_table, write_json
from pipeline.export import export_onnx, quantize_int8
from pipeline.grading import Grader
from pipeline.models import build_model
from pipeline.onnx_grader import OnnxGrader
from pipeline.photo_grader import GraderSpec
from pipeline.tracking.registry import ONNX_SERVED_PACKAGES, SERVED_PACKAGES

CALIBRATION_PHOTOS = 64


def timed(run, pixels: np.ndarray, repeats: int) -> list[float]:
    run(pixels)  # warm-up: the first call pays for allocations and kernel choice
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(pixels)
        times.append(time.perf_counter() - started)
    return times


def speed(grader, image_size: int, rng: np.random.Generator) -> tuple[float, float]:
    """(median latency of one photo in ms, photos/s at batch 32) of ``grader.network_outputs``."""
    one = rng.integers(0, 256, (1, image_size, image_size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (32, image_size, image_size, 3), dtype=np.uint8)
    latency = statistics.median(timed(grader.network_outputs, one, 20)) * 1000
    throughput = 32 / statistics.median(timed(grader.network_outputs, batch, 3))
    return latency, throughput


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def installed_bytes(packages: tuple[str, ...]) -> int:
    """The files of ``packages`` and everything they require (not extras), as installed here."""
    seen, todo, total = set(), [_name(p) for p in (*packages, "mlflow")], 0
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        total += sum((dist.locate_file(f).stat().st_size for f in dist.files or [] if dist.locate_file(f).is_file()))
        todo += [_name(r) for r in dist.requires or [] if "extra ==" not in r]
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for model in args.models:
        for size in args.sizes:
            torch.manual_seed(0)
            grader = Grader(build_model(model, pretrained=False), GraderSpec(model, size, size, 0.5))
            with tempfile.TemporaryDirectory() as tmp:
                weights = Path(tmp) / "weights.pt"
                torch.save(grader.network.state_dict(), weights)
                fp32 = export_onnx(grader, Path(tmp) / "fp32.onnx")
                calibration = rng.integers(0, 256, (CALIBRATION_PHOTOS, size, size, 3), dtype=np.uint8)
                int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx", calibration)
                graders = {"torch fp32": (grader, weights), "onnxruntime fp32": (OnnxGrader(fp32, grader.spec), fp32),
                           "onnxruntime int8": (OnnxGrader(int8, grader.spec), int8)}
                base = None
                for name, (candidate, file) in graders.items():
                    latency, throughput = speed(candidate, size, rng)
                    base = base or 1000 / latency
                    rows.append({"model": model, "px": size, "grader": name, "batch 1 ms": round(latency, 1),
                                 "batch 1 vs torch": f"{1000 / latency / base:.2f}x",
                                 "batch 32 photos/s": round(throughput, 1), "file MB": round(file.stat().st_size / 1e6, 1)})
    print_table(f"Grader network speed (threads: torch {torch.get_num_threads()}, onnxruntime default)", rows)
    environments = [{"served environment": "torch pyfunc", "packages": ", ".join(SERVED_PACKAGES),
                     "installed GB": round(installed_bytes(SERVED_PACKAGES) / 1e9, 2)},
                    {"served environment": "ONNX pyfunc", "packages": ", ".join(ONNX_SERVED_PACKAGES),
                     "installed GB": round(installed_bytes(ONNX_SERVED_PACKAGES) / 1e9, 2)}]
    print_table("Served environments (with mlflow and every dependency, as installed here)", environments)
    write_json("onnx_grader", {"speed": rows, "environments": environments})


if __name__ == "__main__":
    main()
