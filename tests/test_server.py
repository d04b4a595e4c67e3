"""The tracking server as users share it: several trainings at once, and basic auth."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from pipeline.catalog import PER_EPOCH_METRICS
from tests.conftest import (PROJECT_ROOT, free_port, running_mlflow_server, subprocess_env, train_command,
                            train_in_process)

pytestmark = pytest.mark.slow  # a real mlflow server, parallel and restarted trainings

# Three processes at once is what is tested (a lab's server takes several users' trainings), not
# depth (the end-to-end study trains resnet50): resnet18s, both ways of starting one.
CONFIGURATIONS = [("false", "0"), ("true", "0"), ("false", "1")]  # (pretrained, seed)


def test_three_trainings_in_parallel_against_one_server(mlflow_server, processed_dir, imagenet_weights, tmp_path):
    env = subprocess_env(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME="parallel",
                         TORCH_HOME=str(imagenet_weights["home"]), OMP_NUM_THREADS="1")
    # The experiment does not exist yet: the three processes race to create it, as users' would.
    processes = [subprocess.Popen(train_command(processed_dir, "resnet18", pretrained, "--seed", seed,
                                                "--checkpoint_dir", str(tmp_path)),
                                  cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for pretrained, seed in CONFIGURATIONS]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert {(r.data.params["pretrained"], r.data.params["seed"]) for r in runs} == set(CONFIGURATIONS)
    for run in runs:
        assert run.info.status == "FINISHED"
        for metric in PER_EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoints", "confusion_matrix", "gradcam", "metrics", "roc", "config.yaml"} <= artifacts
        assert run.data.tags.get("retina_flow.model_uri", "").startswith("models:/")


def train_here(monkeypatch, processed_dir, *extra: str, **env: str) -> int:
    """``train_command``'s training in this process (``train_in_process``)."""
    return train_in_process(monkeypatch, train_command(processed_dir, "resnet18", "false", *extra)[3:], **env)


ADMIN_PASSWORD = "a-long-test-only-password-1"


@pytest.fixture
def auth_server(tmp_path):
    """MLflow's basic-auth app, as the README runs it."""
    config = tmp_path / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{tmp_path / 'basic_auth.db'}\nadmin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      # The README's advice: without it each request pays 0.35-0.7 s of password hashing here.
                      "auth_cache_ttl_seconds = 60\n")
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret"}
    with running_mlflow_server(tmp_path, "--app-name", "basic-auth", env=env) as url:
        yield url


def test_basic_auth_refuses_anonymous_and_admits_a_user(auth_server, processed_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert refused.value.code == 401

    # Refused before it trains: in this process (a real process's exit status: tests/cli/test_bad_inputs.py).
    anonymous = train_here(monkeypatch, processed_dir, "--epochs", "1", "--checkpoint_dir", str(tmp_path),
                           MLFLOW_TRACKING_URI=auth_server)
    stderr = capsys.readouterr().err
    assert anonymous == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert (f"error: the tracking server {auth_server} refused the request: not authenticated (HTTP 401); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") in stderr

    # With a user's credentials it trains, and logs every request as that user (here too: what
    # is tested is the server's admission, not a process of its own).
    admitted = train_here(monkeypatch, processed_dir, "--epochs", "1", "--checkpoint_dir", str(tmp_path),
                          MLFLOW_TRACKING_URI=auth_server, MLFLOW_EXPERIMENT_NAME="secured",
                          MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    assert admitted == 0, capsys.readouterr().err[-3000:]
    client = MlflowClient(auth_server)
    (run,) = client.search_runs([client.get_experiment_by_name("secured").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["best_epoch"] == 1
    assert run.info.user_id == "admin"


def test_training_survives_a_tracking_server_restart(processed_dir, tmp_path):
    """The server goes away after epoch 1 and comes back: training goes on, no metric is lost."""
    root, port, epochs = tmp_path / "server", free_port(), 6
    root.mkdir()
    with running_mlflow_server(root, port=port) as url:
        client = MlflowClient(url)
        experiment = client.create_experiment("outage")
        process = subprocess.Popen(
            train_command(processed_dir, "resnet18", "false", "--epochs", str(epochs), "--checkpoint_dir", str(tmp_path)),
            cwd=PROJECT_ROOT, env=subprocess_env(MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME="outage"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            runs = client.search_runs([experiment])
            if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
                break
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("epoch 1 never reached the server")
    time.sleep(3)  # down (and while it restarts, seconds more): the epochs trained now cannot be logged
    with running_mlflow_server(root, port=port) as url:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        assert "is unreachable" in stderr and "kept to send when it is back" in stderr
        client = MlflowClient(url)
        (run,) = client.search_runs([experiment])
        assert run.info.status == "FINISHED"
        for metric in PER_EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == list(range(1, epochs + 1)), metric


def test_an_unreachable_server_fails_the_step_at_once_naming_it(processed_dir, tmp_path, monkeypatch, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    code = train_here(monkeypatch, processed_dir, "--checkpoint_dir", str(tmp_path), MLFLOW_TRACKING_URI=uri)
    assert code == 2
    assert f"error: the tracking server {uri} is unreachable" in capsys.readouterr().err
    assert time.monotonic() - started < 60  # MLflow's own retries would take minutes
