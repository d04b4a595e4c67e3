"""Sharded evaluation: ``shard_indices`` splits a dataset ``rank::world`` and ``gather_in_order``
puts the per-rank results back in dataset order, checked with real gloo process groups.

A misordering here would silently misalign per-image predictions with their patient groups.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.distributed import DistContext, broadcast_from_main, context_from_env, gather_in_order, shard_indices

# Lengths that do not divide evenly by 2 or 3, one that does, one shorter than the world (some
# ranks get an empty part) and an empty dataset.
LENGTHS = (0, 1, 2, 6, 7, 10)
COLUMNS = 5


def _full_arrays(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows that identify their index: row i is [10 i, 10 i + 1, ..., 10 i + 4]; labels 100 + i."""
    rows = (10.0 * np.arange(length)[:, None] + np.arange(COLUMNS)[None, :]).astype(np.float32)
    labels = np.arange(100, 100 + length, dtype=np.int64)
    return rows, labels


WORLD_SIZES = (3, 2, 1)


def _result_path(out_dir: Path, world_size: int, rank: int, length: int, which: str) -> Path:
    return out_dir / f"world{world_size}_rank{rank}_len{length}_{which}.npy"


def _gather_worker(rank: int, store_dir: str, out_dir: str) -> None:
    """One process, rank ``rank`` of each gloo group (world 3, then 2, then 1) it belongs to.

    In each group it takes its ``shard_indices`` part of the known arrays, gathers, and saves
    what came back; the parent compares. Reusing the processes for every world size saves
    starting (and importing torch in) six more of them.
    """
    for world_size in WORLD_SIZES:
        if rank >= world_size:
            return
        init_method = (Path(store_dir) / f"store{world_size}").as_uri()  # a file store: no port to pick
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        try:
            ctx = DistContext(rank, world_size, rank)
            for length in LENGTHS:
                mine = shard_indices(length, ctx)
                for which, full in zip(("rows", "labels"), _full_arrays(length)):
                    part = full[mine]
                    if not mine and length and part.ndim == 2:
                        # What engine.evaluate holds on a rank without images of a non-empty split:
                        # no batch told it the width.
                        part = np.empty((0, 0), dtype=part.dtype)
                    whole = gather_in_order(part, length, ctx)
                    np.save(_result_path(Path(out_dir), world_size, rank, length, which), whole)
            # What train does with the run id, which only rank 0 has.
            received = broadcast_from_main(f"run of world {world_size}" if rank == 0 else None, ctx)
            (Path(out_dir) / f"world{world_size}_rank{rank}_broadcast.txt").write_text(str(received))
        finally:
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered(tmp_path_factory) -> Path:
    """Runs the gloo workers once for every world size; the folder of what each rank got back."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch built without gloo")
    root = tmp_path_factory.mktemp("gather")
    (root / "out").mkdir()
    mp.spawn(_gather_worker, args=(str(root.resolve()), str(root / "out")), nprocs=max(WORLD_SIZES), join=True)
    return root / "out"


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
@pytest.mark.parametrize("world_size", sorted(WORLD_SIZES))
def test_gather_in_order_restores_dataset_order_on_every_rank(gathered, world_size):
    for length in LENGTHS:
        for rank in range(world_size):
            for which, full in zip(("rows", "labels"), _full_arrays(length)):
                where = f"rank {rank}/{world_size}, length {length}, {which}"
                got = np.load(_result_path(gathered, world_size, rank, length, which))
                assert (got.dtype, got.shape) == (full.dtype, full.shape), where
                np.testing.assert_array_equal(got, full, err_msg=where)


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
@pytest.mark.parametrize("world_size", sorted(WORLD_SIZES))
def test_every_rank_receives_rank_zeros_value(gathered, world_size):
    for rank in range(world_size):
        assert (gathered / f"world{world_size}_rank{rank}_broadcast.txt").read_text() == f"run of world {world_size}"


def test_torchrun_environment_gives_rank_and_node(monkeypatch):
    for name, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    ctx = context_from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.node_rank) == (3, 4, 1, 1)
    assert not ctx.is_main and not ctx.is_node_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert context_from_env() == DistContext()


def test_gather_in_order_without_a_process_group_returns_its_input():
    rows, _ = _full_arrays(7)
    assert gather_in_order(rows, 7, DistContext()) is rows
    assert gather_in_order(rows, 7, DistContext(0, 1, 0)) is rows


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [0, 1, 2, 3, 7, 10, 12])
def test_shard_indices_are_disjoint_covering_strided_slices(world_size, length):
    shards = [shard_indices(length, DistContext(rank, world_size, rank)) for rank in range(world_size)]
    for rank, shard in enumerate(shards):
        assert shard == list(range(length))[rank::world_size]
        assert shard == sorted(shard)
    flat = [index for shard in shards for index in shard]
    assert len(flat) == len(set(flat)), "shards overlap"
    assert sorted(flat) == list(range(length)), "shards do not cover the dataset"
    # Sizes differ by at most one, larger shards first (no padding, unlike DistributedSampler).
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= (1 if length else 0)
    assert sizes == sorted(sizes, reverse=True)
