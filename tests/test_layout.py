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


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
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


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_preparing_a_photo_needs_no_torch():
    """The one preparation of a photo (decode, field of view, crop) is shared by every grader,
    including ones that run without torch."""
    code = "import sys; import pipeline.data.prepare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                            cwd=PROJECT_ROOT, check=True)
    assert result.stdout.split() == ["False"]


def readme_layout_listing() -> set[str]:
    """The module paths (relative to pipeline/) that the README's Layout section lists: a line
    ``  name.py`` or ``  data/name.py``, and ``    name.py`` under a folder line ``  folder/``."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme.split("\n## Layout\n", 1)[1].split("```", 2)[1]
    listed, folder = set(), ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        first = line.split()[0] if line.strip() else ""
        if indent == 2:
            folder = first if first.endswith("/") else ""
            if first.endswith(".py"):
                listed.add(first)
        elif indent == 4 and folder and first.endswith((".py", "/")):
            listed.add(folder + first)
    return listed


def test_the_readme_layout_lists_every_module_and_no_other():
    """Every module is listed, but cli/ (argument parsing only) and steps/<entry point>.py, which
    the README names as a group, and packages' __init__.py."""
    entry_points = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]
    grouped = {f"steps/{STEP_OF_ENTRY_POINT.get(name, name)}.py" for name in entry_points}
    expected = {str(path.relative_to(PACKAGE)) for path in modules()
                if path.name != "__init__.py" and path.parts[len(PACKAGE.parts)] != "cli"} - grouped
    listed = readme_layout_listing()
    folders = {name for name in listed if name.endswith("/")}
    covered = {name for name in expected if any(name.startswith(folder) for folder in folders)}
    assert expected - covered <= listed, sorted(expected - covered - listed)
    assert {name for name in listed if name.endswith(".py")} <= expected | grouped, \
        sorted({name for name in listed if name.endswith(".py")} - expected - grouped)
