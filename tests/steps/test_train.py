"""The train step in-process on the tiny data: the field's recipes reach the run and the grader it logs."""

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import train as train_cli
from pipeline.data.preprocess import preprocess
from pipeline.tracking import registry, tags

pytestmark = pytest.mark.slow  # whole trainings with a logged model: ~10 s each on 2 cores


@pytest.fixture(scope="module")
def both_caches(raw_dir, tmp_path_factory):
    """A data_dir root holding the plain and the Ben Graham cache side by side, at 64 px."""
    root = tmp_path_factory.mktemp("caches")
    for enhance in ("none", "ben_graham"):
        preprocess(raw_dir, root, image_size=64, val_fraction=0.25, seed=0, num_workers=1, enhance=enhance)
    return root


def test_train_on_the_ben_graham_cache_logs_a_grader_that_enhances(both_caches, sqlite_tracking, tmp_path):
    code = train_cli.main(["--data_dir", str(both_caches), "--enhance", "ben_graham", "--image_size", "32",
                           "--epochs", "1", "--batch_size", "8", "--num_workers", "0", "--bootstrap_resamples", "0",
                           "--checkpoint_artifact", "false", "--checkpoint_dir", str(tmp_path / "checkpoints")])
    assert code == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.params["enhance"] == "ben_graham"
    assert run.inputs.dataset_inputs[0].dataset.name == "64px-ben_graham"
    assert registry.load_model(run.data.tags[tags.MODEL_URI]).grader.spec.enhance == "ben_graham"
    # The logged model carries the run's summary (its page in the UI lists them), every value as logged.
    (output,) = run.outputs.model_outputs
    linked = {m.key: m.value for m in client.get_logged_model(output.model_id).metrics}
    summary = {"best_epoch", "selection_score", "selected_test_accuracy", "selected_val_kappa", "referable_threshold"}
    assert summary <= set(linked), sorted(linked)
    assert all(linked[name] == pytest.approx(run.data.metrics[name], nan_ok=True) for name in summary)


@pytest.mark.parametrize("place", ["loader", "model"])
def test_train_with_the_fields_augmentation_completes(place, processed_dir, sqlite_tracking, tmp_path):
    code = train_cli.main(["--data_dir", str(processed_dir), "--augment", "field", "--augment_device", place,
                           "--image_size", "32", "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
                           "--bootstrap_resamples", "0", "--checkpoint_artifact", "false",
                           "--checkpoint_dir", str(tmp_path / "checkpoints")])
    assert code == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["augment"] == "field"
    assert run.data.params["augment_device"] == place
