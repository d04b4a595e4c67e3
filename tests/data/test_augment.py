"""Flips and rotation: one rule for the draws, applied in the loader (PIL) or to whole batches on the device."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.data.augment import ANGLE, HFLIP, VFLIP, augment_batch, augment_image, draw
from pipeline.data.dataset import TrainPreset
from pipeline.data.synthetic import render_fundus


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return render_fundus(3, "left", (96, 96), np.random.default_rng(5)).resize((48, 48))


def draws_of(seeds, degrees=20.0) -> torch.Tensor:
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        rows.append(draw(degrees))
    return torch.stack(rows)


def test_draws_are_those_of_torchvisions_random_transforms(photo):
    """Runs seeded before the draws had a function of their own augment the same images alike."""
    before = v2.Compose([v2.Resize(32, antialias=True), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                         v2.RandomRotation(20.0, fill=0), v2.ToImage()])
    for seed in range(20):
        torch.manual_seed(seed)
        expected = before(photo)
        torch.manual_seed(seed)
        assert torch.equal(TrainPreset(32)(photo), expected), seed


def test_draws_cover_both_flips_and_the_angle_range():
    draws = draws_of(range(200), degrees=15.0)
    assert set(draws[:, HFLIP].tolist()) == set(draws[:, VFLIP].tolist()) == {0.0, 1.0}
    assert draws[:, ANGLE].abs().max() <= 15.0 and draws[:, ANGLE].min() < -10 and draws[:, ANGLE].max() > 10


def test_batch_augmentation_is_torchvisions_per_image_rotation(photo):
    """Each image of the batch gets its own draws; the result is torchvision's tensor path, image by image."""
    seeds = range(12)
    draws = draws_of(seeds)
    images = F.pil_to_tensor(photo).expand(len(seeds), -1, -1, -1).contiguous()
    batch = augment_batch(images, draws)
    assert batch.dtype == torch.uint8 and batch.shape == images.shape
    differing = 0
    for image, row, out in zip(images, draws, batch):
        flipped = F.hflip(image) if row[HFLIP] else image
        flipped = F.vflip(flipped) if row[VFLIP] else flipped
        differing += int((F.rotate(flipped, float(row[ANGLE]), fill=0) != out).any(dim=0).sum())
    assert differing <= 0.001 * batch[:, 0].numel(), differing  # identical but for float rounding at a tie


def test_batch_augmentation_matches_the_loaders_pil_augmentation(photo):
    draws = draws_of(range(12))
    images = F.pil_to_tensor(photo).expand(len(draws), -1, -1, -1).contiguous()
    batch = augment_batch(images, draws)
    loader = torch.stack([F.pil_to_tensor(augment_image(photo, row)) for row in draws])
    differing = (loader != batch).any(dim=1)
    # PIL and grid_sample round a source position that falls exactly between two pixels apart.
    assert differing.float().mean() < 0.005, differing.float().mean()
    assert (loader.float() - batch.float()).abs().mean() < 0.5


def test_flips_alone_are_exact_and_no_draw_changes_nothing():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    draws = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=torch.float64)
    out = augment_batch(images, draws)
    assert torch.equal(out[0], images[0])
    assert torch.equal(out[1], images[1].flip(-1))
    assert torch.equal(out[2], images[2].flip(-2))
    assert torch.equal(out[3], images[3].flip(-1, -2))


def test_a_quarter_turn_moves_the_corners_as_pil_does():
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[0, 7] = 255  # top right
    turned = augment_batch(torch.from_numpy(pixels).permute(2, 0, 1)[None], torch.tensor([[0.0, 0.0, 90.0]]))[0]
    expected = np.array(Image.fromarray(pixels).rotate(90))  # counter-clockwise: top right -> top left
    assert expected[0, 0].all() and torch.equal(turned.permute(1, 2, 0), torch.from_numpy(expected))


def test_batch_augmentation_rejects_what_it_cannot_take():
    with pytest.raises(ValueError, match=r"square uint8 \(B, C, S, S\) batches, got torch.float32 \(2, 3, 8, 8\)"):
        augment_batch(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"got torch.uint8 \(2, 3, 8, 6\)"):
        augment_batch(torch.zeros(2, 3, 8, 6, dtype=torch.uint8), torch.zeros(2, 3))
