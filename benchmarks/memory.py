"""Benchmark 3: peak memory of a train step per model and batch size (RSS; GPU memory on CUDA).

Each configuration runs in a fresh process so its peak is its own.
Run: ``python -m benchmarks.memory [--models resnet18,resnet50 --batch-sizes 4,16 --size 224]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from torch import nn

from benchmarks.common import print_table, write_json


def child(model_name: str, batch_size: int, size: int, precision: str) -> dict[str, float]:
    from pipeline.engine import train_one_epoch
    from pipeline.hardware import Accelerator, resolve_device, resolve_precision
    from pipeline.models import build_model

    device = resolve_device("auto")
    accel = Accelerator(device, resolve_precision(precision, device), channels_last=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = accel.prepare(build_model(model_name, pretrained=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = [(torch.rand(batch_size, 3, size, size), torch.arange(batch_size) % 5)] * 2
    train_one_epoch(model, batches, nn.CrossEntropyLoss(), optimizer, accel)
    result = {"rss_before_mib": before, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch-sizes", default="4,16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "BATCH", "SIZE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_name, batch, size, precision = args.child
        print(json.dumps(child(model_name, int(batch), int(size), precision)))
        return
    rows = []
    for model_name in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", model_name, str(batch),
                                  str(args.size), args.precision], capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"model": model_name, "batch": batch, "size": args.size, **measured})
    print_table(f"Peak memory of a train step at {args.size} px ({args.precision})", rows)
    write_json("memory", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
