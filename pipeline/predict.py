"""Grades for new photos: a folder or an id CSV -> a CSV of grade, probabilities and referable flag."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.data.eyepacs import patient_of, read_image_list, resolve_image_dir
from pipeline.data.photos import PHOTO_EXTENSIONS, PhotoFolder
from pipeline.errors import ConfigError, DataError
from pipeline.grading import Grader


def list_inputs(source: str | Path) -> pd.DataFrame:
    """``id`` and ``path`` of every photo in a folder, or of every id in a CSV (images beside it)."""
    source = Path(source)
    if source.is_dir():
        photos = PhotoFolder(source)
        ids = photos.ids()
        if not ids:
            raise DataError(f"{source} holds no photos ({', '.join(f'.{ext}' for ext in PHOTO_EXTENSIONS)})")
        return pd.DataFrame({"id": ids, "path": [photos.find(image_id) for image_id in ids]})
    if source.is_file():
        return read_image_list(source, resolve_image_dir(source.parent))
    raise DataError(f"input {source} is neither a folder of photos nor an image-id CSV")


def predict_photos(grader: Grader, inputs: pd.DataFrame, *, batch_size: int = 32, num_workers: int = 0) -> pd.DataFrame:
    """``id`` and the grader's prediction columns for every photo of ``inputs`` (``list_inputs``).

    Photos named ``<patient>_left|right`` are one patient's two eyes: a grader that fuses eyes
    grades each with its fellow's help when both are among the inputs.
    """
    patients = inputs["id"].map(patient_of).to_numpy()
    frame = grader.grade_photos(list(inputs["path"]), patients=patients, batch_size=batch_size,
                                num_workers=num_workers)
    frame.insert(0, "id", inputs["id"].to_numpy())
    return frame


def check_output(output: str | Path) -> None:
    """Fails before any photo is graded when ``output`` cannot be written as a file."""
    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"output={str(output)!r} is a folder; name a CSV file, e.g. {output / 'predictions.csv'}")
    folder = output.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"output={str(output)!r} cannot be written: {folder} is not a writable folder")
    if output.exists() and not os.access(output, os.W_OK):
        raise ConfigError(f"output={str(output)!r} cannot be written: the file is read-only")


def write_predictions(frame: pd.DataFrame, output: str | Path) -> Path:
    """Writes the CSV through a temporary file, so a crash never leaves half a result behind."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    frame.to_csv(partial, index=False, float_format="%.6f")
    partial.replace(output)
    return output


