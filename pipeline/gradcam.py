"""Grad-CAM heatmaps for the torchvision ResNets (target layer: the last conv stage, ``models.last_conv_stage``).

Hand-written rather than taken from the ``grad-cam`` package (jacobgil/pytorch-grad-cam): its
release pulls in opencv-python-headless, scipy, ttach and tqdm for what is about forty lines
of torch here, and we only need plain Grad-CAM on one layer.

Grad-CAM (Selvaraju et al., 2017): the gradient of the class score with respect to the target
layer's activation maps, averaged over space, weights the maps; the ReLU of the weighted sum shows
where evidence *for* that class lies. ``figures.gradcam_figure`` draws the heatmaps.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def grad_cam(model: nn.Module, images: torch.Tensor, target_layer: nn.Module,
             classes: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM heatmaps for a batch.

    The model is run in eval mode (batch-norm statistics and dropout must not depend on the batch)
    and restored afterwards; its parameters' ``requires_grad`` and ``.grad`` are left untouched.

    Args:
        model: maps ``images`` to logits (or probabilities), shape (N, classes).
        images: input batch (N, C, H, W), already in the form ``model`` expects.
        target_layer: a module inside ``model`` whose output is (N, K, h, w) feature maps.
        classes: class per image to explain, shape (N,); defaults to the predicted class.

    Returns:
        (N, H, W) heatmaps on the CPU, upsampled to the input size and scaled to [0, 1] per image
        (all zeros where the class has no positive evidence anywhere).
    """
    captured: dict[str, torch.Tensor] = {}

    def keep_activation(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        # Cutting the graph here makes the maps a leaf that always has a gradient, even when the
        # backbone is frozen or the input needs none, and spares backpropagating into the backbone.
        activation = output.detach().requires_grad_(True)
        captured["activation"] = activation
        return activation

    modes = {module: module.training for module in model.modules()}
    handle = target_layer.register_forward_hook(keep_activation)
    try:
        model.eval()
        with torch.enable_grad():
            scores = model(images)
            if "activation" not in captured:
                raise ValueError("target_layer was not called in the forward pass; is it part of model?")
            if classes is None:
                classes = scores.argmax(dim=1)
            classes = torch.as_tensor(classes, device=scores.device).reshape(-1)
            # Samples are independent in eval mode, so the gradient of the sum is per-sample.
            chosen = scores.gather(1, classes[:, None]).sum()
            # autograd.grad, not backward(): nothing accumulates into the parameters' .grad.
            (gradient,) = torch.autograd.grad(chosen, captured["activation"])
    finally:
        handle.remove()
        for module, training in modes.items():
            module.train(training)

    activation = captured["activation"].detach()
    channel_weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((channel_weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = peak - low
    cam = torch.where(span > 0, (cam - low) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return cam.clamp(0, 1).cpu()
