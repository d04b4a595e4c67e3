"""The processed dataset as torch Datasets, and the train/eval transform presets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pipeline.data.preprocess import MANIFEST, METADATA, load_rgb
from pipeline.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TrainPreset:
    """Flips and rotation: a fundus has no canonical orientation once left and right eyes mix."""

    def __init__(self, image_size: int, rotation_degrees: float = 20.0) -> None:
        self.transforms = v2.Compose([
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(rotation_degrees, fill=0),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)


class EvalPreset:
    """Resize only. ``normalize=False`` gives [0, 1] tensors for the served model, which normalises itself."""

    def __init__(self, image_size: int, normalize: bool = True) -> None:
        steps = [v2.ToImage(), v2.Resize(image_size, antialias=True), v2.ToDtype(torch.float32, scale=True)]
        if normalize:
            steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        self.transforms = v2.Compose(steps)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)


class ProcessedDataset:
    """A processed dataset folder: ``manifest.csv``, ``dataset.json`` and ``images/``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir)
        manifest, metadata = self.root / MANIFEST, self.root / METADATA
        if not manifest.is_file() or not metadata.is_file():
            raise DataError(
                f"{self.root} is not a processed dataset (no {MANIFEST} / {METADATA}); "
                "run the preprocess entry point on the raw data first"
            )
        self.metadata: dict = json.loads(metadata.read_text())
        self.manifest = pd.read_csv(manifest, dtype={"id": str, "patient": str})

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    def split(self, name: str) -> pd.DataFrame:
        rows = self.manifest[self.manifest["split"] == name].reset_index(drop=True)
        if rows.empty:
            raise DataError(f"{self.root / MANIFEST} has no '{name}' images")
        return rows


class FundusDataset(Dataset):
    """(image tensor, grade) pairs of one split of a processed dataset."""

    def __init__(self, root: Path, rows: pd.DataFrame, transform) -> None:
        self.root = root
        self.files = rows["file"].tolist()
        self.grades = torch.tensor(rows["grade"].to_numpy(), dtype=torch.long)
        self.ids = rows["id"].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(load_rgb(self.root / self.files[index])), self.grades[index]


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def split_dataset(processed: ProcessedDataset, split: str, image_size: int, *, train: bool,
                  rotation_degrees: float = 20.0, normalize: bool = True) -> FundusDataset:
    """One split with the train or eval preset; refuses to upsample a smaller cache."""
    if image_size > processed.image_size:
        raise DataError(
            f"image_size={image_size} is larger than the processed dataset's {processed.image_size} px "
            f"({processed.root}); run preprocess with image_size={image_size} or train smaller"
        )
    transform = TrainPreset(image_size, rotation_degrees) if train else EvalPreset(image_size, normalize)
    return FundusDataset(processed.root, processed.split(split), transform)
