"""Benchmark 2: full train steps fed by each data path vs the same steps on tensors already in memory.

The second is the model's own limit on this machine; fed / in-memory is the loader efficiency.
Both run ``pipeline.engine.train_one_epoch`` (forward, loss, backward, SGD step) on the same
model. The paths: the processed JPEG cache or the uint8 cache, augmented in the loader workers or
on the training device (``cache_format`` x ``augment_device``).
Run: ``python -m benchmarks.training [--models resnet18,resnet50 --sizes 224 --precisions auto]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import PeakMemory, cache_datasets, print_table, write_json
from pipeline.config import TrainConfig
from pipeline.data.augment import augment_batch
from pipeline.data.dataset import ProcessedDataset, build_uint8_cache, make_loader
from pipeline.data.preprocess import preprocess
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_eyepacs_layout
from pipeline.engine import DeviceAugment, train_one_epoch
from pipeline.hardware import Accelerator, keep_batch_memory, resolve_device, resolve_precision
from pipeline.models import build_model

PATHS = ("jpeg/loader", "jpeg/model", "uint8/loader", "uint8/model")  # cache_format/augment_device


def throughput(model_name: str, batches, accel: Accelerator, augment: DeviceAugment | None = None) -> float:
    """images/s of the second of two epochs over ``batches`` (the first warms up workers and kernels)."""
    torch.manual_seed(0)
    model = accel.prepare(build_model(model_name, pretrained=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    train_one_epoch(model, batches, nn.CrossEntropyLoss(), optimizer, accel, augment=augment)
    return train_one_epoch(model, batches, nn.CrossEntropyLoss(), optimizer, accel, augment=augment)["images_per_sec"]


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--sizes", default="224")
    parser.add_argument("--precisions", default="auto", help="comma list of auto, fp32, bf16, fp16")
    parser.add_argument("--paths", default=",".join(PATHS), help="cache_format/augment_device pairs")
    parser.add_argument("--channels-last", default="true")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--workers", type=int, default=defaults.num_workers, help="train's default worker count")
    parser.add_argument("--cache", type=int, default=512, help="processed cache size the loader decodes")
    args = parser.parse_args()
    keep_batch_memory()  # as train does: the loaders' batches reuse memory
    sizes = [int(s) for s in args.sizes.split(",")]
    paths = [tuple(path.split("/")) for path in args.paths.split(",")]
    images = args.batches * args.batch_size
    device = resolve_device("auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw, processed = Path(tmp) / "raw", Path(tmp) / "processed"
        photo = (max(args.cache, 512) * 5 // 4, max(args.cache, 512))
        generate_eyepacs_layout(raw, train_patients=images // 2, test_patients=1, size=photo,
                                grade_shares=UNIFORM_GRADE_SHARES, workers=os.cpu_count() or 1)
        preprocess(raw, processed, image_size=args.cache, val_fraction=0.25)
        cache = ProcessedDataset(processed, args.cache)
        for size in sizes:
            arrays = build_uint8_cache(cache, size, os.cpu_count() or 1) if any(f == "uint8" for f, _ in paths) else {}
            # The same uint8 batches a loader yields, so every path normalises on the device alike.
            batch = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8)
            in_memory = [(batch, torch.arange(args.batch_size) % 5)] * args.batches
            for precision in args.precisions.split(","):
                accel = Accelerator(device, resolve_precision(precision, device), args.channels_last == "true")
                for model_name in args.models.split(","):
                    memory = throughput(model_name, in_memory, accel)
                    for cache_format, augment_device in paths:
                        dataset = cache_datasets(cache, size, arrays if cache_format == "uint8" else None,
                                                 augment_device == "model", images)
                        loader = make_loader(dataset, args.batch_size, shuffle=True, num_workers=args.workers, seed=0,
                                             training=True)
                        with PeakMemory() as peak:
                            fed = throughput(model_name, loader, accel, augment_batch if augment_device == "model" else None)
                        rows.append({"model": model_name, "size": size, "precision": precision,
                                     "dtype": str(accel.amp_dtype or torch.float32).removeprefix("torch."),
                                     "cache_format": cache_format, "augment_device": augment_device,
                                     "fed img/s": fed, "in-memory img/s": memory, "loader efficiency": fed / memory,
                                     "peak MiB": peak.peak_mib})
                        print(rows[-1], flush=True)
    print_table(f"Train step images/s on {device}, batch {args.batch_size}, {args.workers} loader workers, "
                f"channels_last={args.channels_last}", rows)
    write_json("training", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
