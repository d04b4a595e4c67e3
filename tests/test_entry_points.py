"""The entry points one at a time as the README launches them, against the session's real server:
`mlflow run -e train` (and with `-P nproc=2`), two torchrun nodes, and `mlflow run -e sweep`.
Apart from tests/test_end_to_end.py's study, so that the two run on different test workers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.catalog import PER_EPOCH_METRICS
from pipeline.tracking import tags
from tests.conftest import PROJECT_ROOT, STUDY_ENV, free_port, mlflow_run, runs_by_step, subprocess_env, train_command

pytestmark = pytest.mark.slow  # real `mlflow run` and torchrun processes against a real server


def test_train_entry_point_as_written(mlflow_server, processed_dir, tmp_path):
    """The brief's `mlflow run . -e train -P model=resnet50`, with the user's own spelling of values
    (lr=1e-3); resnet18 goes the same way through `main` (tests/test_end_to_end.py)."""
    model, experiment = "resnet50", "e2e-train-resnet50"
    mlflow_run(mlflow_server, ["-e", "train", "--experiment-name", experiment, "-P", f"model={model}",
                               "-P", f"data_dir={processed_dir}", "-P", "image_size=32", "-P", "epochs=1",
                               "-P", "lr=1e-3", "-P", "num_workers=0", "-P", f"checkpoint_dir={tmp_path}",
                               "-P", "bootstrap_resamples=0", "-P", "checkpoint_artifact=false"])
    client = MlflowClient(mlflow_server)
    (run,) = runs_by_step(client, experiment)["train"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == model and run.data.params["lr"] == "1e-3"
    assert run.data.params["pretrained"] == "false" and run.data.params["rotation_degrees"] == "20.0"
    assert run.data.tags["retina_flow.device"] == "cpu"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoints", "confusion_matrix", "config.yaml"}
    assert not (tmp_path / run.info.run_id).exists()  # the finished run's crash-resume checkpoint is gone


def test_torchrun_two_processes_make_one_complete_run(mlflow_server, processed_dir, tmp_path):
    """`-P nproc=2`: DDP over gloo on CPU; rank 0 alone logs, and its metrics are the single-process
    ones, per image in dataset order: the patient-level bootstrap pairs each image with its patient,
    so predictions gathered out of order would give other intervals."""
    from pipeline.data.dataset import ProcessedDataset, make_loader, split_dataset
    from pipeline.engine import evaluate
    from pipeline.hardware import Accelerator
    from pipeline.metrics import bootstrap_intervals
    from pipeline.models import build_model

    experiment = "e2e-torchrun"
    mlflow_run(mlflow_server, ["-e", "train", "--experiment-name", experiment, "-P", "nproc=2",
                               "-P", f"data_dir={processed_dir}", "-P", "image_size=32", "-P", "epochs=2",
                               "-P", "num_workers=0", "-P", "batch_size=4", "-P", f"checkpoint_dir={tmp_path}",
                               "-P", "bootstrap_resamples=200", "-P", "checkpoint_artifact=false",
                               # fp32, as the check below computes: a CPU with native bf16 would autocast.
                               "-P", "precision=fp32"])
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["retina_flow.world_size"] == "2"
    for metric in PER_EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric

    checkpoint = client.download_artifacts(run.info.run_id, "checkpoints/best_model.pt", str(tmp_path))
    model = build_model("resnet18", pretrained=False)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    processed = ProcessedDataset(processed_dir, 32)
    accel = Accelerator(torch.device("cpu"), channels_last=True)
    single = {split: evaluate(model, make_loader(split_dataset(processed, split, 32, train=False), 4, shuffle=False,
                                                 num_workers=0, seed=0), torch.nn.CrossEntropyLoss(), accel)
              for split in ("val", "test")}
    best_epoch = int(run.data.metrics["best_epoch"])
    logged_val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    assert single["val"].accuracy == pytest.approx(logged_val[best_epoch])
    assert single["val"].accuracy == pytest.approx(run.data.metrics["best_val_accuracy"])
    logged_loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    # Ranks run with one thread each (torchrun's default), this process with more: oneDNN picks
    # other fp32 convolution kernels, so losses agree to rounding, not bit for bit.
    assert single["val"].loss == pytest.approx(logged_loss[best_epoch], rel=2e-3)

    test = single["test"]
    logged_test = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")}
    assert test.accuracy == pytest.approx(logged_test[best_epoch])  # gathered from both ranks, in order
    intervals = bootstrap_intervals(test.targets, test.probabilities, n_resamples=200, seed=0,
                                    groups=processed.split("test")["patient"].to_numpy())
    # The selected model's figures over all test photos (the gradable ones' may leave some out),
    # each paired with its patient: argmax-based, so kernel rounding cannot move them.
    for name in ("accuracy", "kappa"):
        logged = (run.data.metrics[f"selected_test_all_{name}_ci_low"],
                  run.data.metrics[f"selected_test_all_{name}_ci_high"])
        assert logged == pytest.approx(intervals[name], abs=1e-9), name


def test_two_torchrun_nodes_make_one_run_with_each_nodes_system_metrics(mlflow_server, processed_dir, tmp_path):
    """Two machines as the README launches them, here two node launchers on loopback (static
    rendezvous, one process each): one run, logged by global rank 0, both nodes' system metrics."""
    experiment, port = "e2e-nodes", free_port()
    env = subprocess_env(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME=experiment, **STUDY_ENV)
    # Each node runs the module torchrun is given, so the interpreter at the command's head goes.
    _, *train = train_command(processed_dir, "resnet18", "false", "--checkpoint_dir", str(tmp_path))
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
                                   "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", *train],
                                  cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for node in (0, 1)]
    outputs = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    for launcher, output in zip(launchers, outputs):
        assert launcher.returncode == 0, output[-4000:]

    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["retina_flow.world_size"] == "2"
    for metric in PER_EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    for node in ("node0", "node1"):
        assert f"system/{node}/cpu_utilization_percentage" in run.data.metrics, sorted(run.data.metrics)


def test_the_sweep_entry_point_nests_its_trials_and_records_the_best(mlflow_server, processed_dir, tmp_path):
    """The issue's check, `mlflow run . -e sweep -P trials=3 -P epochs=1`, on the tiny data at 32 px."""
    experiment = "e2e-sweep"
    mlflow_run(mlflow_server, ["-e", "sweep", "--experiment-name", experiment, "-P", "trials=3", "-P", "epochs=1",
                               "-P", f"data_dir={processed_dir}", "-P", "image_size=32", "-P", "num_workers=0",
                               "-P", "bootstrap_resamples=0", "-P", f"storage=sqlite:///{tmp_path / 'optuna.db'}",
                               "-P", f"checkpoint_dir={tmp_path / 'checkpoints'}"])
    client = MlflowClient(mlflow_server)
    grouped = runs_by_step(client, experiment)
    (sweep,) = grouped["sweep"]
    trials = grouped["train"]
    assert sweep.info.status == "FINISHED" and len(trials) == 3
    for run in trials:  # one epoch is the last: never pruned
        assert run.info.status == "FINISHED" and run.data.tags[tags.TRIAL_STATE] == "COMPLETE"
        assert run.data.tags["mlflow.parentRunId"] == sweep.info.run_id and run.data.params["epochs"] == "1"
    scores = {run.info.run_id: run.data.metrics["selection_score"] for run in trials}
    best = client.get_run(sweep.data.tags[tags.BEST_RUN])
    assert sweep.data.metrics["best_val_kappa"] == max(scores.values()) == scores[best.info.run_id]
    for key in ("lr", "weight_decay", "optimizer", "lr_schedule"):  # experiments/sweeps/recipe.yaml
        assert sweep.data.params[f"best_{key}"] == best.data.params[key], key
    assert sweep.data.params["best_trial"] == best.data.tags[tags.TRIAL]
    assert not any((tmp_path / "checkpoints").iterdir())
