"""predict's CSV from a model whose answer is known: every column worked out by hand."""

import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.cli import predict as predict_cli
from pipeline.tracking import registry

pytestmark = pytest.mark.slow  # logs a model (torch.export) per case


class FixedProbabilities(nn.Module):
    """A 'grader' that gives every photo the same five grade probabilities."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.register_buffer("probabilities", torch.tensor(probabilities))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.probabilities.expand(images.shape[0], -1)


@pytest.mark.parametrize("probabilities, grade, p_referable, referable", [
    ([0.10, 0.30, 0.25, 0.20, 0.15], 1, 0.60, True),  # most likely grade 1, yet 0.25 + 0.20 + 0.15 referable
    ([0.45, 0.15, 0.20, 0.10, 0.10], 0, 0.40, False),
])
def test_predict_columns_from_a_known_model(probabilities, grade, p_referable, referable, raw_dir, sqlite_tracking,
                                            tmp_path):
    import mlflow

    with mlflow.start_run():
        uri, _ = registry.log_model(FixedProbabilities(probabilities), torch.rand(2, 3, 32, 32))
    output = tmp_path / "predictions.csv"
    assert predict_cli.main(["--model_uri", uri, "--input", str(raw_dir / "test_img.csv"), "--output", str(output)]) == 0
    frame = pd.read_csv(output, dtype={"id": str})
    assert frame["id"].tolist() == pd.read_csv(raw_dir / "test_img.csv", header=None, dtype=str)[0].tolist()
    assert (frame["predicted_grade"] == grade).all()
    for column, value in enumerate(probabilities):
        assert frame[f"p_grade_{column}"].to_numpy() == pytest.approx(value, abs=1e-6)
    assert frame["p_referable"].to_numpy() == pytest.approx(p_referable, abs=1e-6)
    assert (frame["referable"] == referable).all()
