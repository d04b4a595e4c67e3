"""What a logged grader carries of the package: the modules its models-from-code script imports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tracking.registry import MODEL_CODE, served_code


def shipped(script: str, folder: Path) -> tuple[Path, set[str]]:
    copy = served_code(MODEL_CODE / script, folder)
    return copy, {path.relative_to(copy).as_posix() for path in copy.rglob("*.py")}


@pytest.mark.parametrize("script", ["torch_grader.py", "onnx_grader.py"])
def test_a_grader_carries_neither_the_entry_points_nor_the_steps(tmp_path, script):
    _, files = shipped(script, tmp_path)
    assert {"__init__.py", "tracking/__init__.py", "photo_grader.py", "data/__init__.py", "data/fov.py"} <= files
    assert not {name for name in files if name.startswith(("cli/", "steps/"))}
    assert not {"tracking/runs.py", "tracking/registry.py", "engine.py"} & files
    # The ONNX grader runs without torch: none of torch's network code travels with it.
    assert ("models.py" in files) == (script == "torch_grader.py")


def test_imports_are_followed_through_the_package_relative_ones_and_those_in_functions_too(tmp_path, monkeypatch):
    package = tmp_path / "pipeline"
    files = {
        "__init__.py": "",
        "a.py": "from pipeline.sub import b\n",
        "sub/__init__.py": "from . import c\n",
        "sub/b.py": "def late():\n    from ..d import value\n    return value\n",
        "sub/c.py": "import json\n",
        "d.py": "value = 1\n",
        "unused.py": "",
        "sub/unused.py": "",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    script = tmp_path / "script.py"
    script.write_text("import pipeline.a\n")
    monkeypatch.setattr("pipeline.tracking.registry.PACKAGE", package)
    copy = served_code(script, tmp_path / "copy")
    assert {path.relative_to(copy).as_posix() for path in copy.rglob("*.py")} == set(files) - {"unused.py", "sub/unused.py"}


# With the copy first on sys.path, ``import pipeline`` is the copy: a module it lacks cannot come from
# the installed package instead, as where the model is served. (The torch grader is served so in
# tests/test_serving.py; the ONNX one in a fresh environment in tests/test_export.py.)
LOAD_FROM_COPY = """
import json, runpy, sys
sys.path.insert(0, sys.argv[1])
runpy.run_path(sys.argv[2])
print(json.dumps({"files": [module.__file__ for name, module in sys.modules.items() if name.split(".")[0] == "pipeline"],
                  "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow  # a process that imports MLflow and onnxruntime
def test_the_onnx_graders_script_loads_from_its_copy_alone(tmp_path):
    copy, files = shipped("onnx_grader.py", tmp_path)
    result = subprocess.run([sys.executable, "-c", LOAD_FROM_COPY, str(tmp_path), str(MODEL_CODE / "onnx_grader.py")],
                            capture_output=True, text=True, cwd=tmp_path, check=True)
    found = json.loads(result.stdout.splitlines()[-1])
    loaded = {Path(file).relative_to(copy).as_posix() for file in found["files"]}
    # Each module it needed came from the copy (which may hold more: imports inside functions).
    assert loaded <= files and "onnx_grader.py" in loaded
    assert not found["torch"]
