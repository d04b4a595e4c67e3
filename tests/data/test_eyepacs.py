import pandas as pd
import pytest

from pipeline.data.eyepacs import patient_of, read_split
from pipeline.errors import DataError


def write_column(path, values):
    pd.Series(values).to_csv(path, header=False, index=False)


def read_column(path):
    return pd.read_csv(path, header=None, dtype=str)[0].tolist()


def test_reads_the_real_layout(raw_dir):
    frame = read_split(raw_dir, "train")
    ids = read_column(raw_dir / "train_img.csv")
    assert frame["id"].tolist() == ids
    assert frame["grade"].tolist() == [int(g) for g in read_column(raw_dir / "train_label.csv")]
    assert all(path.is_file() for path in frame["path"])
    assert frame["patient"].nunique() * 2 == len(frame)


def test_patient_of_strips_the_eye():
    assert patient_of("10003_left") == patient_of("10003_right") == "10003"
    assert patient_of("scan7") == "scan7"


def test_header_rows_are_detected_not_read_as_images(raw_copy):
    ids, grades = read_column(raw_copy / "train_img.csv"), read_column(raw_copy / "train_label.csv")
    write_column(raw_copy / "train_img.csv", ["image", *ids])
    write_column(raw_copy / "train_label.csv", ["level", *grades])
    frame = read_split(raw_copy, "train")
    assert frame["id"].tolist() == ids


def test_header_in_label_file_only(raw_copy):
    grades = read_column(raw_copy / "train_label.csv")
    write_column(raw_copy / "train_label.csv", ["grade", *grades])
    assert len(read_split(raw_copy, "train")) == len(grades)


def test_missing_csv_names_the_file(raw_copy):
    (raw_copy / "test_label.csv").unlink()
    with pytest.raises(DataError, match=r"missing CSV file: .*test_label\.csv"):
        read_split(raw_copy, "test")


def test_csvs_of_different_lengths(raw_copy):
    grades = read_column(raw_copy / "train_label.csv")
    write_column(raw_copy / "train_label.csv", grades[:-1])
    with pytest.raises(DataError, match=rf"train_img\.csv has {len(grades)} image ids but .*train_label\.csv has {len(grades) - 1} grades"):
        read_split(raw_copy, "train")


@pytest.mark.parametrize("bad, message", [("7", "grade 7 is outside 0-4"), ("-1", "grade -1 is outside 0-4"),
                                          ("2.5", "grade '2.5' is not an integer"), ("severe", "grade 'severe' is not an integer")])
def test_bad_grade_names_file_line_and_value(raw_copy, bad, message):
    grades = read_column(raw_copy / "train_label.csv")
    grades[3] = bad
    write_column(raw_copy / "train_label.csv", grades)
    with pytest.raises(DataError, match=rf"train_label\.csv line 4: {message}"):
        read_split(raw_copy, "train")


def test_image_id_without_file(raw_copy):
    ids = read_column(raw_copy / "test_img.csv")
    ids[2] = "99999_left"
    write_column(raw_copy / "test_img.csv", ids)
    with pytest.raises(DataError, match=r"test_img\.csv line 3: image id '99999_left' has no file .*99999_left\.jpeg"):
        read_split(raw_copy, "test")


@pytest.mark.parametrize("escaping", ["../x", "../../etc/passwd", "/etc/passwd", "sub/../../x", ".."])
def test_ids_cannot_reach_outside_the_image_folder(raw_copy, escaping):
    (raw_copy / "x.jpeg").write_bytes((raw_copy / "images" / f"{read_column(raw_copy / 'train_img.csv')[0]}.jpeg").read_bytes())
    ids = read_column(raw_copy / "train_img.csv")
    ids[0] = escaping
    write_column(raw_copy / "train_img.csv", ids)
    with pytest.raises(DataError, match=r"train_img\.csv line 1: image id .* (outside|not a plain file name)"):
        read_split(raw_copy, "train")


def test_duplicate_ids_are_rejected(raw_copy):
    ids = read_column(raw_copy / "train_img.csv")
    ids[1] = ids[0]
    write_column(raw_copy / "train_img.csv", ids)
    with pytest.raises(DataError, match=f"lists image id '{ids[0]}' more than once"):
        read_split(raw_copy, "train")


def test_images_directly_in_raw_dir_are_found(raw_copy):
    for image in (raw_copy / "images").iterdir():
        image.rename(raw_copy / image.name)
    (raw_copy / "images").rmdir()
    assert len(read_split(raw_copy, "test")) == len(read_column(raw_copy / "test_img.csv"))
