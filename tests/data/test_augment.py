"""Flips and rotation (and the field's shift, scale and colour): one rule for the draws, applied in the
loader (PIL) or to whole batches on the device."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.data.augment import (
    ANGLE,
    BRIGHTNESS,
    CONTRAST,
    DX,
    DY,
    HFLIP,
    SCALE,
    VFLIP,
    augment_batch,
    augment_image,
    draw,
    draw_field,
)
from pipeline.data.dataset import TrainPreset
from pipeline.data.synthetic import render_fundus


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return render_fundus(3, "left", (96, 96), np.random.default_rng(5)).resize((48, 48))


def draws_of(seeds, degrees=20.0, *, field_side: int | None = None) -> torch.Tensor:
    """Each seed's draws: lab's with ``degrees``, or with ``field_side`` the field's for an image that size."""
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        rows.append(draw(degrees) if field_side is None else draw_field(field_side))
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


# --- The field's recipe: flips, any rotation, shift, scale, brightness and contrast. ---


def test_field_draws_lie_in_their_ranges_and_cover_them():
    draws = draws_of(range(300), field_side=40)
    assert draws.shape == (300, 8) and draws.dtype == torch.float64
    assert set(draws[:, HFLIP].tolist()) == set(draws[:, VFLIP].tolist()) == {0.0, 1.0}
    assert draws[:, ANGLE].abs().max() <= 180 and draws[:, ANGLE].min() < -150 and draws[:, ANGLE].max() > 150
    shifts = draws[:, [DX, DY]]
    assert torch.equal(shifts, shifts.round()) and set(shifts.flatten().tolist()) == set(range(-4, 5))  # 0.1 x 40 px
    for column, (low, high) in ((SCALE, (0.9, 1.1)), (BRIGHTNESS, (0.8, 1.2)), (CONTRAST, (0.8, 1.2))):
        values = draws[:, column]
        assert low <= values.min() < low + 0.02 and high - 0.02 < values.max() <= high, column


def test_the_train_preset_draws_the_recipe_asked_for(photo):
    """Loader and device see one draw per image: the preset's on-device draws are the field's, and
    its loader output is those draws applied."""
    resized = v2.Resize(32, antialias=True)(photo)
    for seed in range(5):
        torch.manual_seed(seed)
        image, draws = TrainPreset(32, recipe="field", on_device=True)(photo)
        torch.manual_seed(seed)
        assert torch.equal(draws, draw_field(32)) and torch.equal(image, F.pil_to_tensor(resized))
        torch.manual_seed(seed)
        assert torch.equal(TrainPreset(32, recipe="field")(photo), F.pil_to_tensor(augment_image(resized, draws)))
        torch.manual_seed(seed)
        assert TrainPreset(32, recipe="lab", on_device=True)(photo)[1].shape == (3,)


def test_field_batch_augmentation_matches_the_loaders_pil_augmentation(photo):
    """The same draws, within rounding: PIL truncates after brightness and after contrast, the
    device rounds once (measured on these draws: 75% of pixels within 1 level, 99.97% within 2, a
    mean of 1.0 level, the device's 0.8 brighter);
    a pixel whose source falls on a rounding tie takes its neighbour's value, as with lab draws."""
    draws = draws_of(range(40), field_side=48)
    images = F.pil_to_tensor(photo).expand(len(draws), -1, -1, -1).contiguous()
    batch = augment_batch(images, draws)
    assert batch.dtype == torch.uint8 and batch.shape == images.shape
    loader = torch.stack([F.pil_to_tensor(augment_image(photo, row)) for row in draws])
    difference = (loader.int() - batch.int()).abs().amax(dim=1)  # per pixel, its worst channel
    assert (difference <= 2).float().mean() > 0.999, (difference <= 2).float().mean()
    assert difference.float().mean() < 1.5, difference.float().mean()


def one_bright_pixel(side=16, row=5, column=6) -> torch.Tensor:
    pixels = torch.zeros(1, 3, side, side, dtype=torch.uint8)
    pixels[0, :, row, column] = 255
    return pixels


def both_paths(images: torch.Tensor, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loader's, device's) augmentation of a one-image batch."""
    loader = F.pil_to_tensor(augment_image(F.to_pil_image(images[0]), draws))
    return loader, augment_batch(images, draws[None])[0]


def test_a_shift_moves_a_single_bright_pixel_by_the_drawn_dx_dy_in_both_paths():
    moved = 0
    for seed in range(6):
        torch.manual_seed(seed)
        draws = draw_field(16)
        draws[[HFLIP, VFLIP, ANGLE]] = 0.0
        draws[[SCALE, BRIGHTNESS, CONTRAST]] = 1.0  # the shift alone
        dx, dy = int(draws[DX]), int(draws[DY])
        moved += (dx, dy) != (0, 0)
        expected = torch.zeros(3, 16, 16, dtype=torch.uint8)
        expected[:, 5 + dy, 6 + dx] = 255  # x right, y down
        for path, out in zip(("loader", "device"), both_paths(one_bright_pixel(), draws)):
            assert torch.equal(out, expected), (seed, path, dx, dy)
    assert moved >= 4  # the seeds did draw shifts


def test_brightness_scales_the_levels_and_saturates():
    grey = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    grey[0, :, 0, 0] = 250
    draws = torch.tensor([0, 0, 0, 0, 0, 1.0, 1.2, 1.0], dtype=torch.float64)
    expected = torch.full((3, 8, 8), 120, dtype=torch.uint8)
    expected[:, 0, 0] = 255
    for out in both_paths(grey, draws):
        assert torch.equal(out, expected)


def test_contrast_blends_with_the_mean_grey_level():
    halves = torch.full((1, 3, 8, 8), 60, dtype=torch.uint8)
    halves[..., 4:] = 140  # mean grey 100
    # 1.25 keeps the arithmetic exact: PIL truncates, and 100 + 1.2 x -50 gave it 39 for 40.
    draws = torch.tensor([0, 0, 0, 0, 0, 1.0, 1.0, 1.25], dtype=torch.float64)
    for out in both_paths(halves, draws):
        assert set(out[..., :4].unique().tolist()) == {50} and set(out[..., 4:].unique().tolist()) == {150}


def test_field_geometry_turns_as_lab_rotation_does():
    """A field draw's angle means what a lab draw's does (counter-clockwise), in both paths."""
    pixels = one_bright_pixel(8, 0, 7)  # top right
    field = torch.tensor([0, 0, 90.0, 0, 0, 1.0, 1.0, 1.0], dtype=torch.float64)
    for out in both_paths(pixels, field):
        assert out[:, 0, 0].tolist() == [255] * 3 and int(out.sum()) == 3 * 255  # -> top left


def test_batch_augmentation_rejects_draws_of_another_length():
    with pytest.raises(ValueError, match=r"\(B, 3\) or \(B, 8\) draws, got \(2, 5\)"):
        augment_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 5))


def test_the_train_preset_refuses_an_unknown_recipe():
    with pytest.raises(ValueError, match="recipe='heavy' is not supported; choose one of lab, field"):
        TrainPreset(32, recipe="heavy")
