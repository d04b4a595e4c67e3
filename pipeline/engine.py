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

from pipeline.models import set_backbone_trainable

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class EvalOutput:
    loss: float
    accuracy: float
    targets: np.ndarray
    probabilities: np.ndarray  # (images, grades) softmax outputs

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.accuracy}


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    best_state: dict[str, torch.Tensor]
    best_test: EvalOutput  # the selected model's test predictions, for the confusion matrix
    history: list[dict[str, float]] = field(default_factory=list)


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, frozen_backbone: bool = False) -> dict[str, float]:
    """One pass over ``loader``; returns ``loss``, ``accuracy`` and ``images_per_sec``."""
    model.train()
    if frozen_backbone:
        # A frozen backbone must also keep its BatchNorm statistics, or the "frozen" features drift.
        model.eval()
        model.fc.train()
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # note: .item() is a device sync point; once per batch is cheap next to the step itself
        total_loss += loss.item() * targets.size(0)
        correct += (logits.argmax(dim=1) == targets).sum().item()
        seen += targets.size(0)
    elapsed = time.perf_counter() - started
    return {"loss": total_loss / seen, "accuracy": correct / seen, "images_per_sec": seen / elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, criterion: nn.Module, device: torch.device) -> EvalOutput:
    """Loss, accuracy and per-image probabilities of ``model`` over ``loader``."""
    model.eval()
    total_loss, targets_all, probs_all = 0.0, [], []
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        total_loss += criterion(logits, targets).item() * targets.size(0)
        probs_all.append(torch.softmax(logits.float(), dim=1).cpu())
        targets_all.append(targets.cpu())
    targets_np = torch.cat(targets_all).numpy()
    probs_np = torch.cat(probs_all).numpy()
    accuracy = float((probs_np.argmax(axis=1) == targets_np).mean())
    return EvalOutput(total_loss / len(targets_np), accuracy, targets_np, probs_np)


def fit(model: nn.Module, *, train_loader: DataLoader, val_loader: DataLoader, test_loader: DataLoader,
        criterion: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, epochs: int,
        freeze_epochs: int = 0, on_epoch_end: EpochCallback | None = None) -> FitResult:
    """Trains for ``epochs`` and keeps the epoch with the best validation accuracy.

    Test accuracy is measured every epoch (the course labs' curves) but never used to choose.
    Epochs are numbered from 1; ``on_epoch_end(epoch, metrics)`` sees each epoch's metrics.
    """
    best: FitResult | None = None
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        frozen = epoch <= freeze_epochs
        set_backbone_trainable(model, not frozen)
        train = train_one_epoch(model, train_loader, criterion, optimizer, device, frozen_backbone=frozen)
        val = evaluate(model, val_loader, criterion, device)
        test = evaluate(model, test_loader, criterion, device)
        metrics = {
            "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "train_images_per_sec": train["images_per_sec"],
            **val.metrics("val"), **test.metrics("test"),
        }
        history.append(metrics)
        # Ties go to the lower validation loss: the more confident of two equally accurate models.
        if best is None or (val.accuracy, -val.loss) > (best.best_score, -history[best.best_epoch - 1]["val_loss"]):
            best = FitResult(epoch, val.accuracy, copy.deepcopy(model.state_dict()), test)
        log.info("epoch %d/%d %s", epoch, epochs, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    assert best is not None  # epochs >= 1 is validated with the config
    best.history = history
    set_backbone_trainable(model, True)
    return best


@torch.no_grad()
def predict_probabilities(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Targets and outputs of a model that already returns probabilities (the served model).

    No ``model.eval()``: an exported (pt2) module refuses it, and was exported in eval mode.
    """
    targets_all, probs_all = [], []
    for images, targets in loader:
        probs_all.append(model(images.to(device)).float().cpu())
        targets_all.append(targets)
    return torch.cat(targets_all).numpy(), torch.cat(probs_all).numpy()
