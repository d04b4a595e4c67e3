"""A training sampler whose order and per-image augmentation depend only on (seed, epoch, index).

It yields ``(index, sample_seed)`` pairs and ``FundusDataset`` seeds each image's augmentation
with ``sample_seed``. Nothing then depends on worker processes, their lifetimes or how far an
interrupted run had got: an epoch redone after a crash is the same epoch, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

# Distinct generator streams per (seed, epoch); the multiplier keeps nearby seeds apart.
_SEED_STRIDE = 1_000_003


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled (or weighted, with replacement) epochs, sharded over torchrun ranks like DistributedSampler.

    Args:
        weights: per-image sampling weights (e.g. inverse grade frequency); None for a permutation.
    """

    def __init__(self, size: int, seed: int, *, weights: np.ndarray | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.size, generator=generator)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        total = len(self) * self.world_size
        if total > self.size:  # pad by wrapping, as DistributedSampler does, so ranks get equal shares
            order, seeds = torch.cat([order, order[: total - self.size]]), torch.cat([seeds, seeds[: total - self.size]])
        return iter(zip(order[self.rank::self.world_size].tolist(), seeds[self.rank::self.world_size].tolist()))
