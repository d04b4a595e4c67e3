"""Benchmark: ``preprocess`` against a naive full decode + resize, on realistic camera photos.

Naive: what a script without a preprocessing step does with a photo, in one process: decode the
3888x2592 JPEG in full and resize it to the cache size (as the course labs' loader does every
epoch), bicubic as preprocess resizes. Ours: ``preprocess`` end to end (reduced-scale decode, disc crop, resize, JPEG encode,
split and manifest), with 1 process and with one per core. Also the cost of each stage of one
photo on one core (CPU time, so other processes on the machine do not inflate it).
Run: ``python -m benchmarks.preprocess [--photos 48 --photo 3888x2592 --size 512 --raw DIR]``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from benchmarks.common import print_table, realistic_photos, write_json
from pipeline.data import preprocess as stages
from pipeline.data.preprocess import CACHE_JPEG_QUALITY, cache_image, preprocess


def full_decode(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def naive(path: Path, size: int) -> Image.Image:
    """The whole photo decoded, then resized with preprocess's filter: the same quality, the naive way."""
    return full_decode(path).resize((size, size), Image.Resampling.BICUBIC)


def cpu_ms(work: Callable[[], object], repeats: int) -> float:
    """Median CPU milliseconds of ``work`` on this thread."""
    times = []
    for _ in range(repeats):
        started = time.thread_time()
        work()
        times.append((time.thread_time() - started) * 1000)
    return statistics.median(times)


def stage_costs(paths: list[Path], size: int) -> list[dict[str, object]]:
    """ms of CPU per photo for each stage of ``cache_image``, and for the naive decode + resize."""
    per_stage: dict[str, list[float]] = {}

    def record(name: str, work: Callable[[], object], repeats: int = 3) -> None:
        per_stage.setdefault(name, []).append(cpu_ms(work, repeats))

    for path in paths:
        img, _ = stages._decode(path, (size, size))
        box = stages.fundus_box(img)
        fundus = img.crop(box).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        record("decode at reduced scale (draft)", lambda: stages._decode(path, (size, size)))
        record("fundus_box", lambda: stages.fundus_box(img))
        record("crop + bicubic resize", lambda: img.crop(box).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0))
        record(f"JPEG encode q{CACHE_JPEG_QUALITY}", lambda: fundus.save(io.BytesIO(), format="JPEG", quality=CACHE_JPEG_QUALITY))
        record("cache_image, all of the above", lambda: cache_image(path, size))
        record("naive: full decode", lambda: full_decode(path), 1)
        whole = full_decode(path)
        record("naive: bicubic resize of the full photo", lambda: whole.resize((size, size), Image.Resampling.BICUBIC), 1)
    return [{"stage": name, "ms CPU per photo": statistics.median(values)} for name, values in per_stage.items()]


def best_rate(work: Callable[[], object], photos: int, repeats: int) -> float:
    """Photos/s of the fastest of ``repeats`` runs: the one least disturbed by other processes."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return photos / min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=int, default=48, help="photos (even)")
    parser.add_argument("--photo", default="3888x2592")
    parser.add_argument("--size", type=int, default=512, help="preprocess's image_size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw", default="", help="a folder to keep (and reuse) the generated photos in")
    args = parser.parse_args()
    width, height = (int(v) for v in args.photo.split("x"))
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(args.raw or Path(tmp) / "raw")
        paths = realistic_photos(raw, args.photos, (width, height))
        megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        naive_rate = best_rate(lambda: [naive(p, args.size) for p in paths], len(paths), args.repeats)
        rows = [{"path": "naive: full decode + resize", "processes": 1, "photos/s": naive_rate, "x naive": 1.0}]
        for workers in sorted({1, cores}):
            # A fresh folder each time: a rerun into the same one would reuse every image.
            rate = best_rate(lambda: preprocess(raw, Path(tempfile.mkdtemp(dir=tmp)), image_size=args.size,
                                                val_fraction=0.25, num_workers=workers), len(paths), args.repeats)
            rows.append({"path": "preprocess", "processes": workers, "photos/s": rate, "x naive": rate / naive_rate})
            print(rows[-1], flush=True)
        stages_rows = stage_costs(paths[: min(12, len(paths))], args.size)
    print_table(f"Preprocess to {args.size} px: {len(paths)} photos {args.photo} (mean {megabytes:.2f} MB), "
                f"best of {args.repeats}", rows)
    print_table(f"Per photo and core, {args.photo} -> {args.size} px (median CPU ms)", stages_rows)
    write_json("preprocess", {"args": vars(args), "mean_photo_mb": megabytes, "rows": rows, "stages": stages_rows})


if __name__ == "__main__":
    main()
