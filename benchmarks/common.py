"""Shared by the benchmarks: synthetic full-size data, timing, and table/JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    from pipeline.hardware import cpu_has_native_bf16

    return {
        "cpu_cores": os.cpu_count(),
        "processor": cpu_model(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def images_per_second(batches: Iterable, consume: Callable[[object], int], warmup: int = 1) -> float:
    """Images/s over ``batches`` after ``warmup`` batches (worker start-up and first-call costs)."""
    iterator = iter(batches)
    for _ in range(warmup):
        consume(next(iterator))
    seen, started = 0, time.perf_counter()
    for batch in iterator:
        seen += consume(batch)
    return seen / (time.perf_counter() - started)


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    columns = list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


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
