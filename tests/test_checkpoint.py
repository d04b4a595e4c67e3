"""The checkpoint schema: what is written is what is restored, and other versions are refused."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import checkpoint
from pipeline.engine import EvalOutput, FitState
from pipeline.errors import DataError


def fit_state(model: nn.Module) -> FitState:
    best_test = EvalOutput(0.7, 0.5, np.array([0, 2]), np.full((2, 5), 0.2, dtype=np.float32))
    best_val = EvalOutput(0.6, 1.0, np.array([3]), np.full((1, 5), 0.2, dtype=np.float32))
    return FitState(epoch=2, history=[{"val_kappa": 0.1}, {"val_kappa": 0.3}], best_epoch=2,
                    best_state={k: v.clone() for k, v in model.state_dict().items()}, best_test=best_test,
                    best_val=best_val)


def test_written_state_is_restored_with_the_rng(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = checkpoint.run_checkpoint_path(tmp_path, "run1")
    checkpoint.save_atomic(checkpoint.training_state({"lr": 0.1}, model, optimizer, None, fit_state(model)), path)
    expected_draw = torch.rand(3)  # what the RNG gives right after the checkpoint

    restored_model = nn.Linear(3, 5)
    restored_optimizer = torch.optim.SGD(restored_model.parameters(), lr=0.1, momentum=0.9)
    saved = checkpoint.load(path)
    state = checkpoint.restore(saved, restored_model, restored_optimizer, None)
    assert torch.equal(torch.rand(3), expected_draw)
    assert (state.epoch, state.best_epoch, state.history) == (2, 2, [{"val_kappa": 0.1}, {"val_kappa": 0.3}])
    assert torch.equal(restored_model.weight, model.weight)
    assert restored_optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert state.best_test.targets.tolist() == [0, 2] and saved["config"] == {"lr": 0.1}
    assert (state.best_val.loss, state.best_val.targets.tolist()) == (0.6, [3])


@pytest.mark.parametrize("payload, found", [({"format": 1, "model": {}}, "1"), ({"model": {}}, "None")])
def test_another_format_version_is_refused_naming_the_file(payload, found, tmp_path):
    path = tmp_path / "last.pt"
    torch.save(payload, path)
    with pytest.raises(DataError, match=f"checkpoint {path} has format {found}, but this version of retina-flow "
                                        f"reads format {checkpoint.FORMAT_VERSION} only"):
        checkpoint.load(path)


def test_a_damaged_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=f"checkpoint {path} cannot be loaded"):
        checkpoint.load(path)
