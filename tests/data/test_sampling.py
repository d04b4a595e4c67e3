import torch

from pipeline.data.dataset import FundusDataset, ProcessedDataset, TrainPreset
from pipeline.data.sampling import EpochSampler


def epoch_of(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_an_epoch_is_a_function_of_seed_and_epoch_alone():
    first = epoch_of(EpochSampler(10, seed=3), 2)
    assert first == epoch_of(EpochSampler(10, seed=3), 2)  # a fresh sampler (a resumed run) agrees
    assert sorted(index for index, _ in first) == list(range(10))  # a permutation
    assert first != epoch_of(EpochSampler(10, seed=3), 3)
    assert first != epoch_of(EpochSampler(10, seed=4), 2)


def test_ranks_split_an_epoch_like_distributed_sampler():
    shares = [epoch_of(EpochSampler(7, seed=0, rank=r, world_size=2), 1) for r in range(2)]
    assert [len(s) for s in shares] == [4, 4]  # padded by wrapping to equal shares
    assert {index for share in shares for index, _ in share} == set(range(7))


def test_augmentation_follows_the_sample_seed(processed_dir):
    processed = ProcessedDataset(processed_dir, 32)
    dataset = FundusDataset(processed.root, processed.split("train"), TrainPreset(32))
    torch.manual_seed(0)
    a = dataset[(0, 12345)][0]
    torch.manual_seed(99)  # the global RNG does not matter
    b = dataset[(0, 12345)][0]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, dataset[(0, seed)][0]) for seed in (1, 2, 3))
