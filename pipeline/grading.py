"""The grader: what a train run hands on. Photos in, grades out, the same way in evaluate, predict
and the served model.

A grader is the trained network plus the facts needed to use it: the size of the processed cache
it learnt from (a new photo is prepared through that same cache encoding), its input size, the
temperature that calibrates its probabilities, the operating point of the referable-DR call, how
probabilities become a grade (argmax or cut points on the expected grade, and the fellow eye's
weight where both eyes are graded together), and when it refuses a photo as ungradable
(``gradability``: no fundus, unreadable, too dark, over-exposed, out of focus, low contrast, or
unlike the photos it learnt from).
"""

from __future__ import annotations

import base64
import logging

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.calibration import calibrate
from pipeline.data.dataset import RawPhotoDataset, as_chw_tensor, normalize_batch, to_unit_float
from pipeline.data.photos import PhotoSource
from pipeline.gradability import NoveltyModel
from pipeline.figures import heatmap_overlay_png
from pipeline.gradcam import grad_cam
from pipeline.models import build_model, head_of, last_conv_stage, serving_model
from pipeline.photo_grader import GraderSpec, Judged, PhotoGrader, concatenated

log = logging.getLogger(__name__)


class Grader(PhotoGrader):
    """A trained torch network with normalisation, softmax and calibration attached, the spec to
    use it, and the novelty model of its training photos (None for graders logged before it existed)."""

    def __init__(self, network: nn.Module, spec: GraderSpec, novelty: NoveltyModel | None = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(spec, novelty)
        self.network = network  # the plain torchvision module (logits), for research
        self.device = torch.device(device)
        self._served = serving_model(network.float().to(self.device), spec.tta)

    @classmethod
    def from_state_dict(cls, spec: GraderSpec, state: dict[str, torch.Tensor],
                        novelty: NoveltyModel | None = None) -> Grader:
        network = build_model(spec.model, pretrained=False, head=spec.head)
        network.load_state_dict(state)
        return cls(network, spec, novelty)

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Grade probabilities (N, 5), calibrated unless asked otherwise, and pooled features
        (N, features) of a batch of uint8 (or [0, 1] float) images."""
        features: list[torch.Tensor] = []

        def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            # The pooled features enter the head; under TTA the first pass is the photo itself.
            if not features:
                features.append(inputs[0].detach().float())

        hook = head_of(self.network).register_forward_pre_hook(keep)
        try:
            probabilities = self._served(to_unit_float(images).to(self.device)).float().cpu().numpy()
        finally:
            hook.remove()
        return (calibrate(probabilities, self.spec.temperature) if calibrated else probabilities.astype(np.float64),
                features[0].cpu().numpy())

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities at the grader's temperature."""
        return calibrate(probabilities, self.spec.temperature)

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Calibrated grade probabilities of a batch of uint8 (or [0, 1] float) images, shape (N, 5)."""
        return self.outputs(images)[0]

    def outputs_of(self, loader: DataLoader, progress: str | None = None, calibrated: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(targets, probabilities, features) over every (image, target) batch of ``loader``, in order."""
        targets, probabilities, features = [], [], []
        for images, batch_targets, *_ in tqdm(loader, desc=progress, unit="batch", disable=None if progress else True):
            batch_probabilities, batch_features = self.outputs(images, calibrated)
            probabilities.append(batch_probabilities)
            features.append(batch_features)
            targets.append(np.asarray(batch_targets))
        return np.concatenate(targets), np.concatenate(probabilities), np.concatenate(features)

    def probabilities_of(self, loader: DataLoader, progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(targets, probabilities) over every (image, target) batch of ``loader``, in order."""
        targets, probabilities, _ = self.outputs_of(loader, progress)
        return targets, probabilities

    def network_outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.outputs(torch.stack([as_chw_tensor(image) for image in pixels]))

    def explain(self, pixels: np.ndarray, grades: np.ndarray) -> list[str]:
        """Grad-CAM of each photo for its grade (on the photo itself, not its flips), over it."""
        images = normalize_batch(torch.stack([as_chw_tensor(image) for image in pixels])).to(self.device)
        heatmaps = grad_cam(self.network, images, last_conv_stage(self.network), torch.as_tensor(grades)).numpy()
        return [base64.b64encode(heatmap_overlay_png(image, heatmap)).decode("ascii")
                for image, heatmap in zip(pixels, heatmaps)]

    def judge_images(self, images: torch.Tensor, measures: np.ndarray, refused: list[str]) -> Judged:
        """``judge_pixels`` of a batch of prepared photos as uint8 (N, 3, H, W) tensors."""
        probabilities, features = self.outputs(images)
        probabilities[[bool(reason) for reason in refused]] = np.nan  # the network saw a blank
        return self.judge(probabilities, features, measures, refused)

    def grade_photos(self, sources: list[PhotoSource], *, patients: np.ndarray | None = None, batch_size: int = 32,
                     num_workers: int = 0) -> pd.DataFrame:
        """The prediction columns for new photos (files or their bytes), in order; with ``patients``
        each eye's grade also draws on its fellow eye's photo (``fuse_weight``). A photo that
        cannot be read, or holds no fundus, is a row refused with its reason: it never fails the
        others."""
        dataset = RawPhotoDataset(sources, self.spec.cache_size, self.spec.image_size, self.spec.enhance)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        judged = [self.judge_images(images, np.asarray(measures), list(refused))
                  for images, _, measures, refused in tqdm(loader, desc="predict", unit="batch", disable=None)]
        return self.decide(concatenated(judged), patients)


