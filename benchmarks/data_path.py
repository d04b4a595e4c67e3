"""Benchmark 1: images/s each data path delivers to the training step, with training augmentation.

Paths: the course labs' loader (every epoch: decode the 3888x2592 photo in full, resize, augment,
normalise in the workers); the processed JPEG cache (decode a 512 px JPEG, augment); the uint8
cache (read the decoded image from a memory-mapped array, augment). The two caches augment in the
loader workers (``augment_device=loader``) or on whole batches on the training device
(``augment_device=model``). Every path delivers normalised float32 batches on the device: a uint8
batch is moved, augmented there if so, and normalised as ``Accelerator.inputs`` does, and that
work counts. Measured with 1 loader worker (per core) and one per core (all cores), with the peak
memory (PSS) of the process and its workers; the caches' disk size per 1,000 images.
Run: ``python -m benchmarks.data_path [--photos 64 --sizes 512,224 --raw DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from benchmarks.common import PeakMemory, cache_datasets, print_table, realistic_photos, write_json
from pipeline.data.augment import augment_batch
from pipeline.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ProcessedDataset,
    build_uint8_cache,
    make_loader,
    normalize_batch,
)
from pipeline.data.preprocess import preprocess
from pipeline.hardware import keep_batch_memory

PATHS = [  # (name, cache_format, augment_device)
    ("labs' loader", None, "loader"),
    ("JPEG cache", "jpeg", "loader"),
    ("JPEG cache", "jpeg", "model"),
    ("uint8 cache", "uint8", "loader"),
    ("uint8 cache", "uint8", "model"),
]


class LabStyleDataset(Dataset):
    """What the course labs do: full decode and resize of the raw photo on every access."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths = paths
        # On the PIL image, as the labs' torchvision transforms did (faster than on a 10 MP tensor).
        self.transform = v2.Compose([
            v2.Resize((size, size), antialias=True), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
            v2.RandomRotation(20, fill=0), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as img:
            return self.transform(img.convert("RGB")), 0


def consumer(device: torch.device) -> Callable[[list[torch.Tensor]], int]:
    """What the training step receives: the batch on the device, augmented there if the loader
    sent draws, normalised if it is uint8."""

    def consume(batch: list[torch.Tensor]) -> int:
        images = batch[0].to(device, non_blocking=True)
        if len(batch) == 3:
            images = augment_batch(images, batch[2])
        if images.dtype == torch.uint8:
            images = normalize_batch(images)
        return len(images)

    return consume


def epochs(loader: DataLoader) -> Iterator[list[torch.Tensor]]:
    while True:
        yield from loader


def measure(dataset: Dataset, workers: int, batch_size: int, seconds: float, device: torch.device) -> tuple[float, float]:
    """(images/s, peak MiB): the best of at least 3 windows of >= ``seconds`` / 3 and 4 batches each,
    after a warm-up batch (the workers' start): the window least disturbed by other processes.

    This process gets the cores the workers leave, at least one: a second OpenMP thread for the
    normalisation would only spin-wait for a core a worker holds (on 2 cores with 2 workers, 1
    thread delivered ~35% more than 2).
    """
    consume = consumer(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    rates: list[float] = []
    with PeakMemory() as memory:
        batches = epochs(make_loader(dataset, batch_size, shuffle=True, num_workers=workers, seed=0, training=True))
        consume(next(batches))
        seen, count, started = 0, 0, time.perf_counter()
        for batch in batches:
            seen += consume(batch)
            count += 1
            if count >= 4 and time.perf_counter() - started >= seconds / 3:
                if device.type == "cuda":
                    torch.cuda.synchronize()  # the device's work counts
                rates.append(seen / (time.perf_counter() - started))
                if len(rates) == 3:
                    break
                seen, count, started = 0, 0, time.perf_counter()
        batches.close()  # ends the workers inside the measurement, as a finished run would
    torch.set_num_threads(threads)
    return max(rates), memory.peak_mib


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=int, default=64, help="photos (even)")
    parser.add_argument("--photo", default="3888x2592")
    parser.add_argument("--sizes", default="512,224", help="network input sizes; the JPEG cache is made at the largest")
    parser.add_argument("--workers", default="", help="loader worker counts to measure (default: 1 and one per core)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per path, in 3 windows of >= 4 batches")
    parser.add_argument("--epoch-images", type=int, default=1024, help="the caches' epoch length (repeats the photos)")
    parser.add_argument("--batch-size", type=int, default=16, help="train's default")
    parser.add_argument("--raw", default="", help="a folder to keep (and reuse) the generated photos in")
    args = parser.parse_args()
    keep_batch_memory()  # as train does: the loaders' batches reuse memory
    width, height = (int(v) for v in args.photo.split("x"))
    sizes = [int(s) for s in args.sizes.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, os.cpu_count() or 1})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, storage = [], []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(args.raw or Path(tmp) / "raw")
        photos = realistic_photos(raw, args.photos, (width, height))
        started = time.perf_counter()
        preprocess(raw, Path(tmp) / "processed", image_size=max(sizes), val_fraction=0.25)
        preprocess_seconds = time.perf_counter() - started
        cache = ProcessedDataset(Path(tmp) / "processed", max(sizes))
        images = len(cache.manifest)
        storage.append({"cache": f"JPEG q95, {cache.image_size} px", "MB per 1,000 images": folder_mb(cache.root / "images") / images * 1000,
                        "built in s": preprocess_seconds, "from": f"{images} photos"})
        for size in sizes:
            started = time.perf_counter()
            arrays = build_uint8_cache(cache, size, num_workers=os.cpu_count() or 1)
            storage.append({"cache": f"uint8, {size} px", "MB per 1,000 images": sum(p.stat().st_size for p in arrays.values()) / 1e6 / images * 1000,
                            "built in s": time.perf_counter() - started, "from": f"the {cache.image_size} px JPEG cache"})
            labs = None
            for workers in worker_counts:
                for name, cache_format, augment_device in PATHS:
                    if cache_format is None:
                        dataset: Dataset = LabStyleDataset(photos, size)
                    else:
                        dataset = cache_datasets(cache, size, arrays if cache_format == "uint8" else None,
                                                 augment_device == "model", args.epoch_images)
                    rate, peak = measure(dataset, workers, args.batch_size, args.seconds, device)
                    labs = rate if cache_format is None else labs
                    rows.append({"input": size, "path": name, "augment": augment_device, "workers": workers,
                                 "img/s": rate, "x labs": rate / labs, "peak MiB": peak})
                    print(rows[-1], flush=True)
    print_table(f"Images/s delivered to the training step on {device} ({args.photo} photos, batch {args.batch_size}, "
                f"with flips + rotation; x labs = against the labs' loader with the same workers)", rows)
    print_table("Each path at its best worker count, against the labs' loader at its best (the whole machine)",
                best_of(rows))
    print_table("Cache size on disk (the uint8 cache also wants that much page cache, shared by all workers)", storage)
    write_json("data_path", {"args": vars(args), "rows": rows, "storage": storage})


def best_of(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    best: dict[tuple, dict[str, object]] = {}
    for row in rows:
        key = (row["input"], row["path"], row["augment"])
        if key not in best or row["img/s"] > best[key]["img/s"]:
            best[key] = row
    table = []
    for (size, path, augment), row in best.items():
        labs = best[(size, "labs' loader", "loader")]["img/s"]
        table.append({"input": size, "path": path, "augment": augment, "workers": row["workers"], "img/s": row["img/s"],
                      "x labs' best": row["img/s"] / labs})
    return table


if __name__ == "__main__":
    main()
