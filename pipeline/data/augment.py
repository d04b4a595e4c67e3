"""Training augmentation: random flips and a random rotation per image, in the loader or on the device.

A fundus has no canonical orientation once left and right eyes mix, so every training image is
flipped horizontally and vertically at random and rotated by up to ``rotation_degrees``. The
draws are a function of torch's global RNG, which ``FundusDataset`` seeds per image from
``EpochSampler`` (see ``data.sampling``): the same image of the same epoch gets the same draws
whether the loader applies them (``augment_image``, PIL) or the training device does, to whole
uint8 batches (``augment_batch``).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch.nn import functional as nnf
from torchvision.transforms.v2 import functional as F

# One image's draws: horizontal flip (0 or 1), vertical flip (0 or 1), rotation angle in degrees.
HFLIP, VFLIP, ANGLE = range(3)


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


def augment_image(img: Image.Image, draws: torch.Tensor) -> Image.Image:
    """A PIL image flipped and rotated as ``draws`` say (nearest neighbour, black corners).

    PIL rotates ~8x faster than torchvision's tensor path on a CPU core.
    """
    if draws[HFLIP]:
        img = F.hflip(img)
    if draws[VFLIP]:
        img = F.vflip(img)
    return F.rotate(img, float(draws[ANGLE]), fill=0)


def augment_batch(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """A uint8 (B, C, S, S) batch, image i flipped and rotated as ``draws[i]`` says, on the images' device.

    One sampling grid per image (flips and rotation folded into one 2x3 matrix) and
    ``grid_sample`` over the batch: torchvision's ``rotate`` takes one angle per call. Nearest
    neighbour, as the loader path: the output holds input values only, so it stays uint8 exactly,
    and it equals torchvision's ``rotate`` of the flipped image (PIL's, in ``augment_image``, but
    for the odd pixel whose source falls on a rounding tie).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"augment_batch takes square uint8 (B, C, S, S) batches, got {images.dtype} "
                         f"{tuple(images.shape)}")
    draws = draws.to(images.device, torch.float32)
    radians = torch.deg2rad(draws[:, ANGLE])
    cos, sin = torch.cos(radians), torch.sin(radians)
    # Output pixel -> source pixel, in grid_sample's [-1, 1] coordinates (x right, y down): first
    # undo the rotation (counter-clockwise on screen for a positive angle, as PIL), then the flips.
    x_sign = 1 - 2 * draws[:, HFLIP]
    y_sign = 1 - 2 * draws[:, VFLIP]
    zeros = torch.zeros_like(cos)
    theta = torch.stack([
        torch.stack([x_sign * cos, -x_sign * sin, zeros], dim=1),
        torch.stack([y_sign * sin, y_sign * cos, zeros], dim=1),
    ], dim=1)
    # A GPU samples the whole batch at once. A CPU goes image by image: a batch's float copy and
    # grid do not stay in cache, which made it 3x slower at 512 px.
    chunk = len(images) if images.device.type != "cpu" else 1
    parts = []
    for part, part_theta in zip(images.split(chunk), theta.split(chunk)):
        grid = nnf.affine_grid(part_theta, list(part.shape), align_corners=False)
        sampled = nnf.grid_sample(part.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        parts.append(sampled.to(torch.uint8))
    return torch.cat(parts)
