"""Shared fixtures: tiny synthetic data in the real layout, weights files, tracking stores, a real server."""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

# MLflow's telemetry sets and unsets an environment variable from a thread, which races with
# code iterating os.environ (urllib reading proxies: a KeyError mid-request); these machines are
# offline anyway. Off before MLflow is imported, and in child processes (subprocess_env).
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# Under xdist (`make test`), one intra-op thread per process unless the caller chose: the workers
# share two cores with the processes they start, and torch's OpenMP threads spin while they wait
# for work, so two trainings at once with two threads each took 1.4-1.8x the CPU of one thread
# each here. A run in one process (the quick loop) keeps torch's default. Set before torch is
# imported; child processes inherit it (subprocess_env).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    # A worker ends as the entry points do, without tearing down torch, MLflow and the rest module by
    # module (~2 s of CPU each, while the session's end waits for the last worker). Imported here,
    # before the others register theirs, so its exit handler runs after all of them.
    from pipeline.cli import end_without_teardown

    end_without_teardown(0)

# MLflow, torch and the pipeline are imported where a fixture or helper uses them: under xdist the
# controlling process loads this file too, before it starts the workers, and runs no test (importing
# them there cost ~5 s of CPU, on one core, before any worker began).
import psutil  # noqa: E402
import pytest  # noqa: E402

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The fake "ImageNet" weights use another seed than training, so they differ from a scratch init.
FAKE_WEIGHTS_SEED = 1234


# The longest test files, longest first (seconds of test time on 3 workers, a fresh clone,
# 2026-12-07 evening): xdist gives a worker a whole file at a time (`make test`: --dist loadfile), so
# a long file begun last would keep one worker busy after the others finish. The other files follow
# in collection order. The third worker begins with a file that needs no tracking server: the other
# two wait ~8 s for the session's to start, and the machine would be half idle meanwhile.
LONGEST_FILES_FIRST = (
    "tests/test_end_to_end.py",  # 214: the four-configuration study and its parallel twin
    "tests/test_entry_points.py",  # 195: mlflow run -e train, torchrun on one and two nodes, -e sweep
    "tests/test_export.py",  # 118: ONNX exports, and serving from a fresh torch-free environment
    "tests/test_server.py",  # 153: three trainings at once, a restart, basic auth
    "tests/test_resume.py",  # 96: trainings killed and resumed
    "tests/steps/test_sweep.py",  # 65: sweeps in this process and two sweep processes
    "tests/test_serving.py",  # 62: a champion served by `mlflow models serve`
    "tests/cli/test_study.py",  # 60: studies in this process, over seeds
    "tests/test_field_study.py",  # 53: the field study through `mlflow run -e main`
    "tests/steps/test_grade_archive.py",  # 53: Spark
)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):
    """Collecting imports torch, MLflow, scikit-learn and the rest with the cycle collector off, as
    an entry point's process imports them (pipeline/cli/__init__.py): ~2 s of CPU less per worker.
    On again afterwards, whatever collecting did (xdist's controlling process collects nothing)."""
    from pipeline.cli import imports_done

    gc.disable()
    try:
        return (yield)
    finally:
        imports_done()  # what collecting imported lives as long as the session: frozen


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {PROJECT_ROOT / name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    missing = [str(path) for path in rank if not path.is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py's LONGEST_FILES_FIRST names files that do not exist: {missing}")
    items.sort(key=lambda item: rank.get(item.path, len(rank)))


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    """A tiny raw EyePACS layout: 12 train patients, 5 test patients, 128x96 photos, all grades."""
    from pipeline.data.synthetic import UNIFORM_GRADE_SHARES, generate_eyepacs_layout

    root = tmp_path_factory.mktemp("raw")
    generate_eyepacs_layout(root, train_patients=12, test_patients=5, size=(128, 96),
                            grade_shares=UNIFORM_GRADE_SHARES, seed=0)
    return root


@pytest.fixture
def raw_copy(raw_dir, tmp_path) -> Path:
    """A private copy of the raw layout that a test may damage."""
    return Path(shutil.copytree(raw_dir, tmp_path / "raw"))


@pytest.fixture(scope="session")
def processed_dir(raw_dir, tmp_path_factory) -> Path:
    from pipeline.data.preprocess import preprocess

    target = tmp_path_factory.mktemp("processed") / "data"
    preprocess(raw_dir, target, image_size=64, val_fraction=0.25, seed=0, num_workers=1)
    return target


@pytest.fixture(scope="session")
def imagenet_weights(tmp_path_factory) -> dict[str, Path]:
    """A TORCH_HOME holding weights files under torchvision's exact expected names.

    The contents are random (no download is possible here); the tests check that the loading
    path finds and loads exactly these files.
    """
    import torch
    import torchvision

    from pipeline.catalog import SUPPORTED_MODELS
    from pipeline.models import imagenet_weights as weights_of

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    files = {}
    for name in SUPPORTED_MODELS:
        torch.manual_seed(FAKE_WEIGHTS_SEED)
        path = checkpoints / weights_of(name).url.rsplit("/", 1)[-1]
        torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
        files[name] = path
    return {"home": home, **files}


@pytest.fixture
def torch_home(imagenet_weights, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(imagenet_weights["home"]))
    return imagenet_weights["home"]


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "empty_torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


_STORE_TEMPLATE: list[Path] = []


def tracking_store(folder: Path) -> str:
    """The URI of an embedded store of its own in ``folder`` (``mlflow.db``), already migrated:
    copied from one made once per session, as creating one runs MLflow's migrations (~2 s)."""
    if not _STORE_TEMPLATE:
        from mlflow.tracking import MlflowClient

        home = Path(tempfile.mkdtemp(prefix="retina-flow-store-"))
        atexit.register(shutil.rmtree, home, True)
        MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()  # creates its tables
        _STORE_TEMPLATE.append(home / "mlflow.db")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_STORE_TEMPLATE[0], folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def sqlite_tracking(tmp_path, monkeypatch) -> str:
    """An embedded store of this test's own, as the entry points see it through the environment."""
    import mlflow

    uri = tracking_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    monkeypatch.chdir(tmp_path)  # the store's artifacts (./mlruns) land here too
    mlflow.set_tracking_uri(uri)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log_path: Path, *, health: str = "/health",
                    timeout: float = 90.0) -> None:
    """Returns once ``url + health`` answers 200; fails with the end of the server's log if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}:\n"
                               f"{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}{health}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the server at {url} did not answer within {timeout} s")


# The servers this process started, by pid: stop_server waits for its own children, and polls for
# another process's (the session's shared tracking server may be stopped by the last test worker).
_STARTED: dict[int, subprocess.Popen] = {}


def start_server(command: list[str], port: int, log_path: Path, *, cwd: Path, env: dict[str, str] | None = None,
                 health: str = "/health", timeout: float = 90.0) -> tuple[str, subprocess.Popen]:
    """A real server process on a loopback port, returned with its URL once it answers."""
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    _STARTED[process.pid] = process
    try:
        wait_for_server(url, process, log_path, health=health, timeout=timeout)
    except BaseException:
        stop_server(process.pid)
        raise
    return url, process


def stop_server(pid: int, grace: float = 30.0) -> None:
    """Terminates a server (``mlflow server`` passes it on to its workers); if it outlives ``grace``,
    kills it and every process under it."""
    own = _STARTED.pop(pid, None)
    try:
        server = psutil.Process(pid)
        family = [server, *server.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if own is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            own.wait(timeout=grace)
    else:
        deadline = time.monotonic() + grace
        while family and _running(family[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    if own is not None:
        own.wait()


def _running(process: psutil.Process) -> bool:
    """Whether ``process`` is alive: a zombie (its parent, another test worker, has not reaped it)
    is not."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def running_server(command: list[str], port: int, log_path: Path, *, cwd: Path, env: dict[str, str] | None = None,
                   health: str = "/health", timeout: float = 90.0) -> Iterator[str]:
    """A real server process on a loopback port, yielded once it answers; stopped (killed if need be) after."""
    url, process = start_server(command, port, log_path, cwd=cwd, env=env, health=health, timeout=timeout)
    try:
        yield url
    finally:
        stop_server(process.pid)


def makefile_server_env() -> dict[str, str]:
    """The environment ``make server`` gives ``mlflow server``: the Makefile is its one home."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    found = dict(re.findall(r"^export (MLFLOW_SERVER_\w+) \?= (\S+)$", makefile, re.MULTILINE))
    if not found:
        raise RuntimeError("the Makefile no longer exports the server's MLFLOW_SERVER_* settings")
    return found


SERVER_ENV = makefile_server_env()


def mlflow_server_command(root: Path, *extra: str, port: int, backend_store_uri: str | None = None) -> list[str]:
    """``mlflow server`` on a loopback ``port``, served artifacts under ``root``; its backend is
    ``backend_store_uri`` (a sqlite file under ``root`` by default)."""
    return [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1", *extra]


def mlflow_server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    # As `make server` runs it: without MLflow's job runner (eight more processes, ~15 s of CPU a start).
    return {**(os.environ if env is None else env), **SERVER_ENV}


@contextlib.contextmanager
def running_mlflow_server(root: Path, *extra: str, env: dict[str, str] | None = None,
                          port: int | None = None, backend_store_uri: str | None = None) -> Iterator[str]:
    """A real ``mlflow server`` process on a (free) loopback port (see ``mlflow_server_command``)."""
    port = port or free_port()
    command = mlflow_server_command(root, *extra, port=port, backend_store_uri=backend_store_uri)
    with running_server(command, port, root / "server.log", cwd=root, env=mlflow_server_env(env)) as url:
        yield url


@contextlib.contextmanager
def scratch_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A folder for a module-scoped fixture, removed with the module: models and checkpoints are
    tens of MB each, and a whole session's would not fit a CI machine's disk."""
    path = tmp_path_factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def train_in_process(monkeypatch: pytest.MonkeyPatch, args: list[str], *, cwd: Path | None = None, **env: str) -> int:
    """The train entry point on ``args`` in this process, in ``cwd`` with ``env`` (and, as
    ``subprocess_env`` gives a child, no other MLflow settings): for a training whose own process is
    not what a test is about (one refused before it trains, say), where that process would only add
    its start-up (~5 s). Real processes' exit statuses are checked in tests/cli/test_bad_inputs.py."""
    import mlflow

    from pipeline.cli import train as train_cli

    for name in [name for name in os.environ if name.startswith("MLFLOW_") and name != "MLFLOW_DISABLE_TELEMETRY"]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    try:
        return train_cli.main(args)
    finally:
        mlflow.set_tracking_uri(None)  # the entry point pointed MLflow at env's store


def session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every process of this test session shares: under xdist each worker's own
    temporary folder is inside it."""
    own = tmp_path_factory.getbasetemp()
    return own.parent if os.environ.get("PYTEST_XDIST_WORKER") else own


TRACKING_SERVICE = "tracking_service"  # its state file (.json) and lock (.lock) in the session folder


class TrackingService(TypedDict, total=False):
    """The shared tracking service's state file: what any test process needs to use or stop it."""

    cluster: dict[str, str]  # tests/postgres.py's start_cluster
    url: str
    pid: int  # the `mlflow server` process
    folder: str  # its artifacts and log
    users: int  # test processes using it now
    error: str  # why it could not start: later workers fail at once instead of trying again


def start_tracking_service(folder: Path) -> TrackingService:
    """A throwaway PostgreSQL cluster (tests/postgres.py) and an ``mlflow server`` on a database of
    it, serving artifacts under ``folder``; returns what ``stop_tracking_service`` needs."""
    from tests.postgres import create_database, start_cluster, stop_cluster

    cluster = start_cluster(free_port())
    try:
        folder.mkdir(exist_ok=True)
        port = free_port()
        command = mlflow_server_command(folder, port=port,
                                        backend_store_uri=create_database(cluster["uri"], "mlflow_tests"))
        url, process = start_server(command, port, folder / "server.log", cwd=folder, env=mlflow_server_env())
    except BaseException:
        stop_cluster(cluster)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return {"cluster": cluster, "url": url, "pid": process.pid, "folder": str(folder), "users": 0}


def stop_tracking_service(state: TrackingService) -> None:
    from tests.postgres import stop_cluster

    if "error" in state:
        return  # it never started
    try:
        stop_server(state["pid"])
    finally:
        stop_cluster(state["cluster"])
        shutil.rmtree(state["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def tracking_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingService]:
    """One PostgreSQL-backed tracking server for the test session, as a lab shares one, whatever the
    number of test workers: the first to need it starts it, the last to finish stops it (at most one
    at a time). Each test module uses experiment and model names of its own (a server per module
    cost ~15 s each, and one per worker ~10 s of CPU each)."""
    from pipeline.data.arrays import exclusive_lock

    folder = session_folder(tmp_path_factory)
    state_file, lock = folder / f"{TRACKING_SERVICE}.json", folder / f"{TRACKING_SERVICE}.lock"
    with exclusive_lock(lock):
        if state_file.exists():
            state: TrackingService = json.loads(state_file.read_text())
        else:
            try:
                state = start_tracking_service(folder / TRACKING_SERVICE)
            except Exception as error:
                state_file.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
                raise
        if "error" in state:
            pytest.fail(f"the session's tracking service could not start: {state['error']}")
        state["users"] += 1
        state_file.write_text(json.dumps(state))
    try:
        yield state
    finally:
        with exclusive_lock(lock):
            state = json.loads(state_file.read_text())
            state["users"] -= 1
            if state["users"]:
                state_file.write_text(json.dumps(state))
            else:
                state_file.unlink()
                stop_tracking_service(state)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stops a tracking service a test worker that died left behind: in xdist's controlling process
    (the "dsession" plugin), once every worker is gone. Only there: in a single-process run this hook
    runs before the session's fixtures are torn down, and the fixture stops the service itself."""
    if not session.config.pluginmanager.hasplugin("dsession"):
        return
    state_file = session.config._tmp_path_factory.getbasetemp() / f"{TRACKING_SERVICE}.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        state_file.unlink()
        stop_tracking_service(state)


@pytest.fixture(scope="session")
def postgres(tracking_service: TrackingService) -> str:
    """The session's PostgreSQL cluster (see ``tracking_service``); its base URI."""
    return tracking_service["cluster"]["uri"]


@pytest.fixture(scope="session")
def mlflow_server(tracking_service: TrackingService) -> str:
    """The session's real tracking server (see ``tracking_service``): PostgreSQL backend, served artifacts."""
    return tracking_service["url"]


@pytest.fixture
def server_tracking(mlflow_server, monkeypatch):
    """The module's real server, as the steps find it through the environment; later tests start clean."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)  # an earlier in-process step may have set another one
    yield mlflow_server
    mlflow.set_tracking_uri(None)


def runs_by_step(client: MlflowClient, experiment: str) -> dict[str, list]:
    """An experiment's runs grouped by the step that made them (main, train, evaluate, ...)."""
    from pipeline.tracking import tags

    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    grouped: dict[str, list] = {}
    for run in client.search_runs([experiment_id], max_results=100):
        grouped.setdefault(run.data.tags.get(tags.STEP), []).append(run)
    return grouped


# The environment of the tests' studies and multi-process trainings.
STUDY_ENV = {
    # Tiny trainings last seconds (5-15 here): sample system metrics every 2 s (MLflow's default is 10),
    # each sample a run lookup and a batch on the server.
    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2",
    # One thread per training (whatever the suite's own setting): oneDNN picks its kernels, and so
    # its rounding, by thread count, and the parallel study's table must match the sequential one's.
    "OMP_NUM_THREADS": "1",
}


def mlflow_run(tracking_uri: str, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``mlflow run . --env-manager local ARGS`` as the README runs it; asserts it succeeded."""
    result = subprocess.run(
        [str(VENV_BIN / "mlflow"), "run", ".", "--env-manager", "local", *args],
        cwd=PROJECT_ROOT, env=subprocess_env(MLFLOW_TRACKING_URI=tracking_uri, **env),
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def train_command(processed_dir: Path, model: str, pretrained: str, *extra: str) -> list[str]:
    """The train entry point on the tiny dataset, seconds per run: 32 px, 2 epochs, no intervals."""
    return [sys.executable, "-m", "pipeline.cli.train", "--data_dir", str(processed_dir), "--model", model,
            "--pretrained", pretrained, "--image_size", "32", "--epochs", "2", "--batch_size", "8",
            "--num_workers", "0", "--bootstrap_resamples", "0", "--checkpoint_artifact", "false", *extra]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: this venv first on PATH, the project importable from
    any working folder (a sqlite store puts its ./mlruns there), no stray MLflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
