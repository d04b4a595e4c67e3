"""ResNets built in one place: torchvision weights API, 5-grade head, and the served wrapper."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.transforms import v2

from pipeline.config import SUPPORTED_MODELS
from pipeline.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from pipeline.data.eyepacs import NUM_GRADES
from pipeline.errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

# V1 is what the course labs' ``pretrained=True`` loaded; keep it so results stay comparable.
IMAGENET_WEIGHTS: dict[str, models.WeightsEnum] = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
}


def weights_cache_file(model_name: str) -> Path:
    """Where torch.hub looks for (and downloads) the ImageNet weights: ``$TORCH_HOME/hub/checkpoints/``."""
    url = _weights_for(model_name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _weights_for(model_name: str) -> models.WeightsEnum:
    if model_name not in IMAGENET_WEIGHTS:
        raise ConfigError(f"model={model_name!r} is not supported; choose one of {', '.join(SUPPORTED_MODELS)}")
    return IMAGENET_WEIGHTS[model_name]


def load_imagenet_state_dict(model_name: str, weights_path: str = "") -> dict[str, torch.Tensor]:
    """The ImageNet state dict: from ``weights_path``, else torch.hub's cache, else a download.

    Raises:
        WeightsUnavailableError: naming the exact file and folder to put the weights in.
    """
    weights = _weights_for(model_name)
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsUnavailableError(f"weights_path={weights_path!r}: no such file")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a file that is no state dict
            raise WeightsUnavailableError(f"weights_path={weights_path!r} is not a loadable state dict: {exc}") from None
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except OSError as exc:  # URLError and socket errors are OSErrors: offline or blocked
        target = weights_cache_file(model_name)
        raise WeightsUnavailableError(
            f"ImageNet weights for {model_name} ({weights}) are not cached and could not be downloaded "
            f"({exc}). Put the file {target.name} (from {weights.url}) in the folder {target.parent}, "
            f"or pass weights_path=/path/to/{target.name}"
        ) from None


def ensure_pretrained_available(model_name: str, weights_path: str = "") -> None:
    """Fails fast, before any training, when the weights cannot be had."""
    if weights_path or not weights_cache_file(model_name).is_file():
        load_imagenet_state_dict(model_name, weights_path)


def build_model(model_name: str, *, pretrained: bool, weights_path: str = "", num_classes: int = NUM_GRADES) -> nn.Module:
    """A torchvision ResNet with its ImageNet head replaced by a ``num_classes`` layer."""
    _weights_for(model_name)  # rejects unknown names with the valid choices
    model = models.get_model(model_name, weights=None)
    if pretrained:
        state = load_imagenet_state_dict(model_name, weights_path)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            source = weights_path or weights_cache_file(model_name)
            raise WeightsUnavailableError(f"{source} does not hold {model_name} ImageNet weights: {exc}") from None
    elif weights_path:
        log.warning("weights_path=%s is ignored because pretrained=false", weights_path)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freezes or unfreezes everything but the new head (``fc``)."""
    for name, param in model.named_parameters():
        if not name.startswith("fc."):
            param.requires_grad_(trainable)


def serving_model(model: nn.Module) -> nn.Module:
    """[0, 1] RGB batch -> 5 grade probabilities: normalisation and softmax travel with the weights."""
    return nn.Sequential(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), model, nn.Softmax(dim=1)).eval()
