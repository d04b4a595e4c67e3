"""An entry point's process imports with Python's cycle collector off and runs with it on
(pipeline/cli/__init__.py)."""

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT, subprocess_env

ENTRY_POINT_MODULES = sorted(path for path in (PROJECT_ROOT / "pipeline" / "cli").glob("*.py")
                             if not path.name.startswith("_"))


def test_python_imports_the_package_of_a_module_run_with_m_while_argv0_is_m(tmp_path):
    """What the collector's switch relies on: ``python -m pkg.mod`` imports pkg with sys.argv[0] == "-m"."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("import sys\nprint('package', sys.argv[0])\n")
    (tmp_path / "pkg" / "mod.py").write_text("import sys\nprint('module', sys.argv[0])\n")
    result = subprocess.run([sys.executable, "-m", "pkg.mod"], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.splitlines() == ["package -m", f"module {tmp_path / 'pkg' / 'mod.py'}"]


CHILD = """
import gc, sys
{argv}
import pipeline.cli
off = not gc.isenabled()
pipeline.cli.imports_done()
print(off, gc.isenabled(), gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize("entry_point, expected", [
    (True, "True True True"),  # off while importing, then on, with what was imported frozen
    (False, "False True False"),  # a process that imports an entry point (a test) keeps it as it was
])
def test_the_collector_is_off_only_while_an_entry_points_process_imports(entry_point, expected):
    argv = "sys.argv[:1] = ['-m']  # as while Python locates `-m pipeline.cli.<step>`" if entry_point else ""
    result = subprocess.run([sys.executable, "-c", CHILD.format(argv=argv)], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, check=True)
    assert result.stdout.strip() == expected


RUN_STEP_CHILD = """
import sys
sys.argv[:1] = ['-m']
import gc
from pipeline.cli._runner import run_step
seen = []
code = run_step("compare", lambda: seen.append(gc.isenabled()))
print(seen, code)
"""


@pytest.mark.slow  # a process that imports MLflow
def test_a_steps_body_runs_with_the_collector_on(tmp_path):
    result = subprocess.run([sys.executable, "-c", RUN_STEP_CHILD], capture_output=True, text=True, cwd=tmp_path,
                            env={**subprocess_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                            check=True)
    assert result.stdout.splitlines()[-1] == "[True] 0"


@pytest.mark.parametrize("path", ENTRY_POINT_MODULES, ids=lambda path: path.stem)
def test_every_entry_point_runs_through_run_step_or_turns_the_collector_on_itself(path):
    source = path.read_text()
    assert "run_step(" in source or "imports_done()" in source
