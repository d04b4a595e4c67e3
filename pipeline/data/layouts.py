"""Readers for the public DR sets' own layouts, as a user has them after unpacking the download.

``read_layout(raw_dir, layout)`` reads one of ``LAYOUTS`` into one frame of ``COLUMNS``:

==========  ==========================================================================================
``id``      the photo's name without extension, unique in the frame (it names files later); where a
            set restarts its names in another split, that split prefixes them (IDRiD: ``test-IDRiD_001``)
``grade``   ICDR 0-4; ``UNGRADED`` (-1) where the set gives no grade because the photo is ungradable
``gradable``  False for photos the set marks ungradable (DDR grade 5, Messidor-2 adjudicated_gradable 0)
``patient`` both eyes of a patient share it where the set pairs them (EyePACS ``<patient>_left|right``,
            Messidor-2's examinations); else the photo's id (one photo, one patient)
``path``    the photo, found inside the folder the set keeps it in
``split``   ``train``, ``val`` or ``test`` where the set fixes it; ``""`` where it ships no labelled
            test split, for the caller to split
==========  ==========================================================================================

Each reader's docstring draws the tree it expects (``raw_dir`` is the unpacked download) and says
where its file names, headers and grade scales were checked. A bad input stops with a ``DataError``
naming the file and line: a missing label file, a header that is not the layout's, a grade off the
set's scale, a photo missing, an id listed twice.

The ``folder`` layout, for any other set: ``raw_dir/labels.csv`` with the header ``path,grade`` and,
optionally, the columns ``patient``, ``split`` and ``gradable`` in any order::

    path,grade,patient,split,gradable
    photos/p1_left.jpg,2,p1,train,true
    /data/clinic/p1_right.png,,p1,train,false

* ``path``: the photo, relative to ``raw_dir`` or absolute, with one of ``photos.PHOTO_EXTENSIONS``;
  its file name without the extension is its id, so two photos may not share one.
* ``grade``: 0-4; blank only where ``gradable`` is false (then ``grade`` is -1).
* ``patient``: photos sharing it are kept in one split; blank or absent: the photo alone.
* ``split``: ``train``, ``val``, ``test``, or blank / absent to leave it to the caller.
* ``gradable``: ``true``/``false`` (also ``1``/``0``, ``yes``/``no``); blank or absent: true.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from pipeline.catalog import LAYOUTS, NUM_GRADES
from pipeline.data.eyepacs import SPLITS as LABS_SPLITS
from pipeline.data.eyepacs import _check_plain_id, _is_integer_text, patient_of, read_split, resolve_image_dir
from pipeline.data.photos import PHOTO_EXTENSIONS, PhotoFolder, is_photo_file
from pipeline.data.text_files import read_text
from pipeline.errors import ConfigError, DataError

__all__ = ["COLUMNS", "LAYOUTS", "LayoutData", "UNGRADED", "read_layout"]

COLUMNS = ("id", "grade", "gradable", "patient", "path", "split")
SPLITS = ("train", "val", "test")  # a set's own splits; "" leaves the photo to the caller
UNGRADED = -1  # the grade of a photo the set marks ungradable
TOP_GRADE = NUM_GRADES - 1
# One folder of photos for every split: the layouts whose photo folder ``image_dir`` may replace.
# IDRiD and DDR keep each split in a folder of its own (IDRiD reuses names across them).
IMAGE_DIR_LAYOUTS = ("labs", "kaggle_eyepacs", "aptos2019", "messidor2")

# The sets' file names and headers, spelt as the sets spell them; the synthetic generator writes
# its copies of the sets from these.
EYEPACS_TRAIN_LABELS = "trainLabels.csv"
EYEPACS_TEST_LABELS = "retinopathy_solution.csv"  # published by Kaggle after the competition closed
EYEPACS_COLUMNS = ("image", "level")
EYEPACS_TEST_COLUMNS = ("image", "level", "Usage")  # Usage: Public | Private leaderboard
EYEPACS_FOLDERS = {"train": "train", "test": "test"}

APTOS_LABELS = "train.csv"
APTOS_COLUMNS = ("id_code", "diagnosis")
APTOS_IMAGES = "train_images"
APTOS_TEST_LIST = "test.csv"  # id_code only: the test grades were never published
APTOS_TEST_IMAGES = "test_images"

MESSIDOR_LABELS = "messidor_data.csv"  # Krause et al. 2018's adjudicated grades
MESSIDOR_COLUMNS = ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable")
MESSIDOR_PAIRS = "messidor-2.csv"  # ADCIS's examinations, one a row: left;right
MESSIDOR_PAIR_COLUMNS = ("left", "right")
MESSIDOR_PAIR_DELIMITER = ";"
MESSIDOR_IMAGES = "IMAGES"

IDRID_ROOT = "B. Disease Grading"
IDRID_LABELS = {"train": "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv",
                "test": "2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv"}
IDRID_IMAGES = {"train": "1. Original Images/a. Training Set", "test": "1. Original Images/b. Testing Set"}
IDRID_COLUMNS = ("Image name", "Retinopathy grade", "Risk of macular edema ")  # sic: the trailing space
IDRID_ID_PREFIX = {"train": "", "test": "test-"}  # both sets start at IDRiD_001

DDR_ROOT = "DR_grading"
DDR_SPLITS = {"train": "train", "valid": "val", "test": "test"}  # its list (and folder) -> our split
DDR_UNGRADABLE = 5

FOLDER_LABELS = "labels.csv"
FOLDER_COLUMNS = ("path", "grade")
FOLDER_OPTIONAL = ("patient", "split", "gradable")

_EYE_PAIRS = "<patient>_left and <patient>_right share a patient"
_ONE_A_PHOTO = "one photo, one patient (the set publishes no patient ids)"
_NO_UNGRADABLE = "none: every photo is graded 0-4"
_TRUE, _FALSE = ("true", "1", "yes", ""), ("false", "0", "no")


@dataclass(frozen=True)
class LayoutData:
    """A set read from its layout: the photos (``COLUMNS``) and the facts for ``dataset.json``
    (``label_files``, ``test_labels``, ``patient_groups``, ``ungradable_labels``)."""

    frame: pd.DataFrame
    notes: dict


class _Row(NamedTuple):
    id: str
    grade: int
    gradable: bool
    patient: str
    path: Path
    split: str
    where: str  # "<file> line <n>", for the message about an id listed twice


_Reader = Callable[[Path, str], tuple[list[_Row], dict]]


def read_layout(raw_dir: str | Path, layout: str, image_dir: str = "") -> LayoutData:
    """Reads the set unpacked in ``raw_dir`` as ``layout`` lays it out.

    Args:
        image_dir: the folder holding the photos, when not where the layout keeps them (relative to
            ``raw_dir`` or absolute); only for the layouts of ``IMAGE_DIR_LAYOUTS``.

    Raises:
        ConfigError: an unknown layout, or an ``image_dir`` the layout cannot take.
        DataError: naming the file and line (or value) of a bad input.
    """
    if layout not in _READERS:
        raise ConfigError(f"layout={layout!r}; expected one of {', '.join(LAYOUTS)}")
    if image_dir and layout not in IMAGE_DIR_LAYOUTS:
        raise ConfigError(f"image_dir is for the layouts with one photo folder ({', '.join(IMAGE_DIR_LAYOUTS)}); "
                          f"{layout} keeps each split's photos in a folder of its own")
    raw_dir = Path(raw_dir)
    rows, notes = _READERS[layout](raw_dir, image_dir)
    return LayoutData(_frame(rows, notes["label_files"]), notes)


def _frame(rows: list[_Row], label_files: list[str]) -> pd.DataFrame:
    if not rows:
        raise DataError(f"{', '.join(label_files)} list no photos")
    where: dict[str, str] = {}
    for row in rows:
        if row.id in where:
            raise DataError(f"image id {row.id!r} is listed twice: {where[row.id]} and {row.where}")
        where[row.id] = row.where
    frame = pd.DataFrame(rows, columns=_Row._fields)
    return frame[list(COLUMNS)].astype({"grade": int, "gradable": bool}).reset_index(drop=True)


def _notes(raw_dir: Path, label_files: Sequence[Path], test_labels: Sequence[Path], patient_groups: str,
           ungradable_labels: str) -> dict:
    def named(paths: Sequence[Path]) -> list[str]:
        return [str(path.relative_to(raw_dir)) for path in paths]

    return {"label_files": named(label_files), "test_labels": named(test_labels),
            "patient_groups": patient_groups, "ungradable_labels": ungradable_labels}


# --- Reading label files --------------------------------------------------------------------------


def _require_file(path: Path, layout: str) -> None:
    if not path.is_file():
        raise DataError(f"missing label file: {path} (the {layout} layout's labels)")


def _read_table(path: Path, layout: str, columns: Sequence[str], optional: Sequence[str] = (),
                delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    """The data rows of a label file with a header, each with its line number, by column name.

    Names and values are stripped (IDRiD's header has a stray space), and rows with no value
    (IDRiD ends in rows of empty fields) are passed over, as are columns not asked for.
    """
    _require_file(path, layout)
    try:
        with io.StringIO(read_text(path), newline="") as file:
            reader = csv.reader(file, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            if not {name.strip() for name in columns} <= set(header):
                raise DataError(f"{path} line 1: the header {header} is not the {layout} layout's; "
                                f"expected the columns {list(columns)}")
            wanted = [name.strip() for name in (*columns, *optional)]
            rows = []
            for fields in reader:
                if any(value.strip() for value in fields):
                    values = dict(zip(header, (value.strip() for value in fields)))
                    rows.append((reader.line_num, {name: values.get(name, "") for name in wanted}))
    except csv.Error as exc:
        raise DataError(f"{path} could not be read as a CSV file: {exc}") from None
    return rows


def _grade(text: str, path: Path, line: int, top: int = TOP_GRADE) -> int:
    if not _is_integer_text(text):
        raise DataError(f"{path} line {line}: grade {text!r} is not an integer 0-{top}")
    grade = int(float(text))
    if not 0 <= grade <= top:
        raise DataError(f"{path} line {line}: grade {grade} is outside 0-{top}")
    return grade


def _stem(name: str) -> str:
    """A photo's name without its extension (``IM000595.jpg`` -> ``IM000595``); other names as they are."""
    return Path(name).stem if is_photo_file(Path(name)) else name


def _photo_folder(folder: Path, layout: str) -> PhotoFolder:
    if not folder.is_dir():
        raise DataError(f"missing photo folder {folder} (where the {layout} layout keeps its photos)")
    return PhotoFolder(folder.resolve())


def _photo(photos: PhotoFolder, name: str, label_file: Path, line: int) -> Path:
    """The photo a label file names, with or without its extension, the extension in any case
    (Messidor-2's grades name ``IM000595.jpg`` for the file ``IM000595.JPG``)."""
    _check_plain_id(name, photos.folder, label_file, line)
    try:
        path = photos.find(_stem(name))
    except DataError as exc:
        raise DataError(f"{label_file} line {line}: {exc}") from None
    if path is None:
        raise DataError(f"{label_file} line {line}: no photo {name!r} in {photos.folder}")
    return path


def _graded_rows(label_file: Path, layout: str, columns: Sequence[str], photos: PhotoFolder, split: str,
                 id_prefix: str = "", patient: Callable[[str], str] | None = None) -> list[_Row]:
    """The rows of a label file whose first two columns are a photo's name and its grade 0-4."""
    name_column, grade_column = columns[0], columns[1]
    rows = []
    for line, row in _read_table(label_file, layout, columns):
        grade = _grade(row[grade_column], label_file, line)
        path = _photo(photos, row[name_column], label_file, line)
        image_id = id_prefix + _stem(row[name_column])
        rows.append(_Row(image_id, grade, True, patient(image_id) if patient else image_id, path, split,
                         f"{label_file} line {line}"))
    return rows


# --- The layouts ------------------------------------------------------------------------------------


def _read_labs(raw_dir: Path, image_dir: str) -> tuple[list[_Row], dict]:
    """The course labs' Kaggle EyePACS subset (see ``eyepacs``): four header-less CSVs, train and test::

        raw_dir/
          train_img.csv  train_label.csv  test_img.csv  test_label.csv
          images/10003_left.jpeg ...        (or the photos in raw_dir itself)
    """
    rows = []
    for split in LABS_SPLITS:
        where = str(raw_dir / f"{split}_img.csv")
        for photo in read_split(raw_dir, split, image_dir).itertuples(index=False):
            rows.append(_Row(photo.id, photo.grade, True, photo.patient, photo.path, split, where))
    files = [raw_dir / f"{split}_{kind}.csv" for split in LABS_SPLITS for kind in ("img", "label")]
    return rows, _notes(raw_dir, files, files[2:], _EYE_PAIRS, _NO_UNGRADABLE)


def _read_kaggle_eyepacs(raw_dir: Path, image_dir: str) -> tuple[list[_Row], dict]:
    """Kaggle's Diabetic Retinopathy Detection (EyePACS, 2015), as its files unpack::

        raw_dir/
          trainLabels.csv             image,level         10_left,0
          train/10_left.jpeg ...
          retinopathy_solution.csv    image,level,Usage   1_left,0,Private  (optional)
          test/1_left.jpeg ...

    ``retinopathy_solution.csv`` is the test set's grades, which Kaggle published after the
    competition closed; its Public and Private rows are all test. Without it, the training photos
    are left to the caller to split (``""``), so the set still gets a test split. ``image_dir``:
    one folder holding both folders' photos (their names differ). Checked against Kaggle's data
    page and public loaders that read both files (e.g. TensorFlow Datasets'
    ``diabetic_retinopathy_detection``).
    """
    labels, solution = raw_dir / EYEPACS_TRAIN_LABELS, raw_dir / EYEPACS_TEST_LABELS
    has_test = solution.is_file()

    def photos(split: str) -> PhotoFolder:
        return _photo_folder(resolve_image_dir(raw_dir, image_dir or EYEPACS_FOLDERS[split]), "kaggle_eyepacs")

    rows = _graded_rows(labels, "kaggle_eyepacs", EYEPACS_COLUMNS, photos("train"), "train" if has_test else "",
                        patient=patient_of)
    if has_test:
        rows += _graded_rows(solution, "kaggle_eyepacs", EYEPACS_TEST_COLUMNS, photos("test"), "test",
                             patient=patient_of)
    tests = [solution] if has_test else []
    return rows, _notes(raw_dir, [labels, *tests], tests, _EYE_PAIRS, _NO_UNGRADABLE)


def _read_aptos2019(raw_dir: Path, image_dir: str) -> tuple[list[_Row], dict]:
    """APTOS 2019 Blindness Detection (Kaggle), as its files unpack::

        raw_dir/
          train.csv                   id_code,diagnosis   000c1434d8d7,2
          train_images/000c1434d8d7.png ...
          test.csv  test_images/      (not read: the test grades were never published)

    Only the training photos are graded, so every photo is left to the caller to split (``""``).
    Checked against the competition's data page and Uncertainty Baselines' ``aptos`` loader.
    """
    labels = raw_dir / APTOS_LABELS
    photos = _photo_folder(resolve_image_dir(raw_dir, image_dir or APTOS_IMAGES), "aptos2019")
    rows = _graded_rows(labels, "aptos2019", APTOS_COLUMNS, photos, "")
    return rows, _notes(raw_dir, [labels], [], _ONE_A_PHOTO, _NO_UNGRADABLE)


def _read_messidor2(raw_dir: Path, image_dir: str) -> tuple[list[_Row], dict]:
    """Messidor-2 (ADCIS) with Krause et al. 2018's adjudicated grades (Kaggle, google-brain/messidor2-dr-grades)::

        raw_dir/
          messidor_data.csv   image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable
          messidor-2.csv      left;right  (optional: ADCIS's examinations, one a row)
          IMAGES/20051020_43808_0100_PP.png ... IM000595.JPG ...   (or images/, or raw_dir itself)

    ``adjudicated_gradable`` 0 marks an ungradable photo, whose grade is blank; a gradable one
    needs a grade 0-4. The grades name Messidor-Extension's photos ``.jpg``, the files are
    ``.JPG``: names match in any case. With ``messidor-2.csv`` the two photos of an examination
    share a patient; without it, one photo, one patient. The set fixes no split (``""``).
    """
    labels, pairs = raw_dir / MESSIDOR_LABELS, raw_dir / MESSIDOR_PAIRS
    nested = raw_dir / MESSIDOR_IMAGES
    folder = nested if not image_dir and nested.is_dir() else resolve_image_dir(raw_dir, image_dir)
    photos = _photo_folder(folder, "messidor2")
    exam_of = _messidor_exams(pairs) if pairs.is_file() else {}
    rows = []
    for line, row in _read_table(labels, "messidor2", MESSIDOR_COLUMNS):
        gradable = _messidor_gradable(row["adjudicated_gradable"], labels, line)
        grade = _grade(row["adjudicated_dr_grade"], labels, line) if gradable else UNGRADED
        path = _photo(photos, row["image_id"], labels, line)
        image_id = _stem(row["image_id"])
        rows.append(_Row(image_id, grade, gradable, exam_of.get(image_id, image_id), path, "",
                         f"{labels} line {line}"))
    groups = (f"the two photos of an examination of {MESSIDOR_PAIRS} share a patient (the left photo's id)"
              if pairs.is_file() else f"{_ONE_A_PHOTO}: no {MESSIDOR_PAIRS}")
    return rows, _notes(raw_dir, [labels, *([pairs] if pairs.is_file() else [])], [], groups,
                        "adjudicated_gradable 0 (blank grade): gradable false, grade -1")


def _messidor_gradable(text: str, path: Path, line: int) -> bool:
    if not _is_integer_text(text) or int(float(text)) not in (0, 1):
        raise DataError(f"{path} line {line}: adjudicated_gradable {text!r} is not 0 or 1")
    return bool(int(float(text)))


def _messidor_exams(path: Path) -> dict[str, str]:
    """Each photo's examination, named after its left photo, from ADCIS's ``messidor-2.csv``."""
    exam_of: dict[str, str] = {}
    for line, row in _read_table(path, "messidor2", MESSIDOR_PAIR_COLUMNS, delimiter=MESSIDOR_PAIR_DELIMITER):
        names = [name for name in (row["left"], row["right"]) if name]
        for name in names:
            if _stem(name) in exam_of:
                raise DataError(f"{path} line {line}: photo {name!r} is in a second examination")
            exam_of[_stem(name)] = _stem(names[0])
    return exam_of


def _read_idrid(raw_dir: Path, image_dir: str) -> tuple[list[_Row], dict]:
    """IDRiD's disease grading part (IEEE DataPort), as its zip unpacks (``raw_dir`` may also be the
    ``B. Disease Grading`` folder itself)::

        raw_dir/B. Disease Grading/
          1. Original Images/a. Training Set/IDRiD_001.jpg ... IDRiD_413.jpg
          1. Original Images/b. Testing Set/IDRiD_001.jpg ... IDRiD_103.jpg
          2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
          2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv

    The CSVs: ``Image name,Retinopathy grade,Risk of macular edema `` (sic), trailing empty
    columns and rows. The testing set restarts at ``IDRiD_001``, so its ids are ``test-IDRiD_001``.
    Training is train, testing is test; one photo, one patient. Checked against the set's paper
    (Porwal et al., Data 2018) and GDRBench's notes on it.
    """
    root = raw_dir if raw_dir.name == IDRID_ROOT else raw_dir / IDRID_ROOT
    rows = []
    for split in ("train", "test"):
        photos = _photo_folder(root / IDRID_IMAGES[split], "idrid")
        rows += _graded_rows(root / IDRID_LABELS[split], "idrid", IDRID_COLUMNS, photos, split, IDRID_ID_PREFIX[split])
    files = [root / IDRID_LABELS[split] for split in ("train", "test")]
    return rows, _notes(raw_dir, files, files[1:], f"{_ONE_A_PHOTO}; the testing photos' ids start "
                        f"{IDRID_ID_PREFIX['test']!r}", _NO_UNGRADABLE)


def _read_ddr(raw_dir: Path, image_dir: str) -> tuple[list[_Row], dict]:
    """DDR's grading part (Li et al. 2019, github.com/nkicsl/DDR-dataset), as it unpacks (``raw_dir``
    may also be the ``DR_grading`` folder itself)::

        raw_dir/DR_grading/
          train.txt  valid.txt  test.txt     one '<file> <grade>' a line, no header: 007-0004-000.jpg 2
          train/  valid/  test/              the photos

    Grades 0-4 are ICDR's; 5 marks an ungradable photo (gradable false, grade -1). train, valid
    and test are train, val and test; one photo, one patient.
    """
    root = raw_dir if raw_dir.name == DDR_ROOT else raw_dir / DDR_ROOT
    rows = []
    for name, split in DDR_SPLITS.items():
        rows += _ddr_rows(root / f"{name}.txt", _photo_folder(root / name, "ddr"), split)
    files = [root / f"{name}.txt" for name in DDR_SPLITS]
    return rows, _notes(raw_dir, files, files[2:], _ONE_A_PHOTO, f"grade {DDR_UNGRADABLE}: gradable false, grade -1")


def _ddr_rows(list_file: Path, photos: PhotoFolder, split: str) -> list[_Row]:
    _require_file(list_file, "ddr")
    rows = []
    with open(list_file, encoding="utf-8-sig") as file:
        for line, text in enumerate(file, 1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 2 or (line == 1 and not _is_integer_text(fields[-1])):
                raise DataError(f"{list_file} line {line}: {text.strip()!r} is not a '<file> <grade>' line "
                                "(the ddr layout's lists have no header)")
            grade = _grade(fields[1], list_file, line, top=DDR_UNGRADABLE)
            path = _photo(photos, fields[0], list_file, line)
            gradable = grade != DDR_UNGRADABLE
            rows.append(_Row(_stem(fields[0]), grade if gradable else UNGRADED, gradable, _stem(fields[0]), path,
                             split, f"{list_file} line {line}"))
    return rows


def _read_folder(raw_dir: Path, image_dir: str) -> tuple[list[_Row], dict]:
    """Any other set: ``raw_dir/labels.csv`` (the contract is in the module's docstring)."""
    labels = raw_dir / FOLDER_LABELS
    rows = []
    table = _read_table(labels, "folder", FOLDER_COLUMNS, FOLDER_OPTIONAL)
    for line, row in table:
        path = _folder_photo(raw_dir, row["path"], labels, line)
        gradable = _flag(row["gradable"], labels, line)
        grade = UNGRADED if not gradable and not row["grade"] else _grade(row["grade"], labels, line)
        split = row["split"]
        if split not in ("", *SPLITS):
            raise DataError(f"{labels} line {line}: split {split!r} is not one of {', '.join(SPLITS)} (or blank)")
        rows.append(_Row(path.stem, grade, gradable, row["patient"] or path.stem, path, split,
                         f"{labels} line {line}"))
    groups = "the patient column's" if any(row["patient"] for _, row in table) else "one photo, one patient"
    return rows, _notes(raw_dir, [labels], [], groups, "gradable false: kept, grade -1 where blank")


def _folder_photo(raw_dir: Path, text: str, labels: Path, line: int) -> Path:
    if not text:
        raise DataError(f"{labels} line {line}: empty path")
    path = Path(text) if Path(text).is_absolute() else raw_dir / text
    if not is_photo_file(path):
        raise DataError(f"{labels} line {line}: {text!r} is not a photo file (extensions: "
                        f"{', '.join(PHOTO_EXTENSIONS)})")
    if not path.is_file():
        raise DataError(f"{labels} line {line}: no photo {path}")
    return path.resolve()


def _flag(text: str, path: Path, line: int) -> bool:
    if text.lower() not in (*_TRUE, *_FALSE):
        raise DataError(f"{path} line {line}: gradable {text!r} is not true or false")
    return text.lower() in _TRUE


_READERS: dict[str, _Reader] = {
    "labs": _read_labs,
    "kaggle_eyepacs": _read_kaggle_eyepacs,
    "aptos2019": _read_aptos2019,
    "messidor2": _read_messidor2,
    "idrid": _read_idrid,
    "ddr": _read_ddr,
    "folder": _read_folder,
}
