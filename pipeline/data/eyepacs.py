"""Reads the Kaggle EyePACS course-lab layout and rejects bad rows with their file and line.

Layout: ``<raw_dir>/{train,test}_img.csv`` and ``{train,test}_label.csv`` (one column each, no
header) plus one folder of photos (``<raw_dir>/images`` or ``raw_dir`` itself), an id's photo
being ``<id>.<ext>`` for any of ``photos.PHOTO_EXTENSIONS`` (``.jpeg`` in EyePACS itself).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd

from pipeline.catalog import NUM_GRADES
from pipeline.data.photos import PHOTO_EXTENSIONS, PhotoFolder
from pipeline.data.text_files import read_text
from pipeline.errors import DataError

SPLITS = ("train", "test")
# Written beside the CSVs by the synthetic generator, so every model trained on its photos says so.
SYNTHETIC_MARKER = "synthetic.json"
_HEADER_NAMES = {"image", "images", "id", "image_id", "img", "name", "filename", "file", "level", "label", "grade"}
_EYE_SUFFIX = re.compile(r"_(left|right)$", re.IGNORECASE)


def resolve_image_dir(raw_dir: Path, image_dir: str = "") -> Path:
    if image_dir:
        folder = Path(image_dir)
        return folder if folder.is_absolute() else raw_dir / folder
    nested = raw_dir / "images"
    return nested if nested.is_dir() else raw_dir


def patient_of(image_id: str) -> str:
    """``10003_left`` -> ``10003``: both eyes of a patient share it; other ids are their own patient."""
    return _EYE_SUFFIX.sub("", image_id)


def _read_column(path: Path) -> pd.Series:
    if not path.is_file():
        raise DataError(f"missing CSV file: {path}")
    try:
        frame = pd.read_csv(io.StringIO(read_text(path)), header=None, dtype=str, keep_default_na=False,
                            skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file is empty: {path}") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"CSV file {path} could not be parsed: {exc}") from None
    if frame.shape[1] != 1:
        raise DataError(f"CSV file {path} must have exactly one column, found {frame.shape[1]}")
    return frame[0].str.strip()


def _is_integer_text(text: str) -> bool:
    try:
        return float(text).is_integer()
    except ValueError:
        return False


def _has_id_header(ids: pd.Series, photos: PhotoFolder) -> bool:
    """A first id that names a column (``image``, ``id``, ...) and has no photo is a header row."""
    return bool(len(ids)) and ids.iloc[0].lower() in _HEADER_NAMES and photos.find(ids.iloc[0]) is None


def _drop_header(column: pd.Series, looks_like_header: bool) -> tuple[pd.Series, int]:
    """Returns the data rows and the file line number of the first one."""
    if len(column) and looks_like_header:
        return column.iloc[1:].reset_index(drop=True), 2
    return column, 1


def read_split(raw_dir: str | Path, split: str, image_dir: str = "") -> pd.DataFrame:
    """Reads one split's CSV pair into a frame of ``id``, ``grade``, ``patient`` and ``path``.

    Raises:
        DataError: naming the file and line of a missing CSV, length mismatch, bad grade,
            unsafe id or missing image.
    """
    raw_dir = Path(raw_dir)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    img_csv, label_csv = raw_dir / f"{split}_img.csv", raw_dir / f"{split}_label.csv"
    photos = PhotoFolder(resolve_image_dir(raw_dir, image_dir).resolve())
    ids, labels = _read_column(img_csv), _read_column(label_csv)

    # A header is a first id that names a column rather than a file; a first grade that is no
    # number is one too when it names a column or sits beside an id header, else it is bad data.
    id_header = _has_id_header(ids, photos)
    label_header = bool(len(labels)) and not _is_integer_text(labels.iloc[0]) and (
        labels.iloc[0].lower() in _HEADER_NAMES or id_header
    )
    ids, first_id_line = _drop_header(ids, id_header)
    labels, first_label_line = _drop_header(labels, label_header)

    if len(ids) != len(labels):
        raise DataError(
            f"{img_csv} has {len(ids)} image ids but {label_csv} has {len(labels)} grades; "
            "the two files must list the same images in the same order"
        )
    if len(ids) == 0:
        raise DataError(f"{img_csv} lists no images")

    grades = [_parse_grade(text, label_csv, first_label_line + row) for row, text in enumerate(labels)]
    paths = _existing_image_paths(ids, photos, img_csv, first_id_line)
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise DataError(f"{img_csv} lists image id {duplicated.iloc[0]!r} more than once")
    return pd.DataFrame({"id": ids, "grade": grades, "patient": [patient_of(i) for i in ids], "path": paths})


def read_image_list(csv_path: str | Path, image_dir: str | Path) -> pd.DataFrame:
    """An image-id CSV (one column, header optional) as ``id`` and checked ``path`` columns."""
    csv_path, photos = Path(csv_path), PhotoFolder(Path(image_dir).resolve())
    ids = _read_column(csv_path)
    ids, first_line = _drop_header(ids, _has_id_header(ids, photos))
    if len(ids) == 0:
        raise DataError(f"{csv_path} lists no image ids (a header alone)")
    return pd.DataFrame({"id": ids, "path": _existing_image_paths(ids, photos, csv_path, first_line)})


def _existing_image_paths(ids: pd.Series, photos: PhotoFolder, csv_path: Path, first_line: int) -> list[Path]:
    """The photo of every id, each a plain name inside the photo folder that exists (errors name the line)."""
    paths = []
    others = ", ".join(f".{ext}" for ext in PHOTO_EXTENSIONS[1:])
    for row, image_id in enumerate(ids):
        line = first_line + row
        _check_plain_id(image_id, photos.folder, csv_path, line)
        try:
            path = photos.find(image_id)
        except DataError as exc:
            raise DataError(f"{csv_path} line {line}: {exc}") from None
        if path is None:
            raise DataError(f"{csv_path} line {line}: image id {image_id!r} has no file "
                            f"{photos.folder / image_id}.{PHOTO_EXTENSIONS[0]} (nor {others})")
        paths.append(path)
    return paths


def _parse_grade(text: str, path: Path, line: int) -> int:
    if not _is_integer_text(text):
        raise DataError(f"{path} line {line}: grade {text!r} is not an integer 0-{NUM_GRADES - 1}")
    grade = int(float(text))
    if not 0 <= grade < NUM_GRADES:
        raise DataError(f"{path} line {line}: grade {grade} is outside 0-{NUM_GRADES - 1}")
    return grade


def _check_plain_id(image_id: str, root: Path, path: Path, line: int) -> None:
    """Refuses ids that would read outside the image folder (ids are only ever looked up in its
    listing, but say so rather than report a missing photo)."""
    if not image_id:
        raise DataError(f"{path} line {line}: empty image id")
    if "/" in image_id or "\\" in image_id or image_id in {".", ".."} or "\x00" in image_id:
        raise DataError(f"{path} line {line}: image id {image_id!r} is not a plain file name (it would reach outside {root})")
