"""Raw EyePACS layout -> processed dataset: fundus crops at one size, a manifest and a patient split.

The processed folder is complete or absent: it is built under a temporary name and renamed into
place at the end, so an interrupted preprocess never leaves a dataset later steps would accept.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, UnidentifiedImageError
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from pipeline.catalog import ENHANCEMENTS, NUM_GRADES
from pipeline.data.eyepacs import SPLITS, SYNTHETIC_MARKER, read_split
from pipeline.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SKIPPED = "skipped_images.csv"
METADATA = "dataset.json"
PROCESSED_SPLITS = ("train", "val", "test")  # the manifest's split column: train's patients split off val
FORMAT_VERSION = 1
CACHE_JPEG_QUALITY = 95  # q95 decodes ~60x faster than the raw photos and keeps lesion detail
_FUNDUS_THRESHOLD = 0.1  # share of the bright end of the histogram that still counts as fundus
# Ben Graham's recipe, in units of the fundus radius: the blur's sigma, and the circle kept (his
# rim mask hides the disc edge, where the local average mixes in the black background).
_BEN_GRAHAM_SIGMA = 1 / 30
_BEN_GRAHAM_RIM = 0.9


@dataclass(frozen=True)
class ImageJob:
    source: Path
    target: Path
    image_size: int
    reuse: Path | None = None  # a still-valid output of an earlier run
    skip_bad: bool = False  # report a bad photo instead of failing
    enhance: str = "none"


def cache_dir(data_dir: str | Path, image_size: int, enhance: str = "none") -> Path:
    """One cache per size and enhancement, so a new ``image_size`` or ``enhance`` never overwrites
    another's images: ``<size>px``, or ``<size>px-<enhance>``."""
    return Path(data_dir) / (f"{image_size}px" if enhance == "none" else f"{image_size}px-{enhance}")


# A photo as a file, or as the bytes of one (a photo posted to the served model).
PhotoSource = Path | bytes


def _describe(source: PhotoSource) -> str:
    return f"image {source}" if isinstance(source, Path) else "the photo"


def _open(source: PhotoSource) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def load_rgb(source: PhotoSource, min_side: int | None = None) -> Image.Image:
    """Decodes an image as RGB, at a reduced JPEG scale that keeps both sides >= ``min_side``.

    Greyscale, CMYK and palette images (and PNG content behind a .jpeg name) are converted.
    Raises DataError naming the file when it is not a readable, complete image.
    """
    return _decode(source, None if min_side is None else (min_side, min_side))[0]


def _decode(source: PhotoSource, at_least: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    """``load_rgb`` at the smallest JPEG scale that keeps the sides >= ``at_least``; also the photo's own size."""
    try:
        with _open(source) as img:
            source_size = img.size  # read before draft() shrinks it
            if at_least is not None:
                # DCT-domain downscaling: skips most of the decode cost of a 10 MP photo.
                img.draft("RGB", at_least)
            img.load()
            # convert() copies even an RGB image; the cache is read every epoch, so skip the copy.
            return (img if img.mode == "RGB" else img.convert("RGB")), source_size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{_describe(source)} is corrupt, truncated or not an image: {exc}") from None


def fundus_box(img: Image.Image) -> tuple[int, int, int, int]:
    """The square (left, top, right, bottom) around the round fundus, which may extend past the photo."""
    grey = img.convert("L")
    # The 99th percentile of the grey levels read off the 256-bin histogram: no sort of the pixels
    # and no float copy of the image (np.percentile cost as much as the reduced decode).
    cumulative = np.cumsum(grey.histogram())
    rank = int(0.99 * (cumulative[-1] - 1))  # of the 99th percentile among the sorted pixels
    p99 = int(np.searchsorted(cumulative, rank, side="right"))
    level = max(5.0, _FUNDUS_THRESHOLD * p99)
    mask = np.asarray(grey) > level
    # Ignore speckle and burnt-in text: a fundus row or column has a real share of bright pixels.
    rows = np.flatnonzero(np.count_nonzero(mask, axis=1) > 0.02 * grey.width)
    cols = np.flatnonzero(np.count_nonzero(mask, axis=0) > 0.02 * grey.height)
    if rows.size == 0 or cols.size == 0:
        raise DataError("no fundus found: the image is (almost) entirely black")
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # A fundus clipped at the top and bottom of the frame is still round: its width is the diameter.
    side = max(bottom - top, right - left)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    return x0, y0, x0 + side, y0 + side


def crop_and_resize(source: PhotoSource, image_size: int) -> tuple[Image.Image, tuple[int, int]]:
    """The fundus of ``source`` cropped square (black padding) and resized; also the source size."""
    img, source_size = _decode(source, (image_size, image_size))
    box = _fundus_box_of(source, img)
    side = box[2] - box[0]
    if side < image_size and img.size != source_size:
        # The reduced decode left the disc smaller than the target (a fundus small in its frame):
        # decode again at the smallest scale that keeps the disc >= image_size.
        scale = image_size / side
        img, _ = _decode(source, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        box = _fundus_box_of(source, img)
    fundus = img.crop(box)
    return fundus.resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0), source_size


def _fundus_box_of(source: PhotoSource, img: Image.Image) -> tuple[int, int, int, int]:
    try:
        return fundus_box(img)
    except DataError as exc:
        raise DataError(f"{_describe(source)}: {exc}") from None


def ben_graham(img: Image.Image) -> Image.Image:
    """Ben Graham's preprocessing (Kaggle DR 2015) of a square fundus crop whose disc fills it.

    Subtracts the local average colour, ``4 * img - 4 * blur(img, sigma = radius / 30) + 128``,
    which evens out lighting and pigment and leaves lesions and vessels on a grey field; pixels
    outside 0.9 of the radius become black.
    """
    radius = img.width / 2  # the crop scales every disc to the same radius: the image's half side
    blurred = img.filter(ImageFilter.GaussianBlur(radius * _BEN_GRAHAM_SIGMA))
    pixels = np.asarray(img, dtype=np.int16)
    out = np.clip(4 * pixels - 4 * np.asarray(blurred, dtype=np.int16) + 128, 0, 255).astype(np.uint8)
    # Distances from pixel centres to the centre of the image.
    yy, xx = np.ogrid[:img.height, :img.width]
    outside = (xx + 0.5 - img.width / 2) ** 2 + (yy + 0.5 - img.height / 2) ** 2 > (_BEN_GRAHAM_RIM * radius) ** 2
    out[outside] = 0
    return Image.fromarray(out)


def cache_image(source: PhotoSource, cache_size: int, enhance: str = "none") -> tuple[bytes, tuple[int, int]]:
    """What the processed cache holds for a photo: the JPEG file bytes of its cropped, resized
    (and with ``enhance``, enhanced) fundus.

    The one place a photo is prepared: preprocess writes these bytes, and predict and the served
    model prepare a new photo with this same function, so all of them see the same pixels.
    Also returns the photo's own size.
    """
    if enhance not in ENHANCEMENTS:
        raise ValueError(f"enhance={enhance!r} is not supported; choose one of {', '.join(ENHANCEMENTS)}")
    fundus, source_size = crop_and_resize(source, cache_size)
    if enhance == "ben_graham":
        fundus = ben_graham(fundus)
    buffer = io.BytesIO()
    fundus.save(buffer, format="JPEG", quality=CACHE_JPEG_QUALITY)
    return buffer.getvalue(), source_size


def _process(job: ImageJob) -> tuple[int, int] | str | None:
    """Writes one output; returns the source size, None when an earlier output was reused, or
    (with ``skip_bad``) the reason a bad photo was left out."""
    if job.skip_bad:
        try:
            return _process(dataclasses.replace(job, skip_bad=False))
        except DataError as exc:
            return str(exc)
    if job.reuse is not None:
        try:
            os.link(job.reuse, job.target)  # same file system: no copy, and the old folder can go
        except OSError:
            shutil.copy2(job.reuse, job.target)
        return None
    jpeg, source_size = cache_image(job.source, job.image_size, job.enhance)
    job.target.write_bytes(jpeg)
    return source_size


def split_by_patient(frame: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: whole patients, stratified by grade, seeded."""
    n_splits = max(2, round(1 / val_fraction))
    n_patients = frame["patient"].nunique()
    if n_patients < n_splits:
        raise DataError(
            f"the training set has {n_patients} patients, too few for val_fraction={val_fraction} "
            f"(needs at least {n_splits})"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Rare grades with fewer members than folds are expected on small data sets.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, val_rows = next(splitter.split(np.zeros(len(frame)), frame["grade"], groups=frame["patient"]))
    is_val = np.zeros(len(frame), dtype=bool)
    is_val[val_rows] = True
    return is_val


def read_raw_dataset(raw_dir: str | Path, image_dir: str, val_fraction: float, seed: int) -> pd.DataFrame:
    """Both splits of the raw layout in one frame, with the ``split`` column train | val | test."""
    frames = []
    for split in SPLITS:
        frame = read_split(raw_dir, split, image_dir)
        frame["split"] = split
        if split == "train":
            frame.loc[split_by_patient(frame, val_fraction, seed), "split"] = "val"
        frames.append(frame)
    dataset = pd.concat(frames, ignore_index=True)
    shared = set(dataset.loc[dataset["split"] == "test", "patient"]) & set(dataset.loc[dataset["split"] != "test", "patient"])
    if shared:
        log.warning("%d patient(s) have eyes in both train and test CSVs, e.g. %s", len(shared), sorted(shared)[0])
    return dataset


def _source_stamp(frame: pd.DataFrame) -> pd.DataFrame:
    stats = [Path(path).stat() for path in frame["path"]]
    return frame.assign(source=[str(p) for p in frame["path"]], source_bytes=[st.st_size for st in stats],
                        source_mtime_ns=[st.st_mtime_ns for st in stats])


def _reusable(dataset: pd.DataFrame, previous_dir: Path) -> list[tuple[Path, tuple[int, int]] | None]:
    """Earlier outputs whose source file is unchanged (same path, size and modification time),
    with the source photo's size the earlier run recorded."""
    manifest = previous_dir / MANIFEST
    if not manifest.is_file():
        return [None] * len(dataset)
    previous = pd.read_csv(manifest, dtype={"id": str, "patient": str, "source": str}).set_index("id")
    if not {"source", "source_bytes", "source_mtime_ns", "source_width", "source_height"} <= set(previous.columns):
        return [None] * len(dataset)
    reuse: list[tuple[Path, tuple[int, int]] | None] = []
    for row in dataset.itertuples():
        old = previous.loc[row.id] if row.id in previous.index else None
        output = previous_dir / row.file
        unchanged = (old is not None and old["source"] == row.source and int(old["source_bytes"]) == row.source_bytes
                     and int(old["source_mtime_ns"]) == row.source_mtime_ns and output.is_file())
        reuse.append((output, (int(old["source_width"]), int(old["source_height"]))) if unchanged else None)
    return reuse


def preprocess(raw_dir: str | Path, data_dir: str | Path, *, image_size: int = 512, image_dir: str = "",
               val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0, on_bad_image: str = "error",
               max_bad_fraction: float = 0.01, enhance: str = "none") -> dict[str, object]:
    """Builds the processed dataset at ``cache_dir(data_dir, image_size, enhance)`` and returns a
    summary for tracking.

    Re-running reuses every output whose source photo is unchanged; the split and manifest are
    always recomputed (cheap), so a new ``val_fraction`` or ``seed`` takes effect.

    Args:
        num_workers: processes that decode images; 0 uses one per CPU core.
        on_bad_image: ``error`` stops at the first corrupt photo; ``skip`` leaves such photos out,
            lists them in ``skipped_images.csv`` and the summary, and still fails when more than
            ``max_bad_fraction`` of the photos are bad.
        enhance: ``none`` or ``ben_graham`` (see ``ben_graham``), in a cache of its own.

    Returns:
        The dataset metadata also written to ``dataset.json`` (counts per split and grade, ...).
    """
    started = time.perf_counter()
    target = cache_dir(data_dir, image_size, enhance)
    dataset = _source_stamp(read_raw_dataset(raw_dir, image_dir, val_fraction, seed))
    dataset["file"] = [f"images/{image_id}.jpeg" for image_id in dataset["id"]]
    reuse = _reusable(dataset, target)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    (staging / "images").mkdir(parents=True)
    try:
        jobs = [ImageJob(Path(src), staging / rel, image_size, old[0] if old else None, on_bad_image == "skip",
                         enhance)
                for src, rel, old in zip(dataset["path"], dataset["file"], reuse)]
        sizes = _run_jobs(jobs, num_workers or os.cpu_count() or 1)
        bad = [(image_id, reason) for image_id, reason in zip(dataset["id"], sizes) if isinstance(reason, str)]
        if len(bad) > max_bad_fraction * len(dataset):
            raise DataError(
                f"{len(bad)} of {len(dataset)} photos are bad, more than max_bad_fraction={max_bad_fraction}; "
                f"first: {bad[0][1]}")
        if bad:
            log.warning("left out %d bad photo(s), e.g. %s", len(bad), bad[0][1])
            keep = [not isinstance(size, str) for size in sizes]
            dataset, reuse = dataset[keep].reset_index(drop=True), [r for r, k in zip(reuse, keep) if k]
            sizes = [size for size in sizes if not isinstance(size, str)]
            pd.DataFrame(bad, columns=["id", "reason"]).to_csv(staging / SKIPPED, index=False)
        sizes = [size if size is not None else old[1] for size, old in zip(sizes, reuse)]
        dataset["source_width"] = [w for w, _ in sizes]
        dataset["source_height"] = [h for _, h in sizes]
        metadata = {
            "format_version": FORMAT_VERSION,
            "image_size": image_size,
            "enhance": enhance,
            "val_fraction": val_fraction,
            "seed": seed,
            "raw_dir": str(Path(raw_dir).resolve()),
            # The generator's own record, when the photos are synthetic (None for real photos).
            "synthetic": _synthetic_record(Path(raw_dir)),
            "counts": {split: _grade_counts(dataset[dataset["split"] == split]) for split in PROCESSED_SPLITS},
            "patients": {split: int(dataset.loc[dataset["split"] == split, "patient"].nunique()) for split in PROCESSED_SPLITS},
            "reused_images": sum(old is not None for old in reuse),
            "skipped_images": [{"id": image_id, "reason": reason} for image_id, reason in bad],
        }
        columns = ["id", "grade", "patient", "split", "file", "source_width", "source_height",
                   "source", "source_bytes", "source_mtime_ns"]
        dataset[columns].to_csv(staging / MANIFEST, index=False)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2))
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    metadata["seconds"] = round(time.perf_counter() - started, 2)
    metadata["dataset_dir"] = str(target)
    log.info("processed %d images (%d reused) into %s in %.1f s", len(dataset), metadata["reused_images"], target,
             metadata["seconds"])
    return metadata


def _synthetic_record(raw_dir: Path) -> dict | None:
    marker = raw_dir / SYNTHETIC_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _grade_counts(frame: pd.DataFrame) -> list[int]:
    return [int((frame["grade"] == grade).sum()) for grade in range(NUM_GRADES)]


def _run_jobs(jobs: list[ImageJob], workers: int) -> list[tuple[int, int] | None]:
    progress = dict(total=len(jobs), desc="preprocess", unit="img", disable=None)
    if workers <= 1 or all(job.reuse is not None for job in jobs):
        return [_process(job) for job in tqdm(jobs, **progress)]
    # At least 8 chunks per worker, so none idles while another finishes a long last chunk; a
    # photo (~25 ms) costs far more than handing it over.
    chunksize = max(1, min(8, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_process, jobs, chunksize=chunksize), **progress))


def _replace_dir(staging: Path, target: Path) -> None:
    """Swaps the finished dataset into place; readers see the old one or the new one, never a mix.

    Reused images are hard links into the old folder, so deleting it afterwards loses nothing.
    """
    if target.exists():
        stale = target.parent / f".{target.name}.stale-{uuid.uuid4().hex[:8]}"
        target.rename(stale)
        staging.rename(target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        staging.rename(target)
