"""A raw set in one of the public layouts -> processed dataset: fundus crops at one size, a manifest
and a patient split.

The processed folder is complete or absent: it is built under a temporary name and renamed into
place at the end, so an interrupted preprocess never leaves a dataset later steps would accept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from tqdm import tqdm

from pipeline.catalog import NUM_GRADES
from pipeline.data.eyepacs import SYNTHETIC_MARKER
from pipeline.data.layouts import read_layout
from pipeline.data.fov import FIELD_COLUMNS
from pipeline.data.prepare import PreparedPhoto, blank_cache_image, cache_image, refusal_reason, warm_up
from pipeline.data.quality import QUALITY_MEASURES, PhotoQuality
from pipeline.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SKIPPED = "skipped_images.csv"
METADATA = "dataset.json"
PROCESSED_SPLITS = ("train", "val", "test")  # the manifest's split column: train's patients split off val
# 2: the field of view is fitted as a circle and everything outside it is black; the manifest
# records it (FIELD_COLUMNS: in the photo's own pixels, the centre, the radius and the cut edges,
# ``top,bottom`` or empty) and the photo's quality measures (QUALITY_MEASURES). Images of an older
# format are never reused.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class ImageJob:
    source: Path
    target: Path
    image_size: int
    reuse: Path | None = None  # a still-valid output of an earlier run
    skip_bad: bool = False  # report a bad photo instead of failing
    enhance: str = "none"
    # The set labels the photo ungradable: a photo the grader would refuse before its network (no
    # fundus, unreadable) is then no error but kept, refused, to score the grader's check on.
    labelled_ungradable: bool = False


@dataclass(frozen=True)
class Processed:
    """What the manifest records of a photo: its own size, its field of view (``FIELD_COLUMNS``)
    and its quality measures (``QUALITY_MEASURES``); or, for a labelled-ungradable photo the grader
    would refuse unseen, the reason (``refused``) and nothing else (0 and NaN)."""

    source_size: tuple[int, int]
    fundus_x: float
    fundus_y: float
    fundus_radius: float
    clipped: str  # the cut edges, comma-separated
    quality: PhotoQuality
    refused: str = ""  # catalog.NOT_A_FUNDUS or catalog.UNREADABLE

    @classmethod
    def of(cls, prepared: PreparedPhoto) -> Processed:
        return cls(prepared.source_size, **prepared.field.record(), quality=prepared.quality)

    @classmethod
    def refusal(cls, reason: str) -> Processed:
        nan = float("nan")
        return cls((0, 0), nan, nan, nan, "", PhotoQuality(*[nan] * len(QUALITY_MEASURES)), reason)


def cache_dir(data_dir: str | Path, image_size: int, enhance: str = "none") -> Path:
    """One cache per size and enhancement, so a new ``image_size`` or ``enhance`` never overwrites
    another's images: ``<size>px``, or ``<size>px-<enhance>``."""
    return Path(data_dir) / (f"{image_size}px" if enhance == "none" else f"{image_size}px-{enhance}")


def _process(job: ImageJob) -> Processed | str | None:
    """Writes one output; returns what was found, None when an earlier output was reused, or
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
    try:
        prepared = cache_image(job.source, job.image_size, job.enhance)
    except DataError as exc:
        if not job.labelled_ungradable:
            raise
        log.info("kept as refused, the set labels it ungradable: %s", exc)
        job.target.write_bytes(blank_cache_image(job.image_size))
        return Processed.refusal(refusal_reason(exc))
    job.target.write_bytes(prepared.jpeg)
    return Processed.of(prepared)


def split_by_patient(frame: pd.DataFrame, fraction: float, seed: int, name: str = "val_fraction") -> np.ndarray:
    """Boolean mask of the rows split off: ``fraction`` of the patients, whole, stratified by
    grade, seeded (``name`` is the option the message names)."""
    n_splits = max(2, round(1 / fraction))
    n_patients = frame["patient"].nunique()
    if n_patients < n_splits:
        raise DataError(f"the set has {n_patients} patients to split, too few for {name}={fraction} "
                        f"(needs at least {n_splits})")
    if frame["grade"].value_counts().max() >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        # No grade has a photo for every fold, so there is nothing to stratify (a tiny set).
        log.warning("%s=%g: no grade has %d photos; the split is by patient, not stratified by grade",
                    name, fraction, n_splits)
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Rare grades with fewer members than folds are expected on small data sets.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, chosen = next(splitter.split(np.zeros(len(frame)), frame["grade"], groups=frame["patient"]))
    mask = np.zeros(len(frame), dtype=bool)
    mask[chosen] = True
    return mask


def read_raw_dataset(raw_dir: str | Path, image_dir: str, val_fraction: float, seed: int, *, layout: str = "labs",
                     test_fraction: float = 0.2, role: str = "study") -> tuple[pd.DataFrame, dict[str, object]]:
    """Every photo of the raw set in one frame, with the ``split`` column train | val | test, and
    a record of how the splits were made (for dataset.json).

    The set's own test (and validation) split where it ships one (``data.layouts``); else
    ``test_fraction`` of its patients, stratified and seeded. Validation is ``val_fraction`` of the
    training patients where the set has none of its own. An ``external`` set is all test.
    """
    read = read_layout(raw_dir, layout, image_dir)
    dataset = read.frame.reset_index(drop=True)
    record: dict[str, object] = {"layout": layout, "role": role, **read.notes}
    if role == "external":
        dataset["split"] = "test"
        record["test_split"] = "every photo: an external set, for validating a model trained elsewhere"
        return dataset, record
    undecided = (dataset["split"] == "").to_numpy()
    if undecided.any():
        chosen = split_by_patient(dataset[undecided], test_fraction, seed, "test_fraction")
        dataset.loc[undecided, "split"] = np.where(chosen, "test", "train")
        record["test_split"] = f"{test_fraction:g} of the patients (whole, stratified by grade, seed {seed})"
    else:
        record["test_split"] = "the set's own"
    if (dataset["split"] == "val").any():
        record["val_split"] = "the set's own"
    else:
        train = np.flatnonzero((dataset["split"] == "train").to_numpy())
        dataset.loc[train[split_by_patient(dataset.iloc[train], val_fraction, seed)], "split"] = "val"
        record["val_split"] = f"{val_fraction:g} of the training patients (whole, stratified by grade, seed {seed})"
    shared = set(dataset.loc[dataset["split"] == "test", "patient"]) & set(dataset.loc[dataset["split"] != "test", "patient"])
    if shared:
        log.warning("%d patient(s) have eyes in both the training and the test split, e.g. %s", len(shared),
                    sorted(shared)[0])
    return dataset, record


def _source_stamp(frame: pd.DataFrame) -> pd.DataFrame:
    stats = [Path(path).stat() for path in frame["path"]]
    return frame.assign(source=[str(p) for p in frame["path"]], source_bytes=[st.st_size for st in stats],
                        source_mtime_ns=[st.st_mtime_ns for st in stats])


def _reusable(dataset: pd.DataFrame, previous_dir: Path) -> list[tuple[Path, Processed] | None]:
    """Earlier outputs of this format whose source file is unchanged (same path, size and
    modification time), with what the earlier run recorded of the photo."""
    manifest, metadata = previous_dir / MANIFEST, previous_dir / METADATA
    if not manifest.is_file() or not metadata.is_file():
        return [None] * len(dataset)
    if json.loads(metadata.read_text()).get("format_version") != FORMAT_VERSION:
        return [None] * len(dataset)
    previous = pd.read_csv(manifest, dtype={"id": str, "patient": str, "source": str, "clipped": str},
                           keep_default_na=False).set_index("id")
    reuse: list[tuple[Path, Processed] | None] = []
    for row in dataset.itertuples():
        old = previous.loc[row.id] if row.id in previous.index else None
        output = previous_dir / row.file
        unchanged = (old is not None and old["source"] == row.source and int(old["source_bytes"]) == row.source_bytes
                     and int(old["source_mtime_ns"]) == row.source_mtime_ns and output.is_file())
        reuse.append((output, _recorded(old)) if unchanged else None)
    return reuse


def _recorded(row: pd.Series) -> Processed:
    """A manifest row's record of its photo."""
    if row.get("refused", ""):
        return Processed.refusal(str(row["refused"]))
    return Processed((int(row["source_width"]), int(row["source_height"])), float(row["fundus_x"]),
                     float(row["fundus_y"]), float(row["fundus_radius"]), str(row["clipped"]),
                     PhotoQuality(*(float(row[name]) for name in QUALITY_MEASURES)))


def _manifest_columns(records: list[Processed]) -> dict[str, list]:
    return {"source_width": [r.source_size[0] for r in records], "source_height": [r.source_size[1] for r in records],
            **{column: [getattr(r, column) for r in records] for column in FIELD_COLUMNS},
            **{name: [getattr(r.quality, name) for r in records] for name in QUALITY_MEASURES},
            "refused": [r.refused for r in records]}


def preprocess(raw_dir: str | Path, data_dir: str | Path, *, image_size: int = 512, image_dir: str = "",
               val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0, on_bad_image: str = "error",
               max_bad_fraction: float = 0.01, enhance: str = "none", layout: str = "labs",
               test_fraction: float = 0.2, role: str = "study") -> dict[str, object]:
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
        layout: the raw set's layout (``catalog.LAYOUTS``, read by ``data.layouts``).
        test_fraction: the share of patients made test where the set ships no test split.
        role: ``study`` (train / val / test), or ``external`` (every photo a test photo).

    Returns:
        The dataset metadata also written to ``dataset.json`` (counts per split and grade, ...).
    """
    started = time.perf_counter()
    target = cache_dir(data_dir, image_size, enhance)
    dataset, splits = read_raw_dataset(raw_dir, image_dir, val_fraction, seed, layout=layout,
                                       test_fraction=test_fraction, role=role)
    dataset = _source_stamp(dataset)
    dataset["file"] = [f"images/{image_id}.jpeg" for image_id in dataset["id"]]
    reuse = _reusable(dataset, target)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    (staging / "images").mkdir(parents=True)
    try:
        jobs = [ImageJob(Path(src), staging / rel, image_size, old[0] if old else None, on_bad_image == "skip",
                         enhance, labelled_ungradable=not gradable)
                for src, rel, old, gradable in zip(dataset["path"], dataset["file"], reuse, dataset["gradable"])]
        results = _run_jobs(jobs, num_workers or os.cpu_count() or 1)
        bad = [(image_id, reason) for image_id, reason in zip(dataset["id"], results) if isinstance(reason, str)]
        if len(bad) > max_bad_fraction * len(dataset):
            raise DataError(
                f"{len(bad)} of {len(dataset)} photos are bad, more than max_bad_fraction={max_bad_fraction}; "
                f"first: {bad[0][1]}")
        if bad:
            log.warning("left out %d bad photo(s), e.g. %s", len(bad), bad[0][1])
            keep = [not isinstance(result, str) for result in results]
            dataset, reuse = dataset[keep].reset_index(drop=True), [r for r, k in zip(reuse, keep) if k]
            results = [result for result in results if not isinstance(result, str)]
            pd.DataFrame(bad, columns=["id", "reason"]).to_csv(staging / SKIPPED, index=False)
        records = [result if result is not None else old[1] for result, old in zip(results, reuse)]
        for column, values in _manifest_columns(records).items():
            dataset[column] = values
        metadata = {
            "format_version": FORMAT_VERSION,
            "image_size": image_size,
            "enhance": enhance,
            "val_fraction": val_fraction,
            "seed": seed,
            "raw_dir": str(Path(raw_dir).resolve()),
            # The generator's own record, when the photos are synthetic (None for real photos).
            "synthetic": _synthetic_record(Path(raw_dir)),
            **splits,
            "counts": {split: _grade_counts(dataset[dataset["split"] == split]) for split in PROCESSED_SPLITS},
            # Photos the set labels ungradable: never trained on, kept to score the grader's check.
            "ungradable": {split: int((~dataset.loc[dataset["split"] == split, "gradable"]).sum())
                           for split in PROCESSED_SPLITS},
            "patients": {split: int(dataset.loc[dataset["split"] == split, "patient"].nunique()) for split in PROCESSED_SPLITS},
            "reused_images": sum(old is not None for old in reuse),
            "skipped_images": [{"id": image_id, "reason": reason} for image_id, reason in bad],
        }
        columns = ["id", "grade", "gradable", "patient", "split", "file", "source_width", "source_height", *FIELD_COLUMNS,
                   *QUALITY_MEASURES, "refused", "source", "source_bytes", "source_mtime_ns"]
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


def _run_jobs(jobs: list[ImageJob], workers: int) -> list[Processed | str | None]:
    """Every job's result, in order: reused outputs linked here, new photos prepared by ``workers``
    processes."""
    results: list[Processed | str | None] = [None] * len(jobs)
    fresh = [index for index, job in enumerate(jobs) if job.reuse is None]
    with tqdm(total=len(jobs), desc="preprocess", unit="img", disable=None) as progress:
        for index, job in enumerate(jobs):
            if job.reuse is not None:  # a hard link: far cheaper than handing it to a worker
                results[index] = _process(job)
                progress.update()
        if workers <= 1 or len(fresh) <= 1:
            done = map(_process, (jobs[index] for index in fresh))
            for index, result in zip(fresh, done):
                results[index] = result
                progress.update()
            return results
        # One photo at a time: a photo (~50 ms at 512 px) costs far more than handing it over, and
        # no worker idles at the end while another finishes a chunk of several. The workers fork
        # from this process once it has prepared a photo: none pays the first one's set-up again.
        warm_up()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for index, result in zip(fresh, pool.map(_process, [jobs[index] for index in fresh], chunksize=1)):
                results[index] = result
                progress.update()
    return results


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
