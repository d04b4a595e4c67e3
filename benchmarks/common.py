"""Shared by the benchmarks: the machine, realistic photos, timing, peak memory, and table/JSON output."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import ConcatDataset, Dataset

from pipeline.data.dataset import ProcessedDataset, split_dataset
from pipeline.data.eyepacs import SYNTHETIC_MARKER
from pipeline.data.preprocess import PROCESSED_SPLITS
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_eyepacs_layout

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_instructions() -> list[str]:
    """The CPU's native bf16 instruction sets (``avx512_bf16``, ``amx_bf16``) that /proc/cpuinfo lists."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return []
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def machine() -> dict[str, object]:
    from pipeline.hardware import cpu_has_native_bf16

    return {
        "cpu_cores": os.cpu_count(),
        "processor": cpu_model(),
        "bf16_instructions": bf16_instructions(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }


def describe_machine() -> str:
    """One line naming the CPU (and its bf16 instructions), the GPU and the load when measured."""
    info = machine()
    bf16 = ", ".join(info["bf16_instructions"]) or "no bf16 instructions"
    load = ", ".join(f"{v:.2f}" for v in info["load_average"])
    return (f"CPU: {info['processor']}, {info['cpu_cores']} cores, {bf16}; GPU: {info['cuda'] or 'none'}; "
            f"torch {info['torch']}; load average {load}")


def realistic_photos(folder: Path, photos: int, size: tuple[int, int], jpeg_quality: int | None = None) -> list[Path]:
    """``photos`` camera-like synthetic photos (sensor noise; the camera's JPEG settings, or
    ``jpeg_quality``) of ``size`` in ``folder``, generated unless the folder already holds that set
    (benchmarks may share one with ``--raw``)."""
    marker = folder / SYNTHETIC_MARKER
    wanted = {"size": list(size), "counts": {"train": photos - 2, "test": 2}, "jpeg_quality": jpeg_quality}
    if not (marker.is_file() and {k: json.loads(marker.read_text()).get(k) for k in wanted} == wanted):
        started = time.perf_counter()
        generate_eyepacs_layout(folder, train_patients=(photos - 2) // 2, test_patients=1, size=size,
                                grade_shares=UNIFORM_GRADE_SHARES, workers=os.cpu_count() or 1,
                                jpeg_quality=jpeg_quality)
        print(f"generated {photos} {size[0]}x{size[1]} photos in {time.perf_counter() - started:.0f} s", flush=True)
    return sorted((folder / "images").iterdir())


class PeakMemory:
    """Peak proportional set size (PSS) of this process and its children (loader workers), sampled
    in a thread. PSS splits pages that processes share (the torch libraries, a memory-mapped
    cache) between them, so the sum does not count them once per worker as RSS would."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peak_bytes = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass  # a worker that just ended
            self.peak_bytes = max(self.peak_bytes, total)
            if self._stop.wait(self.interval):
                return


def cache_datasets(cache: ProcessedDataset, size: int, arrays: dict[str, Path] | None, on_device: bool,
                   epoch_images: int) -> Dataset:
    """Every split with the training preset, repeated to ``epoch_images``: epochs long enough that
    their ends (the workers' pipeline draining) do not dominate."""
    splits = [split_dataset(cache, split, size, train=True, array=(arrays or {}).get(split), augment_on_device=on_device)
              for split in PROCESSED_SPLITS]
    once = sum(len(s) for s in splits)
    return ConcatDataset(splits * max(1, epoch_images // once))


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    """A markdown table under its title and the machine it was measured on."""
    columns = list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}\n{describe_machine()}\n")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def write_json(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"\nwrote {path}")
    return path
