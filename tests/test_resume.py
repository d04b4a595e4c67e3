"""Crash-safe training: SIGKILL at a random batch of a random epoch, resume, and nothing differs."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import checkpoint
from pipeline.catalog import PER_EPOCH_METRICS, SPEED_METRICS
from pipeline.faults import KILL_AT_BATCH_ENV
from pipeline.tracking import tags
from tests.conftest import mlflow_run, scratch_dir, subprocess_env, tracking_store, train_in_process

pytestmark = pytest.mark.slow  # subprocess trainings killed and resumed

EPOCHS = 3
BATCH_SIZE = 4


def train_options(processed_dir, checkpoint_dir, *extra) -> list[str]:
    return ["--data_dir", str(processed_dir), "--image_size", "32", "--epochs", str(EPOCHS), "--batch_size",
            str(BATCH_SIZE), "--num_workers", "0", "--lr", "0.01", "--bootstrap_resamples", "0",
            "--checkpoint_dir", str(checkpoint_dir), *extra]


def train(store, experiment, processed_dir, checkpoint_dir, *extra, kill_at=None) -> subprocess.CompletedProcess:
    """Trains in the test's folder (``checkpoint_dir``'s parent), where a sqlite store's ./mlruns belongs."""
    env = subprocess_env(MLFLOW_TRACKING_URI=store, MLFLOW_EXPERIMENT_NAME=experiment)
    if kill_at is not None:
        env[KILL_AT_BATCH_ENV] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "pipeline.cli.train", *train_options(processed_dir, checkpoint_dir, *extra)],
                          cwd=Path(checkpoint_dir).parent, env=env, capture_output=True, text=True, timeout=600)


def train_here(monkeypatch, store, experiment, processed_dir, checkpoint_dir, *extra) -> int:
    """``train``'s command in this process, where that process is not what is tested (the
    uninterrupted reference, a resume by run id, a resume refused before training); the killed
    trainings are processes of their own. Both run torch on the same threads (the worker's
    OMP_NUM_THREADS, which its children inherit): the same kernels, so the same bits."""
    return train_in_process(monkeypatch, train_options(processed_dir, checkpoint_dir, *extra),
                            cwd=Path(checkpoint_dir).parent, MLFLOW_TRACKING_URI=store, MLFLOW_EXPERIMENT_NAME=experiment)


def only_run(client, experiment):
    """The experiment's one train run (a resume's ``mlflow run`` launcher run is not one)."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (run,) = [r for r in runs if r.data.tags.get(tags.STEP) == "train"]
    return run


def histories(client, run_id):
    """Every per-epoch metric's values; images/s is a wall-clock figure and differs from run to run."""
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
            for name in PER_EPOCH_METRICS if name not in SPEED_METRICS}


@pytest.fixture(scope="module")
def reference(processed_dir, tmp_path_factory):
    """The uninterrupted run every interrupted one must match."""
    with scratch_dir(tmp_path_factory, "reference") as root:
        store = tracking_store(root)
        with pytest.MonkeyPatch.context() as monkeypatch:  # undone before the module's tests run
            assert train_here(monkeypatch, store, "reference", processed_dir, root / "checkpoints",
                              "--checkpoint_artifact", "false", "--keep_checkpoint", "true") == 0
        client = MlflowClient(store)
        run = only_run(client, "reference")
        final = checkpoint.load(root / "checkpoints" / run.info.run_id / checkpoint.LAST)
        yield {"best_state": final["best_state"], "histories": histories(client, run.info.run_id),
               "run": run}


def stored_bytes(client, run_id, folder=None) -> int:
    """Every file under the run's artifact root (the logged model is a LoggedModel, kept apart)."""
    return sum(stored_bytes(client, run_id, item.path) if item.is_dir else item.file_size
               for item in client.list_artifacts(run_id, folder))


def batches_per_epoch(processed_dir) -> int:
    from pipeline.data.dataset import ProcessedDataset

    images = len(ProcessedDataset(processed_dir, 32).split("train"))
    return images // BATCH_SIZE + (1 if images % BATCH_SIZE > 1 else 0)  # a lone last image is dropped


def test_sigkill_then_resume_auto_through_mlflow_run_from_the_artifact_matches_the_uninterrupted_run(
        reference, processed_dir, tmp_path):
    """The README's resume: the same `mlflow run` command again with `-P resume=auto`, on another
    machine (only the tracking server has the checkpoint). A run id instead of auto goes the same
    way (`--resume ID`: the uint8 test below)."""
    per_epoch = batches_per_epoch(processed_dir)
    # A seeded random batch of a random epoch after the first (the first leaves nothing to resume).
    kill_at = random.Random(20261122).randrange(per_epoch + 1, per_epoch * EPOCHS)
    store, experiment = tracking_store(tmp_path), "crash"
    checkpoints = tmp_path / "checkpoints"
    killed = train(store, experiment, processed_dir, checkpoints, "--checkpoint_artifact", "true", kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    client = MlflowClient(store)
    run = only_run(client, experiment)
    assert run.info.status == "RUNNING"  # what a killed job leaves behind
    shutil.rmtree(checkpoints)  # another machine

    # What the killed run was started with, as -P values; the launcher's own run is no train run
    # (auto must not pick it), and the training continues in the killed one.
    options = train_options(processed_dir, checkpoints)
    params = [f"{name[2:]}={value}" for name, value in zip(options[::2], options[1::2])]
    resumed = mlflow_run(store, ["-e", "train", "--experiment-name", experiment, "-P", "resume=auto",
                                 "-P", "checkpoint_artifact=true", *[arg for p in params for arg in ("-P", p)]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    killed_run_id = run.info.run_id
    run = only_run(client, experiment)  # the same run, not a new one
    assert run.info.run_id == killed_run_id and run.info.status == "FINISHED"
    (launcher,) = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != killed_run_id]
    assert launcher.data.tags[tags.RESUMED_RUN] == killed_run_id and launcher.info.status == "FINISHED"
    assert not launcher.data.metrics  # it only records the launch

    for name in PER_EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), name  # one value per epoch, none twice
    assert histories(client, run.info.run_id) == reference["histories"]  # every value, not just the count

    # A finished run needs no crash-resume checkpoint, on disk or on the server; its selected
    # weights stay, once, and they are the uninterrupted run's to the bit.
    assert not (checkpoints / run.info.run_id).exists()
    stored = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert list(stored) == ["checkpoints/best_model.pt"]
    best = torch.load(client.download_artifacts(run.info.run_id, "checkpoints/best_model.pt", str(tmp_path)),
                      weights_only=True)
    for key, expected in reference["best_state"].items():
        assert torch.equal(best[key], expected), key
    assert stored_bytes(client, run.info.run_id) <= 1.5 * stored["checkpoints/best_model.pt"]


def test_uint8_cache_device_augmentation_and_the_field_recipe_resume_bit_identically(processed_dir, tmp_path,
                                                                                       monkeypatch):
    """cache_format=uint8 with augment_device=model, and the field's recipe (ordinal head, AdamW with
    a cosine schedule after a warm-up, field augmentation on the device, flip TTA, cut points, fused
    eyes): killed mid-epoch and resumed, the same weights to the bit, and the same decision."""
    data = Path(shutil.copytree(processed_dir / "64px", tmp_path / "data"))  # the arrays go beside its manifest
    store = tracking_store(tmp_path)
    flags = ["--cache_format", "uint8", "--augment_device", "model", "--checkpoint_artifact", "false",
             "--keep_checkpoint", "true", "--head", "ordinal", "--optimizer", "adamw", "--lr_schedule", "cosine",
             "--warmup_epochs", "1", "--augment", "field", "--tta", "flips", "--decision", "kappa_thresholds",
             "--fuse_eyes", "true"]
    finals = {}
    for name in ("reference", "crash"):
        (tmp_path / name).mkdir()
        checkpoints = tmp_path / name / "checkpoints"
        if name == "crash":
            per_epoch = batches_per_epoch(data)
            kill_at = random.Random(20261124).randrange(per_epoch + 1, per_epoch * EPOCHS)
            killed = train(store, name, data, checkpoints, *flags, kill_at=kill_at)
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
            flags = [*flags, "--resume", only_run(MlflowClient(store), name).info.run_id]
        assert train_here(monkeypatch, store, name, data, checkpoints, *flags) == 0
        run = only_run(MlflowClient(store), name)
        assert run.data.params["cache_format"] == "uint8" and run.data.params["augment_device"] == "model"
        assert (run.data.params["head"], run.data.params["augment"]) == ("ordinal", "field")
        decision = {k: v for k, v in run.data.metrics.items() if k.startswith(("threshold_", "fuse_weight", "selected_"))}
        finals[name] = (histories(MlflowClient(store), run.info.run_id),
                        checkpoint.load(checkpoints / run.info.run_id / checkpoint.LAST)["model"], decision)
    assert (data / "uint8" / "32px" / "train.npy").is_file()
    for metric, values in finals["reference"][0].items():
        assert finals["crash"][0][metric] == values, (metric, finals["crash"][0][metric], values)
    for key, expected in finals["reference"][1].items():
        assert torch.equal(finals["crash"][1][key], expected), key
    assert "threshold_4" in finals["reference"][2] and "fuse_weight" in finals["reference"][2]
    assert finals["crash"][2] == pytest.approx(finals["reference"][2], nan_ok=True)


def test_killed_in_the_first_epoch_leaves_nothing_to_resume_and_says_so(processed_dir, tmp_path, monkeypatch, capsys):
    store = tracking_store(tmp_path)
    killed = train(store, "early", processed_dir, tmp_path / "checkpoints", kill_at=2)
    assert killed.returncode == -signal.SIGKILL
    run = only_run(MlflowClient(store), "early")
    code = train_here(monkeypatch, store, "early", processed_dir, tmp_path / "checkpoints", "--resume", run.info.run_id)
    assert code == 2
    assert f"run {run.info.run_id} has no checkpoint to resume from" in capsys.readouterr().err
    assert only_run(MlflowClient(store), "early").info.status == "FAILED"


def test_resume_of_an_unknown_run_is_a_clear_error(processed_dir, tmp_path, monkeypatch, capsys):
    code = train_here(monkeypatch, tracking_store(tmp_path), "none", processed_dir, tmp_path / "checkpoints",
                      "--resume", "0123456789abcdef")
    assert code == 2
    assert "error: resume=0123456789abcdef: no such run" in capsys.readouterr().err


def test_resume_refuses_several_processes(processed_dir, tmp_path, monkeypatch, capsys):
    code = train_here(monkeypatch, tracking_store(tmp_path), "multi", processed_dir, tmp_path / "checkpoints",
                      "--resume", "auto", "--nproc", "2")
    assert code == 2
    assert "error: resume=auto continues a run in one process; leave nproc at 1 (it was 2)" in capsys.readouterr().err
