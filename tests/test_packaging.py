"""One list of dependencies: pyproject.toml's, repeated for conda users in conda.yaml."""

import re
import tomllib

import yaml

from tests.conftest import PROJECT_ROOT


def test_conda_env_installs_exactly_the_declared_dependencies():
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    (pip_section,) = [entry["pip"] for entry in conda["dependencies"] if isinstance(entry, dict)]
    assert pip_section == declared
    python = [entry for entry in conda["dependencies"] if isinstance(entry, str) and entry.startswith("python=")]
    assert python == ["python=3.11"]


def test_the_served_model_pins_only_declared_dependencies():
    from pipeline.tracking.registry import SERVED_PACKAGES

    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", requirement, maxsplit=1)[0].lower() for requirement in declared}
    assert set(SERVED_PACKAGES) <= names
