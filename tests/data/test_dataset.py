import shutil

import pytest
import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from pipeline.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalPreset,
    ProcessedDataset,
    TrainPreset,
    collate_channels_last,
    make_loader,
    normalize_batch,
    split_dataset,
    to_unit_float,
)
from pipeline.errors import DataError


def test_splits_give_uint8_images_that_normalise_on_the_device(processed_dir):
    processed = ProcessedDataset(processed_dir)
    train = split_dataset(processed, "train", 32, train=True)
    image, grade = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8  # a quarter of float32's bytes per batch
    assert 0 <= int(grade) <= 4
    normalised = normalize_batch(image[None])
    assert normalised.dtype == torch.float32 and normalised.min() < 0


def test_normalize_batch_equals_torchvisions_normalize():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(images.float() / 255)
    assert torch.allclose(normalize_batch(images), expected, atol=1e-6)
    assert torch.equal(to_unit_float(images), images.float() / 255)
    unit = torch.rand(1, 3, 4, 4)
    assert to_unit_float(unit) is unit  # [0, 1] floats pass through


def test_normalize_batch_keeps_channels_last_and_its_values():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    interleaved = normalize_batch(images.contiguous(memory_format=torch.channels_last))
    assert interleaved.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(interleaved, normalize_batch(images))


def test_eval_split_resizes(processed_dir):
    image, _ = split_dataset(ProcessedDataset(processed_dir), "test", 48, train=False)[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8


def test_train_preset_is_random_and_eval_is_not(processed_dir):
    processed = ProcessedDataset(processed_dir)
    image = processed.root / processed.split("train")["file"][0]
    from PIL import Image
    pil = Image.open(image).convert("RGB")
    torch.manual_seed(0)
    augmented = [TrainPreset(32)(pil) for _ in range(4)]
    assert any(not torch.equal(augmented[0], other) for other in augmented[1:])
    assert torch.equal(EvalPreset(32)(pil), EvalPreset(32)(pil))


def test_loader_batches(processed_dir):
    processed = ProcessedDataset(processed_dir)
    loader = make_loader(split_dataset(processed, "val", 32, train=False), 4, shuffle=False, num_workers=0, seed=0)
    images, grades = next(iter(loader))
    assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8 and grades.dtype == torch.long


def test_batches_are_stacked_channels_last_with_the_same_values(processed_dir):
    """The presets' images lie in (H, W, C) memory: stacked as they lie, a batch is a plain copy."""
    train = split_dataset(ProcessedDataset(processed_dir), "train", 32, train=True)
    items = [train[(index, index)] for index in range(4)]
    images, grades = collate_channels_last(items)
    expected_images, expected_grades = default_collate(items)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert torch.equal(images, expected_images) and torch.equal(grades, expected_grades)
    rows = [(torch.tensor([1.0]), 0), (torch.tensor([2.0]), 1)]  # not images: as default_collate has them
    assert all(torch.equal(a, b) for a, b in zip(collate_channels_last(rows), default_collate(rows)))


def test_refuses_to_upsample_the_cache(processed_dir):
    with pytest.raises(DataError, match=r"image_size=128 is larger than every processed cache in .* \(64 px\)"):
        ProcessedDataset(processed_dir, 128)
    with pytest.raises(DataError, match="image_size=128 is larger than the processed dataset's 64 px"):
        split_dataset(ProcessedDataset(processed_dir / "64px"), "train", 128, train=True)


def test_picks_the_smallest_cache_that_is_large_enough(processed_dir, tmp_path):
    root = tmp_path / "root"
    for size in (64, 128):
        shutil.copytree(processed_dir / "64px", root / f"{size}px")
    assert ProcessedDataset(root, 32).root == root / "64px"
    assert ProcessedDataset(root, 100).root == root / "128px"
    assert ProcessedDataset(root).root == root / "128px"
    assert ProcessedDataset(root / "64px", 32).root == root / "64px"


def test_unprocessed_folder_is_rejected(raw_dir):
    with pytest.raises(DataError, match="holds no processed dataset .* run the preprocess entry point"):
        ProcessedDataset(raw_dir)


@pytest.mark.parametrize("size, batch, batches", [(9, 4, 2), (8, 4, 2), (10, 4, 3), (1, 4, 1)])
def test_training_loader_never_ends_on_a_single_image(size, batch, batches):
    dataset = torch.utils.data.TensorDataset(torch.zeros(size, 1))
    loader = make_loader(dataset, batch, shuffle=True, num_workers=0, seed=0, training=True)
    assert len(loader) == batches
    assert make_loader(dataset, batch, shuffle=False, num_workers=0, seed=0).dataset is dataset
    assert sum(len(b[0]) for b in make_loader(dataset, batch, shuffle=False, num_workers=0, seed=0)) == size
