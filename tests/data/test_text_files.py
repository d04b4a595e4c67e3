"""Label files as spreadsheets save them are read; bytes no encoding reads are named."""

import pandas as pd
import pytest

from pipeline.data.eyepacs import read_split
from pipeline.data.text_files import read_text
from pipeline.errors import DataError

TEXT = "path,grade\nphotos/café_left.jpg,2\nphotos/œil_right.jpg,0\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252"])
def test_each_encoding_a_spreadsheet_writes_reads_as_the_same_text(encoding, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(TEXT.encode(encoding))
    assert read_text(path) == TEXT


def test_bytes_no_encoding_reads_are_an_error_naming_the_file(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"id,grade\n\x81\x8d\x8f,1\n")  # not UTF-8, and bytes Windows-1252 leaves undefined
    with pytest.raises(DataError, match=rf"{path} is not text in any encoding tried \(utf-8-sig, utf-16, utf-8, "
                                        r"cp1252\); save it as UTF-8"):
        read_text(path)


def test_a_false_utf16_mark_is_named(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xff\xfe" + b"a\x00\x00\xd8")  # a lone surrogate after the mark
    with pytest.raises(DataError, match=f"{path} starts with a utf-16 byte-order mark but is not utf-16 text"):
        read_text(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "cp1252"])
def test_the_labs_csvs_saved_by_a_spreadsheet_are_read(encoding, raw_copy):
    expected = read_split(raw_copy, "train")
    for name in ("train_img.csv", "train_label.csv"):
        path = raw_copy / name
        path.write_bytes(path.read_text().encode(encoding))
    pd.testing.assert_frame_equal(read_split(raw_copy, "train"), expected)
