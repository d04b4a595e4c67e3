"""The processed dataset as torch Datasets, and the train/eval transform presets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.catalog import AUGMENT_RECIPES
from pipeline.data import arrays, augment
from pipeline.data.photos import PhotoSource, load_rgb
from pipeline.data.prepare import network_input, network_input_or_refused
from pipeline.data.quality import PhotoQuality
from pipeline.data.preprocess import MANIFEST, METADATA, PROCESSED_SPLITS, cache_dir
from pipeline.errors import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TrainPreset:
    """Resize, then the ``recipe``'s augmentation (see ``data.augment``), to a uint8 (3, size, size) tensor.

    The loader applies them on the PIL image (PIL rotates ~8x faster than the tensor path) and
    ships uint8: workers send a quarter of float32's bytes, and ``normalize_batch`` converts and
    normalises whole batches on the training device. With ``on_device`` the loader only draws
    them: it returns ``(image, draws)`` and ``augment.augment_batch`` applies the draws to whole
    batches on the training device.

    Takes a PIL image (the JPEG cache) or a uint8 (3, size, size) tensor (the uint8 cache).
    """

    def __init__(self, image_size: int, rotation_degrees: float = 20.0, *, recipe: str = "lab",
                 on_device: bool = False) -> None:
        if recipe not in AUGMENT_RECIPES:
            raise ValueError(f"recipe={recipe!r} is not supported; choose one of {', '.join(AUGMENT_RECIPES)}")
        self.resize = v2.Resize(image_size, antialias=True)
        self.image_size = image_size
        self.rotation_degrees = rotation_degrees
        self.recipe = recipe
        self.on_device = on_device

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        img = self.resize(img)
        if self.recipe == "lab":
            draws = augment.draw(self.rotation_degrees)
        else:
            draws = augment.draw_field(self.image_size)
        if self.on_device:
            return _as_tensor(img), draws
        pil = F.to_pil_image(img) if isinstance(img, torch.Tensor) else img
        return F.pil_to_tensor(augment.augment_image(pil, draws))


class EvalPreset:
    """Resize only, to a uint8 (3, size, size) tensor; from a PIL image or a uint8 tensor."""

    def __init__(self, image_size: int) -> None:
        self.resize = v2.Resize(image_size, antialias=True)

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        return _as_tensor(self.resize(img))


def _as_tensor(img: Image.Image | torch.Tensor) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else F.pil_to_tensor(img)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]: the served model's input."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) images -> ImageNet-normalised float32, on whatever device they are."""
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    mean = torch.tensor(IMAGENET_MEAN, device=images.device) * scale
    inverse_std = 1.0 / (torch.tensor(IMAGENET_STD, device=images.device) * scale)
    # One conversion and two in-place passes: this runs on every batch in the training process.
    out = images.to(torch.float32, copy=True)
    if out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
        # Channels interleave in memory: per-channel constants broadcast over an innermost dimension of 3
        # do not vectorise (1.6x slower on a CPU), so go a row of pixels at a time, constants repeated.
        rows = out.permute(0, 2, 3, 1).view(-1, out.shape[-1] * 3)
        rows.sub_(mean.repeat(out.shape[-1])).mul_(inverse_std.repeat(out.shape[-1]))
        return out
    return out.sub_(mean.view(1, 3, 1, 1)).mul_(inverse_std.view(1, 3, 1, 1))


def _is_dataset(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / METADATA).is_file()


def resolve_dataset_dir(data_dir: str | Path, image_size: int | None = None, enhance: str = "none") -> Path:
    """``data_dir`` itself if it is a dataset, else its smallest ``enhance`` cache >= ``image_size``
    (``preprocess.cache_dir`` names them)."""
    data_dir = Path(data_dir)
    if _is_dataset(data_dir):
        return data_dir
    caches = {}
    for folder in data_dir.glob("*px*"):
        size = folder.name.partition("px")[0]
        if size.isdigit() and folder == cache_dir(data_dir, int(size), enhance) and _is_dataset(folder):
            caches[int(size)] = folder
    with_enhance = "" if enhance == "none" else f" enhance={enhance}"
    if not caches:
        raise DataError(f"{data_dir} holds no{with_enhance} processed dataset (no {MANIFEST}); run the preprocess "
                        f"entry point first{' with' + with_enhance if with_enhance else ''}")
    if image_size is None:
        return caches[max(caches)]
    large_enough = [size for size in caches if size >= image_size]
    if not large_enough:
        raise DataError(
            f"image_size={image_size} is larger than every{with_enhance} processed cache in {data_dir} "
            f"({', '.join(f'{s} px' for s in sorted(caches))}); run preprocess with image_size={image_size}"
            f"{with_enhance}"
        )
    return caches[min(large_enough)]


class ProcessedDataset:
    """A processed dataset folder: ``manifest.csv``, ``dataset.json`` and ``images/``.

    ``data_dir`` may also be preprocess's output root; then the smallest cache of ``enhance``
    that is at least ``image_size`` is used (resizing down is cheap, up is pointless). A dataset
    folder given itself must hold ``enhance``'s images.
    """

    def __init__(self, data_dir: str | Path, image_size: int | None = None, enhance: str = "none") -> None:
        self.root = resolve_dataset_dir(data_dir, image_size, enhance)
        manifest, metadata = self.root / MANIFEST, self.root / METADATA
        self.metadata: dict = json.loads(metadata.read_text())
        if self.enhance != enhance:
            # A network sees photos through the enhancement it learnt on: another gives other pixels.
            raise DataError(f"{self.root} holds enhance={self.enhance} images, but enhance={enhance} ones are needed; "
                            f"run preprocess with enhance={enhance}, or give data_dir as the folder of the caches")
        self.manifest = pd.read_csv(manifest, dtype={"id": str, "patient": str})

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def enhance(self) -> str:
        # Datasets preprocessed before enhance existed record none, which is what they hold.
        return str(self.metadata.get("enhance", "none"))

    def split(self, name: str, with_ungradable: bool = False) -> pd.DataFrame:
        """One split's rows; photos the set labels ungradable (no grade to learn from or score)
        only ``with_ungradable``, for scoring the grader's own check."""
        rows = self.manifest[self.manifest["split"] == name]
        if not with_ungradable and "gradable" in rows.columns:
            rows = rows[rows["gradable"].astype(bool)]
        if rows.empty:
            raise DataError(f"{self.root / MANIFEST} has no '{name}' images")
        return rows.reset_index(drop=True)


class FundusDataset(Dataset):
    """(image tensor, grade) pairs of one split of a processed dataset, or (image, grade, draws)
    triples when the transform leaves the augmentation to the training device.

    The pixels come from the JPEG files, decoded on every access, or with ``array`` from that
    split's uint8 cache (``data.arrays``; the same pixels, already at the training size).
    """

    def __init__(self, root: Path, rows: pd.DataFrame, transform, array: Path | None = None) -> None:
        self.root = root
        self.files = rows["file"].tolist()
        self.grades = torch.tensor(rows["grade"].to_numpy(), dtype=torch.long)
        self.ids = rows["id"].tolist()
        self.transform = transform
        self.array = None if array is None else arrays.ArrayImages(array, len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """``key`` is an index, or ``(index, sample_seed)`` from ``EpochSampler``: then the random
        augmentation of this image is a function of that seed alone."""
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        if sample_seed is None:
            return self._load(index)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone, which the draws use: torch.manual_seed would also seed every
            # accelerator's generator (a lazy call that records a stack trace, ~0.5 ms an image).
            torch.default_generator.manual_seed(sample_seed)
            return self._load(index)

    def _load(self, index: int) -> tuple[torch.Tensor, ...]:
        pixels = self.array[index] if self.array is not None else load_rgb(self.root / self.files[index])
        out = self.transform(pixels)
        if isinstance(out, tuple):  # (image, draws): augmented on the training device
            return out[0], self.grades[index], out[1]
        return out, self.grades[index]


def collate_channels_last(batch: list[tuple]) -> list:
    """``default_collate``, with (C, H, W) images (an item's first part) stacked in channels_last memory.

    The presets' images are (C, H, W) views of (H, W, C) memory, PIL's and the uint8 cache's
    layout: stacked as they lie, a batch is a plain copy where an NCHW stack transposes every
    image (~15x slower at 512 px, in the workers), and a channels_last model takes it as it is.
    """
    if not (isinstance(batch[0][0], torch.Tensor) and batch[0][0].ndim == 3):
        return default_collate(batch)
    images, *rest = default_collate([(item[0].permute(1, 2, 0), *item[1:]) for item in batch])
    return [images.permute(0, 3, 1, 2), *rest]


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int, seed: int,
                sampler: Sampler | None = None, training: bool = False) -> DataLoader:
    """Seeded loader; pinned memory on CUDA, workers kept alive between epochs, channels_last batches.

    A training loader drops a last batch of a single image: BatchNorm cannot train on one.
    """
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=training and per_epoch % batch_size == 1 and per_epoch > 1,
        num_workers=num_workers,
        generator=generator,
        collate_fn=collate_channels_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def split_dataset(processed: ProcessedDataset, split: str, image_size: int, *, train: bool,
                  rotation_degrees: float = 20.0, array: Path | None = None,
                  augment_on_device: bool = False, augment_recipe: str = "lab") -> FundusDataset:
    """One split with the train or eval preset; refuses to upsample a smaller cache.

    Args:
        array: the split's uint8 cache (``build_uint8_cache``) to read instead of the JPEGs.
        augment_on_device: the training split yields (image, grade, draws) and leaves the
            augmentation to ``augment.augment_batch`` on the training device.
        augment_recipe: the training split's augmentation, ``lab`` or ``field`` (``data.augment``).
    """
    _check_size(processed, image_size)
    transform = (TrainPreset(image_size, rotation_degrees, recipe=augment_recipe, on_device=augment_on_device)
                 if train else EvalPreset(image_size))
    return FundusDataset(processed.root, processed.split(split), transform, array)


def build_uint8_cache(processed: ProcessedDataset, image_size: int, num_workers: int = 0,
                      splits: tuple[str, ...] = PROCESSED_SPLITS) -> dict[str, Path]:
    """The uint8 cache of each split at ``image_size``, built from the JPEG cache where missing
    (see ``data.arrays``): the eval preset's pixels, which the JPEG path augments every epoch."""
    _check_size(processed, image_size)
    rows = {split: processed.split(split) for split in splits}
    return arrays.build_arrays(
        processed.root, {split: FundusDataset(processed.root, r, EvalPreset(image_size)) for split, r in rows.items()},
        {split: r["id"].tolist() for split, r in rows.items()}, image_size, num_workers)


def _check_size(processed: ProcessedDataset, image_size: int) -> None:
    if image_size > processed.image_size:
        raise DataError(
            f"image_size={image_size} is larger than the processed dataset's {processed.image_size} px "
            f"({processed.root}); run preprocess with image_size={image_size} or train smaller"
        )


def as_chw_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A uint8 (H, W, 3) array as the uint8 (3, H, W) tensor the torch grader takes."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()


def prepared_input(source: PhotoSource, cache_size: int, image_size: int, enhance: str = "none"
                   ) -> tuple[torch.Tensor, PhotoQuality]:
    """``prepare.network_input`` as a uint8 (3, size, size) tensor: exactly the pixels of the
    photo's processed-cache image through the eval preset; and its quality measures.

    Raises:
        DataError: naming the photo when it cannot be read (``NotAFundusError``: it holds no fundus).
    """
    pixels, quality = network_input(source, cache_size, image_size, enhance)
    return as_chw_tensor(pixels), quality


def photo_input(source: PhotoSource, cache_size: int, image_size: int, enhance: str = "none") -> torch.Tensor:
    """``prepared_input``'s tensor."""
    return prepared_input(source, cache_size, image_size, enhance)[0]


def prepared_or_refused(source: PhotoSource, cache_size: int, image_size: int, enhance: str = "none",
                        name: str = "") -> tuple[torch.Tensor, np.ndarray, str]:
    """``prepare.network_input_or_refused`` with the image as a tensor: a photo with no fundus or
    that cannot be read is a black image, zero measures and the reason, never an error."""
    pixels, measures, reason = network_input_or_refused(source, cache_size, image_size, enhance, name)
    return as_chw_tensor(pixels), measures, reason


class RawPhotoDataset(Dataset):
    """New photos (files or bytes) prepared exactly as preprocess + the eval preset prepare training's.

    An item is ``prepared_or_refused``'s (image, measures, reason) with the item's index: a bad
    photo is a black image with its reason, and never stops the others.
    """

    def __init__(self, sources: list[PhotoSource], cache_size: int, image_size: int, enhance: str = "none") -> None:
        self.sources = sources
        self.cache_size = cache_size
        self.image_size = image_size
        self.enhance = enhance

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, np.ndarray, str]:
        image, measures, reason = prepared_or_refused(self.sources[index], self.cache_size, self.image_size,
                                                      self.enhance)
        return image, index, measures, reason
