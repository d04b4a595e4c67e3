"""A train stopped by SIGTERM (as a scheduler or `kill` stops it) or Ctrl-C ends its run KILLED,
not FAILED, and says in one line how to continue or delete it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import subprocess_env, tracking_store

pytestmark = pytest.mark.slow  # a training in a process of its own


@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_train_ends_killed_with_a_hint(stop, code, processed_dir, tmp_path):
    uri = tracking_store(tmp_path)
    command = [sys.executable, "-m", "pipeline.cli.train", "--data_dir", str(processed_dir), "--image_size", "32",
               "--epochs", "200", "--batch_size", "8", "--num_workers", "0", "--bootstrap_resamples", "0",
               "--checkpoint_artifact", "false", "--checkpoint_dir", str(tmp_path / "checkpoints")]
    # A suite started in the background (`make test &`) hands its processes SIGINT ignored, and Python
    # keeps it so: the training gets Ctrl-C's default back, as a terminal's foreground job has it.
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="stops"),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    client = MlflowClient(uri)
    deadline = time.monotonic() + 180
    run = None
    while time.monotonic() < deadline and process.poll() is None:
        experiment = client.get_experiment_by_name("stops") if (tmp_path / "mlflow.db").exists() else None
        found = client.search_runs([experiment.experiment_id]) if experiment else []
        if found and "train_loss" in found[0].data.metrics:  # an epoch has finished
            run = found[0]
            break
        time.sleep(0.5)
    assert run is not None, process.stderr.read() if process.poll() is not None else "no epoch within 180 s"
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    (hint,) = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert f"run {run.info.run_id} ended KILLED" in hint and f"-P resume={run.info.run_id}" in hint
    assert "Traceback" not in stderr
