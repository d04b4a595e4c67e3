"""The decode-free training cache (``cache_format=uint8``): each split's images decoded once, at
the training size, into a memory-mapped ``(N, S, S, 3)`` uint8 ``.npy`` beside the manifest.

An epoch then reads bytes instead of decoding JPEGs. The arrays are built from the processed
JPEG cache by the same decode and resize that the JPEG path runs every epoch (``EvalPreset``), so
both paths see the very same pixels. They live in ``<dataset>/uint8/<size>px/`` and go with the
dataset when preprocess replaces it; a ``<split>.json`` beside each array lists the image ids it
holds, in order, and an array that does not match the manifest is rebuilt.

Disk and RAM: S x S x 3 bytes per image (README, "The data path"); an epoch reads every page, so
the files should fit in the page cache, which all loader workers (and parallel runs) share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import DataError

log = logging.getLogger(__name__)

FOLDER = "uint8"
BUILD_BATCH = 64


def array_folder(root: Path, image_size: int) -> Path:
    """One folder per training size, as the JPEG caches have one per cache size."""
    return root / FOLDER / f"{image_size}px"


def array_path(root: Path, image_size: int, split: str) -> Path:
    """Where the uint8 array of ``split`` at ``image_size`` lives in the dataset at ``root``."""
    return array_folder(root, image_size) / f"{split}.npy"


class ArrayImages:
    """The rows of one memory-mapped ``(N, S, S, 3)`` array, as uint8 ``(3, S, S)`` tensors.

    The file is mapped on first access, so each DataLoader worker maps it itself (a mapping does
    not pickle); every process then reads the same page-cache pages.
    """

    def __init__(self, path: Path, count: int) -> None:
        self.path, self.count = path, count
        self._array: np.ndarray | None = None

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._array is None:
            self._array = self._open()
        # A private copy: torch will not safely wrap a read-only mapping, and the batch copies anyway.
        return torch.from_numpy(np.array(self._array[index])).permute(2, 0, 1)

    def _open(self) -> np.ndarray:
        try:
            array = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"uint8 cache {self.path} cannot be read ({exc}); delete it and train again to rebuild it") from None
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] != self.count or array.shape[3] != 3:
            raise DataError(f"uint8 cache {self.path} holds {array.dtype} {array.shape}, not the {self.count} "
                            f"RGB images of its split; delete it and train again to rebuild it")
        return array

    def __getstate__(self) -> dict:
        return {"path": self.path, "count": self.count, "_array": None}


def build_arrays(root: Path, splits: dict[str, Dataset], ids: dict[str, list[str]],
                 image_size: int, num_workers: int = 0) -> dict[str, Path]:
    """Writes the uint8 array of each split that lacks a current one; returns every split's path.

    Args:
        root: the processed dataset folder.
        splits: per split, a dataset yielding (uint8 (3, S, S) image, grade) in manifest order:
            the JPEG path's eval preset, whose pixels the arrays hold.
        ids: per split, the manifest's image ids, in that order: what makes an array current.
        num_workers: DataLoader workers that decode the JPEGs.

    Several processes (parallel runs, torchrun ranks) may ask at once: a file lock lets one build
    while the others wait, then find the arrays current.
    """
    folder = array_folder(root, image_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cache_format=uint8 keeps its arrays beside the manifest, but {folder} cannot be "
                        f"created ({exc}); use cache_format=jpeg or a writable data_dir") from None
    paths = {split: array_path(root, image_size, split) for split in splits}
    # A DataLoader draws its base seed from the global RNG: building must not change the model's
    # initialisation, or a run would differ with whether its cache existed already.
    with exclusive_lock(folder / ".lock"), torch.random.fork_rng(devices=[]):
        for split, dataset in splits.items():
            if not _is_current(paths[split], ids[split]):
                _write(paths[split], dataset, ids[split], image_size, num_workers)
    return paths


def _is_current(path: Path, ids: list[str]) -> bool:
    index = path.with_suffix(".json")
    if not (path.is_file() and index.is_file()):
        return False
    try:
        return json.loads(index.read_text()).get("ids") == ids
    except (OSError, ValueError):
        return False


def _write(path: Path, dataset: Dataset, ids: list[str], image_size: int, num_workers: int) -> None:
    """Decodes every image of ``dataset`` into a new array, written under a temporary name and
    renamed into place, so a reader never maps a half-written file."""
    started = time.perf_counter()
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(ids), image_size, image_size, 3))
        start = 0
        for images, _ in DataLoader(dataset, batch_size=BUILD_BATCH, num_workers=num_workers):
            if images.shape[-2:] != (image_size, image_size):
                raise DataError(f"{path}: the split's images are {tuple(images.shape[-2:])}, not {image_size} px square")
            array[start:start + len(images)] = images.permute(0, 2, 3, 1).numpy()
            start += len(images)
        array.flush()
        del array  # unmap before the rename
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    index = path.with_suffix(".json")
    partial_index = index.with_name(f".{index.name}.partial-{os.getpid()}")
    partial_index.write_text(json.dumps({"image_size": image_size, "ids": ids}))
    os.replace(partial_index, index)
    log.info("uint8 cache %s: %d images, %.0f MB, built in %.1f s", path, len(ids), path.stat().st_size / 2**20,
             time.perf_counter() - started)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on the file ``path`` (created if need be) across processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
