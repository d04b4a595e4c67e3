"""The package's shape: MLflow only in tracking/, matplotlib only in figures.py, one step module per
entry point, and the loops, metrics and figures importable without MLflow."""

import ast
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, subprocess_env

PACKAGE = PROJECT_ROOT / "pipeline"
# The entry point `main` runs the whole study; its body is steps/study.py.
STEP_OF_ENTRY_POINT = {"main": "study"}


def imported_roots(path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def modules() -> list:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("library, home", [("mlflow", "tracking/"), ("matplotlib", "figures.py")])
def test_a_library_is_imported_in_its_home_only(library, home):
    importers = {str(path.relative_to(PACKAGE)) for path in modules() if library in imported_roots(path)}
    assert importers, f"nobody imports {library}?"
    assert all(name.startswith(home) for name in importers), sorted(importers)


def test_loops_metrics_and_figures_load_without_mlflow():
    code = ("import sys; import pipeline.engine, pipeline.metrics, pipeline.figures, pipeline.compare, "
            "pipeline.checkpoint, pipeline.records; print('mlflow' in sys.modules, 'matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                            cwd=PROJECT_ROOT, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_each_entry_point_has_a_step_module_and_a_cli_named_after_it():
    entry_points = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]
    for name, spec in entry_points.items():
        assert f"python -m pipeline.cli.{name} " in spec["command"] + " ", name
        assert (PACKAGE / "cli" / f"{name}.py").is_file(), name
        if name != "generate":  # generate writes demo data; it is no tracked step
            assert (PACKAGE / "steps" / f"{STEP_OF_ENTRY_POINT.get(name, name)}.py").is_file(), name


def test_preparing_a_photo_needs_no_torch():
    """The one preparation of a photo (decode, field of view, crop) is shared by every grader,
    including ones that run without torch."""
    code = "import sys; import pipeline.data.prepare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                            cwd=PROJECT_ROOT, check=True)
    assert result.stdout.split() == ["False"]
