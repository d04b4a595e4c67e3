import math

import numpy as np
import pytest
import torch

from pipeline.catalog import SUPPORTED_MODELS
from pipeline.errors import ConfigError, WeightsUnavailableError
from pipeline.models import (
    OrdinalHead,
    build_model,
    with_tta,
    ensure_pretrained_available,
    serving_model,
    set_backbone_trainable,
    weights_cache_file,
)

MODELS = SUPPORTED_MODELS
EXPECTED_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth"}


@pytest.mark.parametrize("name", MODELS)
def test_head_has_five_grades(name):
    model = build_model(name, pretrained=False)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_cache_file_is_torchvisions_name_under_torch_home(name, torch_home):
    assert weights_cache_file(name) == torch_home / "hub" / "checkpoints" / EXPECTED_FILES[name]


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_loads_the_cached_file_through_the_weights_api(name, torch_home, imagenet_weights):
    model = build_model(name, pretrained=True)
    expected = torch.load(imagenet_weights[name], weights_only=True)
    loaded = model.state_dict()
    backbone = [k for k in expected if not k.startswith("fc.")]
    assert backbone and all(torch.equal(loaded[k], expected[k]) for k in backbone)
    assert model.fc.out_features == 5
    scratch = build_model(name, pretrained=False)
    assert not torch.equal(scratch.state_dict()["conv1.weight"], expected["conv1.weight"])


@pytest.mark.parametrize("name", MODELS)
def test_missing_weights_name_the_exact_file_and_folder(name, empty_torch_home):
    expected = empty_torch_home / "hub" / "checkpoints"
    with pytest.raises(WeightsUnavailableError) as raised:
        ensure_pretrained_available(name)
    message = str(raised.value)
    assert f"Put the file {EXPECTED_FILES[name]}" in message and f"in the folder {expected}" in message
    assert "weights_path=" in message


@pytest.mark.parametrize("name", MODELS)
def test_weights_path_is_loaded_weights_only(name, imagenet_weights, empty_torch_home):
    model = build_model(name, pretrained=True, weights_path=str(imagenet_weights[name]))
    expected = torch.load(imagenet_weights[name], weights_only=True)
    assert torch.equal(model.state_dict()["conv1.weight"], expected["conv1.weight"])


def test_weights_of_the_wrong_network_are_refused(imagenet_weights, empty_torch_home):
    with pytest.raises(WeightsUnavailableError, match="does not hold resnet18 ImageNet weights"):
        build_model("resnet18", pretrained=True, weights_path=str(imagenet_weights["resnet50"]))


def test_pickled_objects_in_a_weights_file_are_refused(tmp_path, empty_torch_home):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(WeightsUnavailableError, match="is not a loadable state dict"):
        build_model("resnet18", pretrained=True, weights_path=str(path))


def test_unknown_model_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of resnet18, resnet50"):
        build_model("vgg16", pretrained=False)


@pytest.mark.parametrize("name", MODELS)
def test_freezing_leaves_only_the_head_trainable(name):
    model = build_model(name, pretrained=False)
    set_backbone_trainable(model, False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_serving_model_returns_probabilities(name):
    served = serving_model(build_model(name, pretrained=False))
    with torch.no_grad():
        probabilities = served(torch.rand(3, 3, 32, 32))
    assert probabilities.shape == (3, 5)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(3), atol=1e-5)


def test_flip_tta_is_the_mean_of_the_four_flipped_predictions():
    torch.manual_seed(0)
    network = build_model("resnet18", pretrained=False).eval()
    images = torch.rand(3, 3, 32, 32)
    flipped = [images, images.flip(3), images.flip(2), images.flip(2, 3)]  # as is, left-right, up-down, both
    with torch.no_grad():
        expected = torch.stack([torch.softmax(network(x), dim=1) for x in flipped]).mean(dim=0)
        averaged = torch.softmax(with_tta(network, "flips")(images), dim=1)
        plain = torch.softmax(network(images), dim=1)
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert not torch.allclose(averaged, plain, atol=1e-4)  # the flips do change this network's answer
    assert torch.allclose(averaged.sum(dim=1), torch.ones(3), atol=1e-6)
    assert with_tta(network, "none") is network
    with pytest.raises(ConfigError, match="tta='rotations' is not supported; choose one of none, flips"):
        with_tta(network, "rotations")


@pytest.mark.parametrize("name", MODELS)
def test_an_ordinal_network_gives_valid_grade_probabilities(name):
    torch.manual_seed(0)
    model = build_model(name, pretrained=False, head="ordinal").eval()
    assert isinstance(model.fc, OrdinalHead)
    with torch.no_grad():
        probabilities = serving_model(model)(torch.rand(4, 3, 32, 32))
    assert probabilities.shape == (4, 5)
    assert (probabilities >= 0).all() and torch.allclose(probabilities.sum(dim=1), torch.ones(4), atol=1e-5)
    set_backbone_trainable(model, False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fc.score.weight", "fc.score.bias", "fc.first_cut", "fc.cut_gaps"}


@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])  # from near-uniform to saturated sigmoids
def test_ordinal_probabilities_are_the_differences_of_the_cumulative_outputs(scale):
    torch.manual_seed(0)
    head = OrdinalHead(8)
    with torch.no_grad():
        head.cut_gaps.copy_(torch.tensor([-2.0, 0.5, 3.0]))  # gaps from tiny to wide
    features = torch.randn(64, 8) * scale
    with torch.no_grad():
        probabilities = torch.exp(head(features)).double()
    # P(grade >= k) = sigmoid(w.x + b_k) by hand, from the head's parameters in float64: b_1 the
    # first cut, each next one lower by softplus(gap) = log(1 + exp(gap)).
    w = head.score.weight.detach().double().numpy()[0]
    bias = float(head.score.bias.detach())
    b = [float(head.first_cut.detach())]
    for gap in head.cut_gaps.detach().double().numpy():
        b.append(b[-1] - math.log1p(math.exp(gap)))
    x = features.double().numpy()
    cumulative = torch.tensor(1 / (1 + np.exp(-(x @ w + bias)[:, None] - np.array(b)[None, :])))
    assert torch.isfinite(probabilities).all() and (probabilities >= 0).all()
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(64, dtype=torch.float64), atol=1e-5)
    assert (cumulative[:, 1:] <= cumulative[:, :-1]).all()  # falls with k
    at_least = probabilities.flip(1).cumsum(1).flip(1)[:, 1:]  # sum of p_j over j >= k
    assert torch.allclose(at_least, cumulative, atol=1e-5)


def test_the_ordinal_head_learns_through_its_cut_points():
    """Cross-entropy on its outputs is the likelihood of the cumulative model: a few steps on
    features that order the grades fit them, and every parameter gets a gradient."""
    torch.manual_seed(0)
    grades = torch.arange(5).repeat(40)
    features = grades[:, None].float() + 0.3 * torch.randn(200, 1)
    head = OrdinalHead(1)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), grades)
        loss.backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert (head(features).argmax(dim=1) == grades).float().mean() > 0.9
