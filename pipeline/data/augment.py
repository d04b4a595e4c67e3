"""Training augmentation: random flips and a random rotation per image (and with the field's
recipe a shift, a scale and colour jitter), in the loader or on the device.

A fundus has no canonical orientation once left and right eyes mix, so every training image is
flipped horizontally and vertically at random and rotated: by up to ``rotation_degrees`` in the
labs' recipe (``lab``), by any angle in the field's (``field``, after YijinHuang/pytorch-classification's
EyePACS config: its flips, rotation and colour jitter, with a smaller shift, 10% not 20%, and a
zoom it leaves off), which also shifts, scales and jitters brightness and contrast. The draws are a
function of torch's global RNG, which ``FundusDataset`` seeds per image from ``EpochSampler`` (see
``data.sampling``): the same image of the same epoch gets the same draws whether the loader
applies them (``augment_image``, PIL) or the training device does, to whole uint8 batches
(``augment_batch``).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch.nn import functional as nnf
from torchvision.transforms.v2 import functional as F

# One image's draws: horizontal flip (0 or 1), vertical flip (0 or 1), rotation angle in degrees
# (counter-clockwise, as PIL's); the field's recipe adds a shift in whole pixels (x right, y down),
# a scale factor, and brightness and contrast factors. A lab draw is the first three alone.
HFLIP, VFLIP, ANGLE, DX, DY, SCALE, BRIGHTNESS, CONTRAST = range(8)
LAB_DRAWS, FIELD_DRAWS = 3, 8
# A lab draw is the field's with these values for the rest: no shift, scale or colour change.
_IDENTITY = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
# The field's ranges: any angle, shifts up to a tenth of the side, scale and colour factors
# (ColorJitter(brightness=0.2, contrast=0.2)'s) uniform in these intervals.
FIELD_DEGREES = 180.0
FIELD_SHIFT = 0.1
FIELD_SCALE = (0.9, 1.1)
FIELD_COLOUR = (0.8, 1.2)
# The grey level that contrast blends with: PIL's "L" conversion (ITU-R 601-2 luma), as the loader's.
_LUMA = (0.299, 0.587, 0.114)


def draw(rotation_degrees: float) -> torch.Tensor:
    """One image's draws from torch's global RNG, as a float64 (3,) tensor.

    The calls and their order are those of torchvision's RandomHorizontalFlip(0.5),
    RandomVerticalFlip(0.5) and RandomRotation(rotation_degrees), which this project applied
    before: the same seed still gives the same flips and angle.
    """
    hflip = torch.rand(1) < 0.5
    vflip = torch.rand(1) < 0.5
    angle = torch.empty(1).uniform_(-rotation_degrees, rotation_degrees)
    return torch.tensor([float(hflip), float(vflip), float(angle)], dtype=torch.float64)


def draw_field(side: int) -> torch.Tensor:
    """One image's draws for the field's recipe, for a ``side`` px square image, as a float64 (8,) tensor."""
    hflip = torch.rand(1) < 0.5
    vflip = torch.rand(1) < 0.5
    angle = torch.empty(1).uniform_(-FIELD_DEGREES, FIELD_DEGREES)
    # Whole pixels, as torchvision's RandomAffine: the shift alone then moves pixels exactly.
    dx, dy = (round(float(shift)) for shift in torch.empty(2).uniform_(-FIELD_SHIFT * side, FIELD_SHIFT * side))
    scale = torch.empty(1).uniform_(*FIELD_SCALE)
    brightness, contrast = torch.empty(2).uniform_(*FIELD_COLOUR)
    return torch.tensor([float(hflip), float(vflip), float(angle), dx, dy, float(scale), float(brightness),
                         float(contrast)], dtype=torch.float64)


def augment_image(img: Image.Image, draws: torch.Tensor) -> Image.Image:
    """A PIL image flipped and rotated (for a field draw also shifted, scaled, then brightened and
    contrasted) as ``draws`` say: nearest neighbour, black fill.

    PIL rotates ~8x faster than torchvision's tensor path on a CPU core.
    """
    if draws[HFLIP]:
        img = F.hflip(img)
    if draws[VFLIP]:
        img = F.vflip(img)
    if len(draws) == LAB_DRAWS:
        return F.rotate(img, float(draws[ANGLE]), fill=0)
    # affine turns clockwise for a positive angle, rotate (and the draws) counter-clockwise.
    img = F.affine(img, angle=-float(draws[ANGLE]), translate=[int(draws[DX]), int(draws[DY])],
                   scale=float(draws[SCALE]), shear=[0.0, 0.0], fill=0)
    img = F.adjust_brightness(img, float(draws[BRIGHTNESS]))
    return F.adjust_contrast(img, float(draws[CONTRAST]))


def augment_batch(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """A uint8 (B, C, S, S) batch, image i augmented as ``draws[i]`` says (lab or field draws), on
    the images' device.

    One sampling grid per image (flips, rotation, scale and shift folded into one 2x3 matrix) and
    ``grid_sample`` over the batch: torchvision's ``rotate`` takes one angle per call. Nearest
    neighbour, as the loader path: the geometry alone leaves input values only, so a lab batch stays
    uint8 exactly and equals torchvision's ``rotate`` of the flipped image (PIL's, in
    ``augment_image``, but for the odd pixel whose source falls on a rounding tie). Field draws then
    scale brightness and contrast in float, rounded once at the end where PIL truncates after each
    step: those pixels may differ from the loader's by a level or two.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"augment_batch takes square uint8 (B, C, S, S) batches, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if draws.ndim != 2 or draws.shape[1] not in (LAB_DRAWS, FIELD_DRAWS):
        raise ValueError(f"augment_batch takes (B, {LAB_DRAWS}) or (B, {FIELD_DRAWS}) draws, got {tuple(draws.shape)}")
    colour = draws.shape[1] == FIELD_DRAWS
    full = torch.tensor(_IDENTITY, dtype=torch.float32, device=images.device).repeat(len(draws), 1)
    full[:, :draws.shape[1]] = draws.to(images.device, torch.float32)
    theta = _sampling_matrices(full, images.shape[-1])
    # A GPU samples the whole batch at once. A CPU goes image by image: a batch's float copy and
    # grid do not stay in cache, which made it 3x slower at 512 px.
    chunk = len(images) if images.device.type != "cpu" else 1
    parts = []
    for part, part_theta, part_draws in zip(images.split(chunk), theta.split(chunk), full.split(chunk)):
        grid = nnf.affine_grid(part_theta, list(part.shape), align_corners=False)
        sampled = nnf.grid_sample(part.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if colour:
            sampled = _brightness_contrast(sampled, part_draws[:, BRIGHTNESS], part_draws[:, CONTRAST])
        parts.append(sampled.to(torch.uint8))
    return torch.cat(parts)


def _sampling_matrices(draws: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 2, 3) output pixel -> source pixel maps, in grid_sample's [-1, 1] coordinates (x right, y down).

    torchvision's affine convention: the image turns and scales about its centre, then shifts by
    (dx, dy) output pixels. So first undo the shift, then the rotation (counter-clockwise on screen
    for a positive angle, as PIL) and the scale, then the flips.
    """
    radians = torch.deg2rad(draws[:, ANGLE])
    cos, sin = torch.cos(radians), torch.sin(radians)
    x_sign = 1 - 2 * draws[:, HFLIP]
    y_sign = 1 - 2 * draws[:, VFLIP]
    inverse_scale = 1 / draws[:, SCALE]
    linear = torch.stack([
        torch.stack([x_sign * cos * inverse_scale, -x_sign * sin * inverse_scale], dim=1),
        torch.stack([y_sign * sin * inverse_scale, y_sign * cos * inverse_scale], dim=1),
    ], dim=1)
    shift = torch.stack([draws[:, DX], draws[:, DY]], dim=1) * (2 / side)  # pixels -> [-1, 1] units
    offset = -(linear @ shift.unsqueeze(-1))
    return torch.cat([linear, offset], dim=2)


def _brightness_contrast(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Float (B, 3, S, S) images in [0, 255] scaled by ``brightness`` (saturating at 255), then
    blended with their mean grey level by ``contrast``, as torchvision and PIL do; rounded."""
    images = (images * brightness.view(-1, 1, 1, 1)).clamp_(0, 255)
    luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    grey = (images * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    factor = contrast.view(-1, 1, 1, 1)
    return images.mul_(factor).add_(grey * (1 - factor)).clamp_(0, 255).round_()
