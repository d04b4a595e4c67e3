"""Per-epoch training checkpoints: the schema, written atomically, read with ``weights_only=True``.

A checkpoint holds everything a run needs to continue as if it had never stopped: model,
optimizer (and loss scaler), the epoch, the metric history and best epoch so far, and the
torch / numpy / python RNG states. Data order and augmentation need no saved position: they
are a function of (seed, epoch, index) (see ``data.sampling``), so a run killed mid-epoch
redoes that epoch from its start.

The schema has a version (``FORMAT_VERSION``); ``load`` refuses any other, with a message saying
so, rather than failing later on a missing key.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.engine import EvalOutput, FitState
from pipeline.errors import DataError

# 2: the selected epoch's validation predictions (its operating point is chosen on them).
FORMAT_VERSION = 2
LAST = "last.pt"


def run_checkpoint_path(checkpoint_dir: str | Path, run_id: str) -> Path:
    """``<checkpoint_dir>/<run id>/last.pt``: where a run's crash-resume checkpoint lives."""
    return Path(checkpoint_dir) / run_id / LAST


def discard(path: Path) -> None:
    """Removes a finished run's checkpoint folder: it only served a resume that is no longer needed.

    A resnet50 checkpoint is about 270 MB (model, momentum buffers, best weights); leaving one per
    finished run in the working folder would fill a disk over a study.
    """
    shutil.rmtree(path.parent, ignore_errors=True)


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Writes to a temporary file and renames it: a kill mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        torch.save(payload, partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk must not leave half a checkpoint beside the last one
        raise


def training_state(config: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None, state: FitState) -> dict[str, Any]:
    """The checkpoint of a run after ``state.epoch``: what ``restore`` puts back."""
    return {
        "format": FORMAT_VERSION,
        "config": config,
        "epoch": state.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_state": state.best_state,
        "best_test": _eval_output(state.best_test),
        "best_val": _eval_output(state.best_val),
        "rng": rng_state(),
    }


def restore(saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None) -> FitState:
    """Puts model, optimizer, scaler and RNGs back as they were after the saved epoch."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    restore_rng(saved["rng"])
    return FitState(saved["epoch"], saved["history"], saved["best_epoch"], saved["best_state"],
                    _restored_eval_output(saved["best_test"]), _restored_eval_output(saved["best_val"]))


def _eval_output(output: EvalOutput) -> dict[str, Any]:
    """Tensors and plain numbers only, so ``weights_only`` loading accepts it."""
    return {"loss": output.loss, "accuracy": output.accuracy, "targets": torch.from_numpy(output.targets),
            "probabilities": torch.from_numpy(output.probabilities)}


def _restored_eval_output(saved: dict[str, Any]) -> EvalOutput:
    return EvalOutput(saved["loss"], saved["accuracy"], saved["targets"].numpy(), saved["probabilities"].numpy())


def load(path: Path) -> dict[str, Any]:
    """A checkpoint written by this version's schema.

    Raises:
        DataError: naming the file, when it cannot be read or holds another schema version.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise DataError(f"checkpoint {path} cannot be loaded: {exc}") from None
    found = saved.get("format") if isinstance(saved, dict) else None
    if found != FORMAT_VERSION:
        raise DataError(f"checkpoint {path} has format {found!r}, but this version of retina-flow reads format "
                        f"{FORMAT_VERSION} only; resume it with the version that wrote it, or start a new run")
    return saved


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain types only, so ``weights_only`` loading accepts them."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
