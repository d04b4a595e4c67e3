"""The ``predict`` step: new photos -> a CSV of grades, probabilities and referable flags, logged too."""

from __future__ import annotations

import pandas as pd

from pipeline.predict import check_output, list_inputs, predict_photos, write_predictions
from pipeline.tracking import artifacts, registry, runs
from pipeline.tracking.sink import metric_sink


def run_predict(model_ref: str, source: str, output: str, batch_size: int = 32, num_workers: int = 0) -> pd.DataFrame:
    """Predictions for new photos, prepared exactly as training's (the processed cache's encoding)."""
    check_output(output)
    uri = registry.model_uri_of(model_ref)
    loaded = registry.load_model(uri)
    runs.log_params({"model_uri": uri, "input": source, "output": output, "batch_size": batch_size})
    inputs = list_inputs(source)
    frame = predict_photos(loaded.grader, inputs, batch_size=batch_size, num_workers=num_workers)
    path = write_predictions(frame, output)
    gradable = frame["gradable"].to_numpy(bool)
    metric_sink().log_summary({"images": len(frame), "ungradable_fraction": float(1 - gradable.mean()) if len(frame) else 0.0,
                               # of the gradable photos: the others get no call
                               "referable_share": float(frame["referable"][gradable].astype(bool).mean())
                               if gradable.any() else float("nan"),
                               "referable_threshold": loaded.grader.spec.referable_threshold})
    artifacts.log_artifact(path, "predictions")
    return frame
