"""predict's CSV from a grader whose answer is known: every column worked out by hand."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import predict as predict_cli
from pipeline.grading import Grader
from pipeline.photo_grader import GraderSpec
from pipeline.models import build_model
from pipeline.tracking import registry


def fixed_grader(probabilities: list[float], threshold: float, cut_points: tuple[float, ...] | None = None) -> Grader:
    """A real resnet18 whose head ignores the image: zero weights, log-probabilities as biases."""
    network = build_model("resnet18", pretrained=False)
    with torch.no_grad():
        network.fc.weight.zero_()
        network.fc.bias.copy_(torch.log(torch.tensor(probabilities)))
    return Grader(network, GraderSpec("resnet18", image_size=32, cache_size=64, referable_threshold=threshold,
                                      cut_points=cut_points))


@pytest.mark.parametrize("probabilities, threshold, cut_points, grade, p_referable, referable", [
    ([0.10, 0.30, 0.25, 0.20, 0.15], 0.5, None, 1, 0.60, True),  # most likely grade 1, yet 0.25 + 0.20 + 0.15 referable
    ([0.10, 0.30, 0.25, 0.20, 0.15], 0.65, None, 1, 0.60, False),  # the same, at a stricter operating point
    ([0.45, 0.15, 0.20, 0.10, 0.10], 0.3, None, 0, 0.40, True),
    # kappa_thresholds: the expected grade 0.3 + 0.5 + 0.6 + 0.6 = 2.0 reaches two of these cut points
    ([0.10, 0.30, 0.25, 0.20, 0.15], 0.5, (0.4, 1.9, 2.1, 3.0), 2, 0.60, True),
    ([0.10, 0.30, 0.25, 0.20, 0.15], 0.5, (0.4, 1.9, 2.0, 3.0), 3, 0.60, True),  # reaching a cut point counts
])
@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_predict_columns_from_a_known_grader(probabilities, threshold, cut_points, grade, p_referable, referable,
                                             raw_dir, sqlite_tracking, tmp_path):
    photo = next((raw_dir / "images").iterdir()).read_bytes()
    with mlflow.start_run():
        uri, _ = registry.log_grader(fixed_grader(probabilities, threshold, cut_points), [photo, photo])
    output = tmp_path / "predictions.csv"
    assert predict_cli.main(["--model_uri", uri, "--input", str(raw_dir / "test_img.csv"), "--output", str(output)]) == 0
    frame = pd.read_csv(output, dtype={"id": str})
    assert frame["id"].tolist() == pd.read_csv(raw_dir / "test_img.csv", header=None, dtype=str)[0].tolist()
    assert (frame["predicted_grade"] == grade).all()
    for column, value in enumerate(probabilities):
        assert frame[f"p_grade_{column}"].to_numpy() == pytest.approx(np.full(len(frame), value), abs=1e-6)
    assert frame["p_referable"].to_numpy() == pytest.approx(np.full(len(frame), p_referable), abs=1e-6)
    assert (frame["referable"] == referable).all()
