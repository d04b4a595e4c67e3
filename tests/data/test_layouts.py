"""The public sets' layouts: ``read_layout`` reads back what the generator wrote in each (ids,
grades, gradable flags, patients, splits, photos), the copies keep each set's quirks, and every
layout's bad input stops with a message naming the file and line."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.cli import generate as generate_cli
from pipeline.cli import preprocess as preprocess_cli
from pipeline.data.eyepacs import read_split
from pipeline.data.layouts import COLUMNS, LAYOUTS, read_layout
from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, UNLABELLED, generate_layout
from pipeline.errors import ConfigError, DataError
from pipeline.tracking import tags
from tests.conftest import PROJECT_ROOT, tracking_store

SIZE = (128, 96)
TRAIN_PATIENTS, TEST_PATIENTS = 4, 2
READ_BACK = ["id", "grade", "gradable", "patient", "split"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Each layout's tiny copy (12 photos of 128x96), generated once for the module: root and record."""
    sets = {}
    for layout in LAYOUTS:
        root = tmp_path_factory.mktemp(layout)
        sets[layout] = root, generate_layout(root, layout=layout, train_patients=TRAIN_PATIENTS,
                                             test_patients=TEST_PATIENTS, size=SIZE,
                                             grade_shares=UNIFORM_GRADE_SHARES, seed=5)
    return sets


def copy_of(written: dict, layout: str, tmp_path: Path) -> Path:
    """A private copy of a layout's set that a test may damage."""
    return Path(shutil.copytree(written[layout][0], tmp_path / layout))


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("id").reset_index(drop=True)


# --- Reading back what was written --------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_back_what_the_generator_wrote(written, layout):
    root, record = written[layout]
    frame = read_layout(root, layout).frame
    assert tuple(frame.columns) == COLUMNS
    expected = by_id(record[record["split"] != UNLABELLED])
    pd.testing.assert_frame_equal(by_id(frame)[READ_BACK], expected[READ_BACK])
    assert by_id(frame)["path"].tolist() == [(root / file).resolve() for file in expected["file"]]


# What each set publishes: its splits, photos per patient, photo extensions, ungradable labels.
PUBLISHED = {
    "labs": ({"train", "test"}, 2, {".jpeg"}, False),
    "kaggle_eyepacs": ({"train", "test"}, 2, {".jpeg"}, False),
    "aptos2019": ({""}, 1, {".png"}, False),
    "messidor2": ({""}, 2, {".png", ".JPG"}, True),
    "idrid": ({"train", "test"}, 1, {".jpg"}, False),
    "ddr": ({"train", "val", "test"}, 1, {".jpg"}, True),
    "folder": ({"train", "test"}, 2, {".jpg"}, True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_copy_is_split_grouped_and_named_as_its_set(written, layout):
    splits, per_patient, extensions, ungradable = PUBLISHED[layout]
    frame = read_layout(written[layout][0], layout).frame
    assert set(frame["split"]) == splits
    assert set(frame.groupby("patient").size()) == {per_patient}
    assert {path.suffix for path in frame["path"]} == extensions
    assert (~frame["gradable"]).any() == ungradable
    assert (frame.loc[~frame["gradable"], "grade"] == -1).all()
    assert frame.loc[frame["gradable"], "grade"].between(0, 4).all()


def test_idrid_restarts_its_names_in_the_testing_set_so_those_ids_name_the_split(written):
    frame = read_layout(written["idrid"][0], "idrid").frame
    assert {"IDRiD_001", "test-IDRiD_001"} <= set(frame["id"])
    assert frame.loc[frame["split"] == "test", "id"].str.startswith("test-IDRiD_").all()
    assert not frame["id"].str.contains(r"[/\\]").any()


def test_idrid_csvs_keep_the_stray_space_and_the_empty_columns_and_rows(written):
    labels = written["idrid"][0] / "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"
    lines = labels.read_text().splitlines()
    assert lines[0].startswith("Image name,Retinopathy grade,Risk of macular edema ,")
    assert lines[1].endswith(",,") and set(lines[-1]) == {","}


def test_messidor2_grades_name_the_extension_jpgs_in_lower_case(written):
    root = written["messidor2"][0]
    names = pd.read_csv(root / "messidor_data.csv", dtype=str)["image_id"]
    assert names.str.endswith(".jpg").any() and names.str.endswith(".png").any()
    assert {path.suffix for path in (root / "IMAGES").iterdir()} == {".JPG", ".png"}
    assert (root / "messidor-2.csv").read_text().startswith("left;right\n")


def test_messidor2_ungradable_rows_have_blank_grades(written):
    table = pd.read_csv(written["messidor2"][0] / "messidor_data.csv", dtype=str, keep_default_na=False)
    ungradable = table[table["adjudicated_gradable"] == "0"]
    assert len(ungradable) and (ungradable[["adjudicated_dr_grade", "adjudicated_dme"]] == "").all().all()


def test_ddr_labels_ungradable_photos_5(written):
    lines = [line for name in ("train", "valid", "test")
             for line in (written["ddr"][0] / "DR_grading" / f"{name}.txt").read_text().splitlines()]
    assert any(line.endswith(" 5") for line in lines)


def test_aptos2019_test_photos_are_listed_without_grades_and_not_read(written):
    root, record = written["aptos2019"]
    assert pd.read_csv(root / "test.csv").columns.tolist() == ["id_code"]
    unlabelled = set(record.loc[record["split"] == UNLABELLED, "id"])
    assert len(unlabelled) == 2 * TEST_PATIENTS
    assert not unlabelled & set(read_layout(root, "aptos2019").frame["id"])


@pytest.mark.parametrize("layout", ["messidor2", "ddr", "folder"])
def test_photos_labelled_ungradable_are_dark_and_blurred(written, layout):
    frame = read_layout(written[layout][0], layout).frame

    def brightness_and_detail(path: Path) -> tuple[float, float]:
        grey = np.asarray(Image.open(path).convert("L"), dtype=float)
        return grey.mean(), np.abs(np.diff(grey, axis=1)).mean()

    bad = np.array([brightness_and_detail(path) for path in frame.loc[~frame["gradable"], "path"]])
    good = np.array([brightness_and_detail(path) for path in frame.loc[frame["gradable"], "path"]])
    assert (bad < 0.5 * good.min(axis=0)).all(), (bad, good.min(axis=0))


def test_labs_reads_as_read_split(written):
    root = written["labs"][0]
    frame = read_layout(root, "labs").frame
    for split in ("train", "test"):
        expected = read_split(root, split).assign(gradable=True, split=split)
        pd.testing.assert_frame_equal(frame[frame["split"] == split].reset_index(drop=True), expected[list(COLUMNS)])


def test_kaggle_eyepacs_without_the_solution_file_leaves_the_split_to_the_caller(written, tmp_path):
    root = copy_of(written, "kaggle_eyepacs", tmp_path)
    (root / "retinopathy_solution.csv").unlink()
    read = read_layout(root, "kaggle_eyepacs")
    record = written["kaggle_eyepacs"][1]
    assert sorted(read.frame["id"]) == sorted(record.loc[record["split"] == "train", "id"])
    assert set(read.frame["split"]) == {""} and read.notes["test_labels"] == []


def test_messidor2_without_the_pairs_file_is_one_photo_one_patient(written, tmp_path):
    root = copy_of(written, "messidor2", tmp_path)
    (root / "messidor-2.csv").unlink()
    frame = read_layout(root, "messidor2").frame
    assert (frame["patient"] == frame["id"]).all()


@pytest.mark.parametrize("layout, folder", [("idrid", "B. Disease Grading"), ("ddr", "DR_grading")])
def test_raw_dir_may_be_the_sets_own_folder(written, layout, folder):
    root = written[layout][0]
    pd.testing.assert_frame_equal(read_layout(root / folder, layout).frame, read_layout(root, layout).frame)


def test_folder_takes_absolute_paths(written, tmp_path):
    root = copy_of(written, "folder", tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    relative = lines[1].split(",")[0]
    lines[1] = f"{root / relative}{lines[1][len(relative):]}"
    write_lines(root / "labels.csv", lines)
    frame = read_layout(root, "folder").frame
    pd.testing.assert_frame_equal(frame[READ_BACK], read_layout(written["folder"][0], "folder").frame[READ_BACK])
    assert frame.loc[0, "path"] == (root / relative).resolve()


# --- Bad input -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelFile:
    """The label file a test damages in a layout, as the set names it, and the photos it names."""

    path: str  # relative to the set's folder
    photos: str  # the folder its names are looked up in
    sep: str = ","
    header: bool = True
    grade_column: int = 1
    top_grade: int = 4
    grade_path: str = ""  # the grades' own file, where not the same (the labs' layout)

    def lines(self, root: Path, grades: bool = False) -> list[str]:
        return (root / (self.grade_path if grades and self.grade_path else self.path)).read_text().splitlines()

    def first_graded_line(self, root: Path) -> int:
        """The first line (1-based) with a grade on the set's scale (neither blank nor DDR's 5)."""
        lines = self.lines(root, grades=True)
        for number, text in enumerate(lines[self.header:], 1 + self.header):
            if text.split(self.sep)[self.grade_column].strip() not in ("", "5"):
                return number
        raise AssertionError(f"no graded line in {self.path}")


LABEL_FILES = {
    "labs": LabelFile("train_img.csv", "images", header=False, grade_column=0, grade_path="train_label.csv"),
    "kaggle_eyepacs": LabelFile("trainLabels.csv", "train"),
    "aptos2019": LabelFile("train.csv", "train_images"),
    "messidor2": LabelFile("messidor_data.csv", "IMAGES"),
    "idrid": LabelFile("B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv",
                       "B. Disease Grading/1. Original Images/b. Testing Set"),
    "ddr": LabelFile("DR_grading/valid.txt", "DR_grading/valid", sep=" ", header=False, top_grade=5),
    "folder": LabelFile("labels.csv", "."),
}


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def named(path: str, line: int) -> str:
    """The start of a message naming ``path``'s line."""
    return rf"{re.escape(Path(path).name)} line {line}\b"


def remove_label_file(root: Path, layout: str) -> str:
    labels = LABEL_FILES[layout]
    (root / labels.path).unlink()
    return rf"missing (label|CSV) file: .*{re.escape(labels.path)}"


def rename_the_grade_column(root: Path, layout: str) -> str:
    """A header not the layout's (DDR's lists have none: one in front of them)."""
    labels = LABEL_FILES[layout]
    lines = labels.lines(root)
    if not labels.header:
        write_lines(root / labels.path, ["image grade", *lines])
        return rf"{named(labels.path, 1)}: 'image grade' is not a '<file> <grade>' line"
    fields = lines[0].split(labels.sep)
    expected, fields[labels.grade_column] = fields[labels.grade_column].strip(), "severity"
    write_lines(root / labels.path, [labels.sep.join(fields), *lines[1:]])
    return rf"{named(labels.path, 1)}: the header .*'severity'.* expected the columns .*'{re.escape(expected)}'"


def grade_off_the_scale(root: Path, layout: str) -> str:
    labels = LABEL_FILES[layout]
    number, lines = labels.first_graded_line(root), labels.lines(root, grades=True)
    fields = lines[number - 1].split(labels.sep)
    fields[labels.grade_column] = str(labels.top_grade + 2)
    lines[number - 1] = labels.sep.join(fields)
    write_lines(root / (labels.grade_path or labels.path), lines)
    return (rf"{named(labels.grade_path or labels.path, number)}: "
            rf"grade {labels.top_grade + 2} is outside 0-{labels.top_grade}")


def remove_a_photo(root: Path, layout: str) -> str:
    labels = LABEL_FILES[layout]
    number = 1 + labels.header
    name = labels.lines(root)[number - 1].split(labels.sep)[0]
    exact = root / labels.photos / name
    (exact if exact.is_file() else next((root / labels.photos).glob(f"{Path(name).stem}.*"))).unlink()
    return rf"{named(labels.path, number)}: .*{re.escape(Path(name).stem)}"


# The bad inputs every layout must name (the labs' header-less CSVs have no header to get wrong).
DAMAGES = {"missing label file": remove_label_file, "header not the layout's": rename_the_grade_column,
           "grade off the scale": grade_off_the_scale, "missing photo": remove_a_photo}
DAMAGED = [(layout, damage) for layout in LAYOUTS for damage in DAMAGES
           if not (layout == "labs" and damage == "header not the layout's")]


@pytest.mark.parametrize("layout, damage", DAMAGED)
def test_bad_input_names_file_line_and_value(written, tmp_path, layout, damage):
    root = copy_of(written, layout, tmp_path)
    message = DAMAGES[damage](root, layout)
    with pytest.raises(DataError, match=message):
        read_layout(root, layout)


@pytest.mark.parametrize("layout", [layout for layout in LAYOUTS if layout != "labs"])  # labs: test_eyepacs
def test_an_id_listed_twice_names_both_lines(written, tmp_path, layout):
    root, labels = copy_of(written, layout, tmp_path), LABEL_FILES[layout]
    lines, number = labels.lines(root), 1 + labels.header
    write_lines(root / labels.path, [*lines, lines[number - 1]])
    with pytest.raises(DataError, match=rf"is listed twice: .*{named(labels.path, number)} and "
                                        rf".*{named(labels.path, len(lines) + 1)}"):
        read_layout(root, layout)


@pytest.mark.parametrize("row, message", [
    ("IM000015.jpg,,,1", r"grade '' is not an integer 0-4"),
    ("IM000015.jpg,2,0,2", r"adjudicated_gradable '2' is not 0 or 1"),
])
def test_messidor2_grades_blank_only_when_ungradable(written, tmp_path, row, message):
    root = copy_of(written, "messidor2", tmp_path)
    lines = (root / "messidor_data.csv").read_text().splitlines()
    write_lines(root / "messidor_data.csv", [lines[0], row, *lines[1:]])
    with pytest.raises(DataError, match=rf"messidor_data\.csv line 2: {message}"):
        read_layout(root, "messidor2")


def test_messidor2_a_photo_in_two_examinations_is_refused(written, tmp_path):
    root = copy_of(written, "messidor2", tmp_path)
    lines = (root / "messidor-2.csv").read_text().splitlines()
    write_lines(root / "messidor-2.csv", [*lines, lines[1]])
    with pytest.raises(DataError, match=rf"messidor-2\.csv line {len(lines) + 1}: photo .* second examination"):
        read_layout(root, "messidor2")


@pytest.mark.parametrize("column, value, message", [
    (3, "validation", r"split 'validation' is not one of train, val, test"),
    (4, "maybe", r"gradable 'maybe' is not true or false"),
    (1, "", r"grade '' is not an integer 0-4"),  # blank only where ungradable
    (0, "photos/notes.txt", r"'photos/notes.txt' is not a photo file"),
])
def test_folder_values_outside_the_contract_name_line_and_value(written, tmp_path, column, value, message):
    root = copy_of(written, "folder", tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[4] = "true"
    fields[column] = value
    write_lines(root / "labels.csv", [lines[0], ",".join(fields), *lines[2:]])
    with pytest.raises(DataError, match=rf"labels\.csv line 2: {message}"):
        read_layout(root, "folder")


def test_unknown_layouts_and_a_photo_folder_the_layout_cannot_take_are_config_errors(written):
    with pytest.raises(ConfigError, match="layout='eyepacs'; expected one of labs, kaggle_eyepacs"):
        read_layout(written["labs"][0], "eyepacs")
    with pytest.raises(ConfigError, match="image_dir is for the layouts with one photo folder"):
        read_layout(written["idrid"][0], "idrid", image_dir="photos")


# --- The generator's entry point ----------------------------------------------------------------


def test_generate_writes_a_layout_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "aptos"
    assert generate_cli.main(["--out", str(out), "--layout", "aptos2019", "--train_patients", "2",
                              "--test_patients", "1", "--size", "128x96", "--workers", "1"]) == 0
    assert "synthetic aptos2019 layout" in capsys.readouterr().out
    assert len(read_layout(out, "aptos2019").frame) == 4


def test_generate_refuses_an_unknown_layout_before_writing(tmp_path):
    with pytest.raises(ValueError, match="layout must be one of labs, .*got 'eyepacs'"):
        generate_layout(tmp_path / "out", layout="eyepacs", train_patients=1, test_patients=1, size=SIZE)
    assert not (tmp_path / "out").exists()


def test_the_generate_entry_point_takes_a_layout():
    generate = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]["generate"]
    assert generate["parameters"]["layout"]["default"] == "labs"
    assert "--layout {layout}" in generate["command"]


# --- preprocess, through its entry point -------------------------------------------------------


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded store for the module's entry-point runs (each test its own experiment)."""
    root = tmp_path_factory.mktemp("tracking")
    uri = tracking_store(root)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.chdir(root)  # the store's artifacts (./mlruns) land here
        mlflow.set_tracking_uri(uri)
        yield uri
    mlflow.set_tracking_uri(None)


def run_preprocess_cli(store: str, experiment: str, root: Path, layout: str, out: Path,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[int, Run]:
    """``preprocess`` on ``root`` as ``layout`` at 32 px, in an experiment of its own: its exit code and run."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    code = preprocess_cli.main(["--raw_dir", str(root), "--layout", layout, "--data_dir", str(out), "--image_size", "32",
                                "--num_workers", "1", "--val_fraction", "0.25"])
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return code, run


@pytest.mark.parametrize("layout", LAYOUTS)
def test_preprocess_reads_each_layout_as_the_generator_wrote_it(written, module_store, tmp_path, monkeypatch, layout):
    root, record = written[layout]
    code, run = run_preprocess_cli(module_store, f"read-{layout}", root, layout, tmp_path / "out", monkeypatch)
    assert code == 0 and run.info.status == "FINISHED" and run.data.params["layout"] == layout
    cache = next((tmp_path / "out").iterdir())
    manifest = pd.read_csv(cache / "manifest.csv", dtype={"id": str, "patient": str})
    metadata = json.loads((cache / "dataset.json").read_text())
    written_photos = record[record["split"] != UNLABELLED].set_index("id")
    made = manifest.set_index("id")
    assert sorted(made.index) == sorted(written_photos.index)
    for column in ("grade", "gradable", "patient"):
        assert made[column].to_dict() == written_photos.loc[made.index, column].to_dict(), column
    # Where the set ships a split, it is kept; the rest is ours, by whole patients.
    for split in ("test", "val"):
        ours = set(made.index[made["split"] == split])
        theirs = set(written_photos.index[written_photos["split"] == split])
        assert ours == theirs if theirs else (split == "val" or not (written_photos["split"] == "test").any())
    assert set(made.index[written_photos.loc[made.index, "split"] == "train"]) <= set(made.index[made["split"] != "test"])
    assert set(made["split"]) == {"train", "val", "test"}
    patients_in = made.groupby("patient")["split"].nunique()
    assert (patients_in == 1).all(), patients_in[patients_in > 1]
    assert metadata["layout"] == layout and metadata["role"] == "study"
    assert ("of the patients" in metadata["test_split"]) == (not (written_photos["split"] == "test").any())
    assert metadata["ungradable"] == {split: int((~made.loc[made["split"] == split, "gradable"]).sum())
                                      for split in ("train", "val", "test")}
    assert sum(metadata["ungradable"].values()) == int((~written_photos["gradable"]).sum())


def test_an_external_set_is_every_photo_a_test_photo(written, module_store, tmp_path, monkeypatch):
    root, record = written["messidor2"]
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "external")
    assert preprocess_cli.main(["--raw_dir", str(root), "--layout", "messidor2", "--role", "external", "--data_dir",
                                str(tmp_path / "out"), "--image_size", "32", "--num_workers", "1"]) == 0
    cache = next((tmp_path / "out").iterdir())
    manifest = pd.read_csv(cache / "manifest.csv")
    assert set(manifest["split"]) == {"test"} and len(manifest) == len(record)
    assert json.loads((cache / "dataset.json").read_text())["ungradable"]["test"] == int((~record["gradable"]).sum())


@pytest.mark.parametrize("layout, damage", DAMAGED)
def test_preprocess_exits_2_naming_the_bad_input_and_fails_its_run(written, module_store, tmp_path, monkeypatch, capsys,
                                                                   layout, damage):
    root = copy_of(written, layout, tmp_path)
    message = DAMAGES[damage](root, layout)
    code, run = run_preprocess_cli(module_store, f"{layout}-{damage}", root, layout, tmp_path / "out", monkeypatch)
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert run.info.status == "FAILED" and re.search(message, run.data.tags[tags.ERROR])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
