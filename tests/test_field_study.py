"""`mlflow run . -e main -P config=experiments/field.yaml`: the labs' configurations and the
field's recipe, side by side in one comparison (one depth and tiny images, to keep it seconds)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import tags
from tests.conftest import STUDY_ENV, mlflow_run, runs_by_step, scratch_dir, tracking_store

pytestmark = pytest.mark.slow  # three trainings through the real `mlflow run`

FIELD_PARAMS = {"recipe": "field", "head": "ordinal", "decision": "kappa_thresholds", "optimizer": "adamw",
                "lr_schedule": "cosine", "warmup_epochs": "1", "augment": "field", "tta": "flips", "fuse_eyes": "true"}


def test_field_yaml_compares_the_field_recipe_with_the_labs(raw_dir, imagenet_weights, tmp_path_factory):
    with scratch_dir(tmp_path_factory, "field") as root:
        tracking = tracking_store(root)
        mlflow_run(tracking, ["-e", "main", "--experiment-name", "field", "-P", "config=experiments/field.yaml",
                              "-P", f"raw_dir={raw_dir}", "-P", f"data_dir={root / 'processed'}", "-P", "models=resnet18",
                              "-P", "image_size=32", "-P", "epochs=2", "-P", "batch_size=8", "-P", "num_workers=0",
                              "-P", "bootstrap_resamples=0", "-P", "checkpoint_artifact=false",
                              "-P", f"checkpoint_dir={root / 'checkpoints'}"],
                   TORCH_HOME=str(imagenet_weights["home"]), **STUDY_ENV)
        client = MlflowClient(tracking)
        grouped = runs_by_step(client, "field")
        trained = {run.data.tags[tags.CONFIGURATION]: run for run in grouped["train"]}
        assert sorted(trained) == ["resnet18 pretrained", "resnet18 pretrained field", "resnet18 scratch"]
        assert all(run.info.status == "FINISHED" for run in trained.values())
        field_run = trained["resnet18 pretrained field"]
        assert {key: field_run.data.params[key] for key in FIELD_PARAMS} == FIELD_PARAMS
        assert {f"threshold_{k}" for k in range(1, 5)} | {"fuse_weight"} <= set(field_run.data.metrics)
        lab_run = trained["resnet18 pretrained"]
        assert (lab_run.data.params["recipe"], lab_run.data.params["head"], lab_run.data.params["augment"]) == (
            "lab", "classification", "lab")
        assert "threshold_1" not in lab_run.data.metrics

        (compare_run,) = grouped["compare"]
        csv = client.download_artifacts(compare_run.info.run_id, "comparison/comparison.csv", str(root))
        table = pd.read_csv(csv)
        assert table["configuration"].tolist() == ["resnet18 pretrained", "resnet18 scratch", "resnet18 pretrained field"]
        assert table["status"].tolist() == ["ran"] * 3 and table["recipe"].tolist() == ["lab", "lab", "field"]
        (study_run,) = grouped["main"]
        assert "resnet18 pretrained field" in study_run.data.tags[tags.NOTE]
        text = client.download_artifacts(compare_run.info.run_id, "comparison/comparison.txt", str(root))
        assert "resnet18 pretrained field" in io.open(text).read()
