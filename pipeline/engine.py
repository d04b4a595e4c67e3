"""Training and evaluation loops: plain functions over a model and loaders, no tracking inside."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.distributed import all_reduce_sum, gather_in_order, unwrap
from pipeline.hardware import Accelerator
from pipeline.models import head_of, set_backbone_trainable
from pipeline.schedules import set_lr

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
MetricsFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
# (uint8 images on the training device, the loader's per-image draws) -> augmented uint8 images
DeviceAugment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EvalOutput:
    loss: float
    accuracy: float
    targets: np.ndarray
    probabilities: np.ndarray  # (images, grades) softmax outputs

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.accuracy}

    @property
    def diverged(self) -> bool:
        """Some outputs are NaN or infinite: argmax-based metrics then describe no real prediction."""
        return not np.isfinite(self.probabilities).all()


@dataclass
class FitState:
    """Where training stands after an epoch: what a checkpoint keeps and a resumed ``fit`` takes."""

    epoch: int
    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    best_test: EvalOutput
    best_val: EvalOutput


@dataclass
class FitResult:
    best_epoch: int
    best_score: float  # the select metric at the best epoch
    best_state: dict[str, torch.Tensor]
    best_test: EvalOutput  # the selected model's test predictions, for the confusion matrix
    best_val: EvalOutput  # and its validation predictions, where its operating point is chosen
    history: list[dict[str, float]] = field(default_factory=list)


def progress_bar(loader: DataLoader, label: str | None, accel: Accelerator) -> tqdm:
    """``loader`` with a progress bar labelled ``label``: on a terminal only (quiet in CI logs and
    files), on the main process only, and none without a label."""
    return tqdm(loader, desc=label, unit="batch", leave=False, dynamic_ncols=True,
                disable=True if label is None or accel.dist.rank != 0 else None)


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    accel: Accelerator, *, frozen_backbone: bool = False,
                    scaler: torch.amp.GradScaler | None = None,
                    on_batch_end: Callable[[], None] | None = None,
                    augment: DeviceAugment | None = None, progress: str | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns ``loss``, ``accuracy`` and ``images_per_sec`` (all ranks).

    With ``augment`` the loader yields (images, targets, draws) and the images are augmented on
    the device, before normalisation; otherwise it yields (images, targets). ``progress``: the
    label of a progress bar (images/s and running loss), shown on a terminal only.
    """
    model.train()
    if frozen_backbone:
        # A frozen backbone must also keep its BatchNorm statistics, or the "frozen" features drift.
        model.eval()
        head_of(unwrap(model)).train()
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    bar = progress_bar(loader, progress, accel)
    for batch in bar:
        images, targets = batch[0], batch[1].to(accel.device, non_blocking=True)
        if augment is not None:
            images = augment(images.to(accel.device, non_blocking=True), batch[2])
        images = accel.inputs(images)
        with accel.autocast():
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16 gradients underflow without loss scaling
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # note: .item() is a device sync point; once per batch is cheap next to the step itself
        total_loss += loss.item() * targets.size(0)
        correct += (logits.argmax(dim=1) == targets).sum().item()
        seen += targets.size(0)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - started):.1f}",
                        refresh=False)
        if on_batch_end is not None:
            on_batch_end()
    elapsed = time.perf_counter() - started
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], accel.dist)
    return {"loss": total_loss / seen, "accuracy": correct / seen, "images_per_sec": seen / elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, criterion: nn.Module, accel: Accelerator,
             full_length: int | None = None, progress: str | None = None) -> EvalOutput:
    """Loss, accuracy and per-image probabilities of ``model`` over ``loader``.

    Under torchrun each rank's loader holds the ``rank::world`` slice of a set of
    ``full_length`` images; the result covers the whole set, in its order, on every rank.
    """
    model.eval()
    total_loss, targets_all, probs_all = 0.0, [], []
    started, seen = time.perf_counter(), 0
    bar = progress_bar(loader, progress, accel)
    for images, targets in bar:
        images, targets = accel.inputs(images), targets.to(accel.device, non_blocking=True)
        with accel.autocast():
            logits = model(images)
        total_loss += criterion(logits.float(), targets).item() * targets.size(0)
        probs_all.append(torch.softmax(logits.float(), dim=1).cpu())
        targets_all.append(targets.cpu())
        seen += targets.size(0)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - started):.1f}",
                        refresh=False)
    targets_np = torch.cat(targets_all).numpy() if targets_all else np.empty(0, dtype=np.int64)
    probs_np = torch.cat(probs_all).numpy() if probs_all else np.empty((0, 0), dtype=np.float32)
    if accel.dist.enabled:
        length = full_length if full_length is not None else len(targets_np)
        targets_np = gather_in_order(targets_np, length, accel.dist)
        probs_np = gather_in_order(probs_np, length, accel.dist)
        (total_loss,) = all_reduce_sum([total_loss], accel.dist)
    if not np.isfinite(probs_np).all():
        log.warning("%d of %d images got non-finite outputs: the model is diverging (try a lower lr)",
                    int((~np.isfinite(probs_np).all(axis=1)).sum()), len(probs_np))
    accuracy = float((probs_np.argmax(axis=1) == targets_np).mean())
    return EvalOutput(total_loss / len(targets_np), accuracy, targets_np, probs_np)


def fit(model: nn.Module, *, train_loader: DataLoader, val_loader: DataLoader, test_loader: DataLoader,
        criterion: nn.Module, optimizer: torch.optim.Optimizer, accel: Accelerator, epochs: int,
        freeze_epochs: int = 0, eval_lengths: tuple[int, int] | None = None,
        scaler: torch.amp.GradScaler | None = None, on_epoch_end: EpochCallback | None = None,
        epoch_metrics: MetricsFn | None = None, select_metric: str = "val_accuracy",
        start: FitState | None = None, on_checkpoint: Callable[[FitState], None] | None = None,
        on_batch_end: Callable[[], None] | None = None, augment: DeviceAugment | None = None,
        lr_of_epoch: Callable[[int], float] | None = None, evaluated: nn.Module | None = None) -> FitResult:
    """Trains for ``epochs`` and keeps the epoch with the best ``select_metric`` (a ``val_`` metric).

    Test metrics are measured every epoch (the course labs' curves) but never used to choose.
    Epochs are numbered from 1; ``on_epoch_end(epoch, metrics)`` sees each epoch's metrics.

    Args:
        eval_lengths: full (val, test) sizes when the eval loaders hold one rank's slice.
        epoch_metrics: more metrics from (targets, probabilities), logged as ``val_*`` and ``test_*``.
        select_metric: higher is better; ties (and NaN, e.g. an AUC with one class) fall back on
            the lower validation loss.
        start: the state of an interrupted run (model and optimizer already restored): training
            continues with the next epoch.
        on_checkpoint: called with the state after every epoch, before ``on_epoch_end`` logs it,
            so a crash between the two loses no metric (a resume re-logs from the checkpoint).
        augment: applies the training loader's per-image draws on the device (see ``train_one_epoch``).
        lr_of_epoch: the learning rate of each epoch (1-based), set before it trains; None keeps
            the optimizer's. Either way the epoch's lr is logged as ``lr``.
        evaluated: what validation and test run through (``model`` with test-time augmentation,
            say); ``model`` itself by default.
    """
    if not select_metric.startswith("val_"):
        raise ValueError(f"select_metric={select_metric!r} must be a validation metric (val_...)")
    val_length, test_length = eval_lengths or (None, None)
    best: FitResult | None = None
    history: list[dict[str, float]] = []
    if start is not None:
        history = list(start.history)
        best = FitResult(start.best_epoch, _selected_score(history[start.best_epoch - 1], start.best_val, select_metric),
                         start.best_state, start.best_test, start.best_val)
    for epoch in range((start.epoch if start else 0) + 1, epochs + 1):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
        if lr_of_epoch is not None:
            set_lr(optimizer, lr_of_epoch(epoch))
        lr = optimizer.param_groups[0]["lr"]
        frozen = epoch <= freeze_epochs
        set_backbone_trainable(unwrap(model), not frozen)
        label = f"epoch {epoch}/{epochs}"
        train = train_one_epoch(model, train_loader, criterion, optimizer, accel, frozen_backbone=frozen, scaler=scaler,
                                on_batch_end=on_batch_end, augment=augment, progress=f"{label} train")
        val = evaluate(evaluated or model, val_loader, criterion, accel, val_length, progress=f"{label} val")
        test = evaluate(evaluated or model, test_loader, criterion, accel, test_length, progress=f"{label} test")
        metrics = {
            "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "train_images_per_sec": train["images_per_sec"], "lr": lr,
            **val.metrics("val"), **test.metrics("test"),
        }
        if epoch_metrics is not None:
            metrics |= {f"val_{k}": v for k, v in epoch_metrics(val.targets, val.probabilities).items()}
            metrics |= {f"test_{k}": v for k, v in epoch_metrics(test.targets, test.probabilities).items()}
        history.append(metrics)
        if best is None or _selection_key(metrics, val, select_metric) > _selection_key(
                history[best.best_epoch - 1], best.best_val, select_metric):
            best = FitResult(epoch, _selected_score(metrics, val, select_metric),
                             copy.deepcopy(unwrap(model).state_dict()), test, val)
        log.info("epoch %d/%d %s", epoch, epochs, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if on_checkpoint is not None:
            on_checkpoint(FitState(epoch, history, best.best_epoch, best.best_state, best.best_test, best.best_val))
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    assert best is not None  # epochs >= 1 is validated with the config
    best.history = history
    set_backbone_trainable(unwrap(model), True)
    return best


def ranking_score(value: float) -> float:
    """A selection score to rank by, higher is better: NaN (e.g. an AUC on a one-class set) never wins."""
    return float("-inf") if np.isnan(value) else value


def _selected_score(metrics: dict[str, float], val: EvalOutput, name: str) -> float:
    """The run's score when this epoch is its best: NaN for a diverged one, which never wins a
    comparison of runs either."""
    return float("nan") if val.diverged else metrics[name]


def _selection_key(metrics: dict[str, float], val: EvalOutput, name: str) -> tuple[float, float]:
    """Higher is the better epoch: its select metric, ties to the lower validation loss (the more
    confident of two equally good models). A diverged epoch (non-finite outputs, whose argmax
    "predictions" may still score like a constant guess) ranks below every other."""
    if name not in metrics:
        raise ValueError(f"select_metric={name!r} is not among this epoch's metrics: {', '.join(sorted(metrics))}")
    if val.diverged:
        return float("-inf"), float("-inf")
    return ranking_score(metrics[name]), ranking_score(-metrics["val_loss"])


