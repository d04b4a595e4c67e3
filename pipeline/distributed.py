"""torchrun support: who am I, shard evaluation without padding, and put results back together.

Under ``torchrun --nproc_per_node=N`` every rank trains on its DistributedSampler share; each rank
evaluates a disjoint slice (``rank::world``) and the predictions are gathered in the original
order, so every metric equals the single-process figure on the same weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0  # torchrun's --node-rank (GROUP_RANK): which machine of the job this is

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        """The first process of its machine: the one that reports the machine's system metrics."""
        return self.local_rank == 0


def context_from_env() -> DistContext:
    """The torchrun-provided rank (RANK/WORLD_SIZE/LOCAL_RANK), or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")),
                       int(os.environ.get("GROUP_RANK", "0")))


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    log.info("rank %d/%d joined the %s process group", ctx.rank, ctx.world_size, backend)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard_indices(length: int, ctx: DistContext) -> list[int]:
    return list(range(ctx.rank, length, ctx.world_size))


def broadcast_from_main(value: object, ctx: DistContext) -> object:
    """Rank 0's ``value`` on every rank (a picklable object; the value itself without torchrun)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_in_order(part: np.ndarray, length: int, ctx: DistContext) -> np.ndarray:
    """Reassembles per-rank ``rank::world`` slices of a length-``length`` array on every rank."""
    if not ctx.enabled:
        return part
    parts: list[np.ndarray | None] = [None] * ctx.world_size
    dist.all_gather_object(parts, part)
    # A rank whose slice is empty (a split shorter than the world) cannot know the row width.
    template = next((p for p in parts if len(p)), part)
    whole = np.empty((length, *template.shape[1:]), dtype=template.dtype)
    for rank, rank_part in enumerate(parts):
        if len(rank_part):
            whole[rank::ctx.world_size] = rank_part
    return whole
