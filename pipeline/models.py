"""ResNets built in one place: torchvision weights API, 5-grade head, and the served wrapper."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as nnf
from torchvision import models
from torchvision.transforms import v2

from pipeline.catalog import HEADS, IMAGENET_WEIGHTS, NUM_GRADES, SUPPORTED_MODELS, TTA_MODES
from pipeline.config import require_choice
from pipeline.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from pipeline.errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

# torchvision's ResNets call their classifier ``fc`` and their last convolutional stage ``layer4``.
HEAD = "fc"
LAST_CONV_STAGE = "layer4"


def weights_cache_file(model_name: str) -> Path:
    """Where torch.hub looks for (and downloads) the ImageNet weights: ``$TORCH_HOME/hub/checkpoints/``."""
    url = imagenet_weights(model_name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def imagenet_weights(model_name: str) -> models.WeightsEnum:
    """The torchvision weights enum of ``model_name``'s ImageNet weights."""
    if model_name not in IMAGENET_WEIGHTS:
        raise ConfigError(f"model={model_name!r} is not supported; choose one of {', '.join(SUPPORTED_MODELS)}")
    return models.get_weight(IMAGENET_WEIGHTS[model_name])


def load_imagenet_state_dict(model_name: str, weights_path: str = "") -> dict[str, torch.Tensor]:
    """The ImageNet state dict: from ``weights_path``, else torch.hub's cache, else a download.

    Raises:
        WeightsUnavailableError: naming the exact file and folder to put the weights in.
    """
    weights = imagenet_weights(model_name)
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsUnavailableError(f"weights_path={weights_path!r}: no such file")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a file that is no state dict
            raise WeightsUnavailableError(f"weights_path={weights_path!r} is not a loadable state dict: {exc}") from None
    target = weights_cache_file(model_name)
    try:
        if not target.is_file():
            # Fetched here, not by torch.hub's loader, which announces "Downloading: ..." before it
            # finds the machine offline; the file's name carries its hash's prefix, checked on arrival.
            target.parent.mkdir(parents=True, exist_ok=True)
            prefix = re.search(r"-([a-f0-9]+)\.", target.name)
            torch.hub.download_url_to_file(weights.url, str(target), prefix.group(1) if prefix else None,
                                           progress=False)
        return weights.get_state_dict(progress=False, weights_only=True)
    except OSError as exc:  # URLError and socket errors are OSErrors: offline or blocked
        raise WeightsUnavailableError(
            f"ImageNet weights for {model_name} ({weights}) are not cached and could not be downloaded "
            f"({exc}). Put the file {target.name} (from {weights.url}) in the folder {target.parent}, "
            f"or pass weights_path=/path/to/{target.name}"
        ) from None


def ensure_pretrained_available(model_name: str, weights_path: str = "") -> None:
    """Fails fast, before any training, when the weights cannot be had."""
    if weights_path or not weights_cache_file(model_name).is_file():
        load_imagenet_state_dict(model_name, weights_path)


def build_model(model_name: str, *, pretrained: bool, weights_path: str = "", head: str = "classification") -> nn.Module:
    """A torchvision ResNet with its ImageNet head replaced by a 5-grade ``head`` (``catalog.HEADS``).

    Either head's outputs are logits of the five grades (the ordinal head's are log-probabilities,
    see ``OrdinalHead``): cross-entropy, softmax, argmax, TTA and Grad-CAM take both alike.
    """
    imagenet_weights(model_name)  # rejects unknown names with the valid choices
    require_choice("head", head, HEADS)
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
    features = head_of(model).in_features
    setattr(model, HEAD, OrdinalHead(features) if head == "ordinal" else nn.Linear(features, NUM_GRADES))
    return model


class OrdinalHead(nn.Module):
    """A cumulative link (proportional odds) head: P(grade >= k) = sigmoid(w.x + b_k), k = 1..4.

    One score per image and four ordered cut points: b_1 > b_2 > b_3 > b_4 by construction (each
    below the last by a softplus), so the cumulative probabilities fall with k and every grade gets
    P(grade >= k) - P(grade >= k + 1) >= 0, summing to 1. ``forward`` returns the log of those five
    probabilities: cross-entropy on them is the model's likelihood, and their softmax is themselves.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.score = nn.Linear(in_features, 1)
        self.first_cut = nn.Parameter(torch.zeros(1))
        # Softplus(0.54) ~ 1: the cut points start one logit apart.
        self.cut_gaps = nn.Parameter(torch.full((NUM_GRADES - 2,), 0.54))

    def cumulative_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of P(grade >= k), k = 1..4, shape (N, 4), falling along k."""
        cuts = torch.cat([self.first_cut, self.first_cut - torch.cumsum(nnf.softplus(self.cut_gaps), dim=0)])
        # The score may come out of autocast in bf16; the cut points and everything after them are
        # fp32: the differences of probabilities below would lose bf16's few digits.
        return self.score(features).float() + cuts.float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        upper = self.cumulative_logits(features)  # a_1 > ... > a_4
        # log p_0 = log(1 - s(a_1)) = logsigmoid(-a_1); log p_4 = logsigmoid(a_4); between them
        # s(a_k) - s(a_k+1) = s(a_k) s(-a_k+1) (1 - exp(a_k+1 - a_k)), all in log space: no
        # difference of two nearly equal probabilities, so no catastrophic cancellation.
        gaps = (upper[:, 1:] - upper[:, :-1]).clamp_max(-torch.finfo(torch.float32).eps)
        middle = nnf.logsigmoid(upper[:, :-1]) + nnf.logsigmoid(-upper[:, 1:]) + torch.log(-torch.expm1(gaps))
        return torch.cat([nnf.logsigmoid(-upper[:, :1]), middle, nnf.logsigmoid(upper[:, -1:])], dim=1)


def head_of(model: nn.Module) -> nn.Module:
    """The classifier layer: the part that is trained while the backbone is frozen."""
    return getattr(model, HEAD)


def last_conv_stage(model: nn.Module) -> nn.Module:
    """The last convolutional stage: where Grad-CAM looks."""
    return getattr(model, LAST_CONV_STAGE)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freezes or unfreezes everything but the head."""
    head = {id(param) for param in head_of(model).parameters()}
    for param in model.parameters():
        if id(param) not in head:
            param.requires_grad_(trainable)


# Image dims flipped by each of the four flip combinations of a (N, C, H, W) batch.
FLIPS = ((), (3,), (2,), (2, 3))


class FlipAveraged(nn.Module):
    """Test-time augmentation: the log of the mean grade probabilities over the four flips.

    Its outputs stand in for logits: their softmax is that mean, so losses, metrics and the
    served softmax need no change.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(self.model(images.flip(dims) if dims else images).float(), dim=1)
                                     for dims in FLIPS]).mean(dim=0)
        # Clamped: a probability that underflowed to 0 would give an infinite loss.
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` as evaluated and served: itself (``none``), or averaged over flips (``flips``)."""
    require_choice("tta", tta, TTA_MODES)
    return FlipAveraged(model) if tta == "flips" else model


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A ResNet's forward up to its head: the pooled features (N, features) the head takes
    (``model(images) == head_of(model)(pooled_features(model, images))``)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def serving_model(model: nn.Module, tta: str = "none") -> nn.Module:
    """[0, 1] RGB batch -> 5 grade probabilities: normalisation, test-time augmentation and softmax
    travel with the weights."""
    return nn.Sequential(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), with_tta(model, tta), nn.Softmax(dim=1)).eval()
