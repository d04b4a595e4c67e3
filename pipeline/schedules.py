"""Optimizers and per-epoch learning rates: the labs' SGD at a constant lr, or the field's AdamW
with a linear warm-up and cosine or step decay.

An epoch's lr is a pure function of its number, so a resumed run needs no scheduler state and
lands on exactly the lr the uninterrupted run had.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from pipeline.catalog import LR_SCHEDULES, OPTIMIZERS
from pipeline.config import require_choice

STEP_DECAY = 0.1  # step: the lr falls tenfold after each third of the epochs after the warm-up
STEP_PHASES = 3


def build_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], *, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """``sgd``: SGD with momentum (the labs'); ``adamw``: AdamW (decoupled weight decay; no momentum term)."""
    require_choice("optimizer", name, OPTIMIZERS)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


def epoch_lr(epoch: int, *, base_lr: float, epochs: int, schedule: str, warmup_epochs: int = 0) -> float:
    """The learning rate of epoch ``epoch`` (1-based).

    Warm-up epochs ``e`` = 1..W rise linearly: ``base_lr * e / (W + 1)``. The T = epochs - W epochs
    after them, at positions t = 0..T-1, follow ``schedule``:
    ``constant`` ``base_lr``; ``cosine`` ``base_lr * (1 + cos(pi * t / T)) / 2``;
    ``step`` ``base_lr * 0.1 ** floor(3 * t / T)``.
    """
    require_choice("lr_schedule", schedule, LR_SCHEDULES)
    if epoch <= warmup_epochs:
        return base_lr * epoch / (warmup_epochs + 1)
    position, length = epoch - warmup_epochs - 1, epochs - warmup_epochs
    if schedule == "cosine":
        return base_lr * (1 + math.cos(math.pi * position / length)) / 2
    if schedule == "step":
        return base_lr * STEP_DECAY ** math.floor(STEP_PHASES * position / length)
    return base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
