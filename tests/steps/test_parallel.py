"""A study's trainings side by side: slots, threads, and a failed training that names itself."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import TrainConfig
from pipeline.errors import RetinaFlowError
from pipeline.steps.parallel import TrainJob, device_groups, threads_per_process, train_in_parallel
from pipeline.tracking import runs, tags


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU machine's slots")
def test_a_cpu_machine_runs_every_slot_without_devices():
    assert device_groups(3, nproc=1) == [None, None, None]


@pytest.mark.parametrize("slots, expected", [(1, 4), (2, 2), (3, 1), (8, 1)])
def test_the_cores_are_shared_out_unless_the_user_chose(slots, expected, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert threads_per_process(slots) == str(expected)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process(slots) is None


@pytest.mark.slow  # real train processes
def test_a_failed_training_fails_the_study_naming_it_after_the_others_finish(sqlite_tracking, processed_dir, tmp_path):
    tiny = TrainConfig(data_dir=str(processed_dir), image_size=32, epochs=1, batch_size=8, num_workers=0,
                       bootstrap_resamples=0, checkpoint_artifact=False, checkpoint_dir=str(tmp_path))
    broken = TrainConfig(data_dir=str(tmp_path / "no-such-dataset"), image_size=32, epochs=1)
    runs.configure()
    with runs.step_run("main", "study") as study:
        with pytest.raises(RetinaFlowError) as failed:
            train_in_parallel([TrainJob("broken", broken), TrainJob("fine", tiny)], parallel=2)
    message = str(failed.value)
    assert message.startswith("1 of 2 trainings failed") and "broken (run " in message and "exited with 2" in message
    assert "no-such-dataset" in message  # the end of its own output says why
    client = MlflowClient()
    children = {r.info.run_name: r for r in client.search_runs(
        [study.info.experiment_id], filter_string=f"tags.`{tags.PARENT_RUN}` = '{study.info.run_id}'")}
    assert children["broken"].info.status == "FAILED" and children["fine"].info.status == "FINISHED"
    assert children["fine"].data.tags[tags.STEP] == "train"
    assert mlflow.active_run() is None
