"""The README's claims that a test can check: each entry point's parameter table against MLproject,
the grade shares against the generator's."""

import re

import pytest
import yaml

from pipeline.data.synthetic import EYEPACS_GRADE_SHARES, shares_in_percent
from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
ENTRY_POINTS = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]


def parameter_table(entry_point: str) -> list[tuple[str, str]]:
    """(name, default) of each row of the table under the heading ``#### `entry_point```."""
    section = README.split(f"\n#### `{entry_point}`\n", 1)[1].strip().split("\n\n", 1)[0]
    rows = [re.match(r"\| `(\w+)` \| `([^`]*)` \| (.+) \|$", line) for line in section.splitlines()[2:]]
    assert all(rows), section
    return [(row.group(1), row.group(2)) for row in rows]


def written_default(value) -> str:
    return str(int(value) if isinstance(value, float) and value.is_integer() else value)


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_each_entry_point_has_a_table_of_its_parameters_with_mlprojects_defaults(entry_point):
    declared = ENTRY_POINTS[entry_point]["parameters"]
    expected = [(name, '""' if spec.get("default", "") == "" else written_default(spec["default"]))
                for name, spec in declared.items()]
    assert parameter_table(entry_point) == expected


def test_the_eyepacs_grade_shares_are_written_one_way():
    written = shares_in_percent(EYEPACS_GRADE_SHARES)
    assert written == "73.5/7/15/2.5/2 %"
    shares = re.findall(r"\b7\d(?:\.\d)?/\d+(?:\.\d)?/\d+/[\d.]+/[\d.]+ ?%", README)
    assert shares and set(shares) == {written}, shares
