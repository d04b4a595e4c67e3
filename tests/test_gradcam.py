import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from pipeline.catalog import SUPPORTED_MODELS
from pipeline.data.synthetic import render_fundus
from pipeline.gradcam import grad_cam
from pipeline.models import build_model, serving_model, set_backbone_trainable

MODELS = SUPPORTED_MODELS
SIZE = 64


def seeded_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, pretrained=False)


def fundus_batch(grades, seed=3) -> torch.Tensor:
    """[0, 1] fundus photos; one generator state per image, so only the lesions differ by grade."""
    return torch.stack([pil_to_tensor(render_fundus(grade, "left", (SIZE, SIZE), np.random.default_rng(seed))).float()
                        / 255 for grade in grades])


def hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", MODELS)
def test_heatmaps_shape_range_and_model_left_as_found(name):
    model = seeded_model(name)
    served = serving_model(model)  # puts everything in eval mode itself, so set the modes after it
    # A state grad_cam must not disturb: training mode with one block in eval, a frozen backbone.
    served.train()
    model.layer1.eval()
    set_backbone_trainable(model, False)
    modes = {n: m.training for n, m in served.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}

    heatmaps = grad_cam(served, fundus_batch([0, 2, 4]), model.layer4)

    assert heatmaps.shape == (3, SIZE, SIZE)
    assert heatmaps.dtype == torch.float32
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert torch.allclose(heatmaps.amax(dim=(1, 2)), torch.ones(3))  # scaled per image, none degenerate
    assert not model.layer4._forward_hooks and not model.layer4._backward_hooks
    assert hook_counts(model) == 0
    assert {n: m.training for n, m in served.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into .grad


@pytest.mark.parametrize("name", MODELS)
def test_heatmaps_follow_the_image(name):
    model = seeded_model(name)
    served = serving_model(model)
    # The same eye at grade 0 and at grade 4: only the lesions differ, and so should the maps.
    # An untrained net's maps differ by varying amounts (max 0.04 to 0.9 over 24 model and image
    # seeds tried); the bar only asks for a visible difference, not a particular one.
    healthy, proliferative = grad_cam(served, fundus_batch([0, 4]), model.layer4)
    assert (healthy - proliferative).abs().max() > 0.02
    # Batching does not mix images: each map is what the image alone gives.
    (alone,) = grad_cam(served, fundus_batch([4]), model.layer4)
    assert torch.allclose(alone, proliferative, atol=1e-4)


def test_classes_default_to_the_prediction_and_can_be_chosen():
    model = seeded_model("resnet18")
    served = serving_model(model)
    images = fundus_batch([1, 3])
    predicted = served(images).argmax(dim=1)
    default = grad_cam(served, images, model.layer4)
    assert torch.equal(default, grad_cam(served, images, model.layer4, classes=predicted))
    other = (predicted + 2) % 5
    assert not torch.allclose(default, grad_cam(served, images, model.layer4, classes=other))


def test_works_under_no_grad():
    model = seeded_model("resnet18")
    with torch.no_grad():  # callers evaluating with gradients off still get maps
        heatmaps = grad_cam(serving_model(model), fundus_batch([2]), model.layer4)
    assert heatmaps.amax() == 1


def test_unused_target_layer_is_an_error_and_leaves_no_hook():
    model = seeded_model("resnet18")
    stray = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="target_layer"):
        grad_cam(model, fundus_batch([0]), stray)
    assert not stray._forward_hooks and hook_counts(model) == 0


class BrightnessModel(nn.Module):
    """A model whose evidence is known: class 1 = "something bright here", class 0 = "dark here".

    The target layer's two maps are the pixel brightness and its complement; global average
    pooling and a linear head make class 1's logit the mean brightness and class 0's the mean
    darkness, so class 1's Grad-CAM must light up the bright pixels and class 0's the dark ones.
    """

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, kernel_size=1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1 / 3] * 3, [-1 / 3] * 3]).view(2, 3, 1, 1))
            conv.bias.copy_(torch.tensor([0.0, 1.0]))
        self.features = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(images)).flatten(1))


def test_heatmap_peaks_where_the_evidence_is():
    images = torch.zeros(1, 3, SIZE, SIZE)
    images[:, :, 8:24, 36:52] = 1.0  # one bright square on black
    square = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    square[8:24, 36:52] = True
    model = BrightnessModel()
    bright, dark = grad_cam(model, images.repeat(2, 1, 1, 1), model.features, classes=torch.tensor([1, 0]))
    assert bright[square].min() == 1 and bright[~square].max() == 0
    assert dark[square].max() == 0 and dark[~square].min() == 1


