"""Reads the Kaggle EyePACS course-lab layout and rejects bad rows with their file and line.

Layout: ``<raw_dir>/{train,test}_img.csv`` and ``{train,test}_label.csv`` (one column each, no
header) plus one folder of ``<id>.jpeg`` images (``<raw_dir>/images`` or ``raw_dir`` itself).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipeline.catalog import NUM_GRADES
from pipeline.errors import DataError

SPLITS = ("train", "test")
IMAGE_SUFFIX = ".jpeg"
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
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, skip_blank_lines=True)
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


def _has_id_header(ids: pd.Series, images: Path) -> bool:
    """A first id that names a column (``image``, ``id``, ...) and is no file is a header row."""
    return bool(len(ids)) and ids.iloc[0].lower() in _HEADER_NAMES and not (images / f"{ids.iloc[0]}{IMAGE_SUFFIX}").is_file()


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
    images = resolve_image_dir(raw_dir, image_dir)
    ids, labels = _read_column(img_csv), _read_column(label_csv)

    # A header is a first id that names a column rather than a file; a first grade that is no
    # number is one too when it names a column or sits beside an id header, else it is bad data.
    id_header = _has_id_header(ids, images)
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
    paths = _existing_image_paths(ids, images, img_csv, first_id_line)
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise DataError(f"{img_csv} lists image id {duplicated.iloc[0]!r} more than once")
    return pd.DataFrame({"id": ids, "grade": grades, "patient": [patient_of(i) for i in ids], "path": paths})


def read_image_list(csv_path: str | Path, image_dir: str | Path) -> pd.DataFrame:
    """An image-id CSV (one column, header optional) as ``id`` and checked ``path`` columns."""
    csv_path, images = Path(csv_path), Path(image_dir)
    ids = _read_column(csv_path)
    ids, first_line = _drop_header(ids, _has_id_header(ids, images))
    return pd.DataFrame({"id": ids, "path": _existing_image_paths(ids, images, csv_path, first_line)})


def _existing_image_paths(ids: pd.Series, images: Path, csv_path: Path, first_line: int) -> list[Path]:
    """The photo of every id, each checked to stay inside ``images`` and to exist (errors name the line)."""
    root = images.resolve()
    paths = [_safe_image_path(image_id, root, csv_path, first_line + row) for row, image_id in enumerate(ids)]
    for row, (image_id, path) in enumerate(zip(ids, paths)):
        if not path.is_file():
            raise DataError(f"{csv_path} line {first_line + row}: image id {image_id!r} has no file {path}")
    return paths


def _parse_grade(text: str, path: Path, line: int) -> int:
    if not _is_integer_text(text):
        raise DataError(f"{path} line {line}: grade {text!r} is not an integer 0-{NUM_GRADES - 1}")
    grade = int(float(text))
    if not 0 <= grade < NUM_GRADES:
        raise DataError(f"{path} line {line}: grade {grade} is outside 0-{NUM_GRADES - 1}")
    return grade


def _safe_image_path(image_id: str, root: Path, path: Path, line: int) -> Path:
    """Resolves an id to its file, refusing ids that would read outside the image folder."""
    if not image_id:
        raise DataError(f"{path} line {line}: empty image id")
    if "/" in image_id or "\\" in image_id or image_id in {".", ".."} or "\x00" in image_id:
        raise DataError(f"{path} line {line}: image id {image_id!r} is not a plain file name (it would reach outside {root})")
    candidate = (root / f"{image_id}{IMAGE_SUFFIX}").resolve()
    if candidate.parent != root:
        raise DataError(f"{path} line {line}: image id {image_id!r} resolves outside the image folder {root}")
    return candidate
