"""The loops with a dummy model and tensors: no files, no tracking."""

import math
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.catalog import SUPPORTED_MODELS
from pipeline.data.dataset import normalize_batch
from pipeline.engine import evaluate, fit, train_one_epoch
from pipeline.hardware import Accelerator
from pipeline.models import build_model

CPU = Accelerator(torch.device("cpu"))


class Dummy(nn.Module):
    """Linear model with the ResNet attribute the freezing logic relies on (``fc``)."""

    def __init__(self, features: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(features, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.body(x))


def separable_loader(n=80, seed=0, batch_size=16, shuffle=True):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 5
    inputs = torch.randn(n, 12, generator=generator) * 0.3
    inputs[torch.arange(n), targets] += 3.0
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=shuffle, generator=generator)


def test_training_learns_a_separable_problem():
    torch.manual_seed(0)
    model, loader = Dummy(), separable_loader()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    started = time.perf_counter()
    first = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU)
    outside = time.perf_counter() - started
    for _ in range(5):
        last = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU)
    assert last["loss"] < first["loss"] and last["accuracy"] > 0.9
    # Images (80), not batches (5), per second of the epoch: at least 80 over the time around it.
    assert 80 / outside <= first["images_per_sec"] < math.inf


def test_evaluate_counts_correct_predictions():
    model = nn.Sequential(nn.Flatten(), nn.Identity())  # logits = the first 5 inputs
    inputs = torch.zeros(4, 5)
    inputs[0, 1] = inputs[1, 2] = inputs[2, 3] = inputs[3, 0] = 1.0
    targets = torch.tensor([1, 2, 0, 0])  # 3 of 4 right
    out = evaluate(model, DataLoader(TensorDataset(inputs, targets), batch_size=3), nn.CrossEntropyLoss(), CPU)
    assert out.accuracy == 0.75
    assert out.probabilities.shape == (4, 5) and out.targets.tolist() == [1, 2, 0, 0]
    expected_loss = nn.CrossEntropyLoss()(inputs, targets).item()
    assert out.loss == pytest.approx(expected_loss, rel=1e-6)


def test_fit_selects_on_validation_never_on_test():
    torch.manual_seed(0)
    model = Dummy()
    seen = []
    # The test loader has labels shifted by one: a model that learns gets *worse* on test, so a
    # selection that peeked at test would prefer the first epoch.
    test_inputs, test_targets = separable_loader(shuffle=False).dataset.tensors
    shifted = DataLoader(TensorDataset(test_inputs, (test_targets + 1) % 5), batch_size=16)
    result = fit(model, train_loader=separable_loader(), val_loader=separable_loader(seed=1, shuffle=False),
                 test_loader=shifted, criterion=nn.CrossEntropyLoss(),
                 optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), accel=CPU,
                 epochs=4, on_epoch_end=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert [epoch for epoch, _ in seen] == [1, 2, 3, 4]
    assert set(seen[0][1]) == {"train_loss", "train_accuracy", "train_images_per_sec", "lr", "val_loss",
                               "val_accuracy", "test_loss", "test_accuracy"}
    assert [metrics["lr"] for _, metrics in seen] == [0.05] * 4  # the optimizer's own, with no schedule
    # Highest validation accuracy; ties go to the lower validation loss.
    expected_epoch = max(seen, key=lambda item: (item[1]["val_accuracy"], -item[1]["val_loss"]))[0]
    assert result.best_epoch == expected_epoch
    assert result.best_score == max(m["val_accuracy"] for _, m in seen)
    assert result.best_test.accuracy == seen[result.best_epoch - 1][1]["test_accuracy"]
    assert result.best_epoch > 1  # later epochs are better on validation, worse on test


class DivergesAfter(Dummy):
    """Outputs NaN once ``diverged`` is set, as a model whose weights blew up does."""

    diverged = False

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if self.diverged else out


@pytest.mark.parametrize("diverge_after", [1, 0], ids=["after-epoch-1", "from-the-start"])
def test_a_diverged_epoch_is_never_selected(diverge_after):
    """NaN outputs argmax to grade 0: on a validation set of grade-0 images that "scores" 100%."""
    torch.manual_seed(0)
    model = DivergesAfter()
    model.diverged = diverge_after == 0
    inputs, _ = separable_loader(shuffle=False).dataset.tensors
    all_grade_0 = DataLoader(TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.long)), batch_size=16)
    seen = []

    def after_epoch(epoch, metrics):
        seen.append(metrics)
        model.diverged = model.diverged or epoch >= diverge_after

    result = fit(model, train_loader=separable_loader(), val_loader=all_grade_0, test_loader=all_grade_0,
                 criterion=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.05), accel=CPU,
                 epochs=3, select_metric="val_accuracy", on_epoch_end=after_epoch)
    assert [m["val_accuracy"] for m in seen[diverge_after:]] == [1.0] * (3 - diverge_after)  # what argmax claims
    if diverge_after:
        assert result.best_epoch == 1 and result.best_score == seen[0]["val_accuracy"] < 1.0
    else:  # nothing to choose: the run's score is NaN, so it never wins a comparison of runs
        assert result.best_epoch == 1 and result.best_score != result.best_score


def test_best_state_is_a_snapshot_not_a_reference():
    torch.manual_seed(0)
    model = Dummy()
    result = fit(model, train_loader=separable_loader(), val_loader=separable_loader(seed=1),
                 test_loader=separable_loader(seed=2), criterion=nn.CrossEntropyLoss(),
                 optimizer=torch.optim.SGD(model.parameters(), lr=0.05), accel=CPU, epochs=1)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert not torch.equal(result.best_state["fc.weight"], model.fc.weight)


@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_frozen_epochs_change_only_the_head(name):
    torch.manual_seed(0)
    model = build_model(name, pretrained=False)
    inputs, targets = torch.rand(8, 3, 32, 32), torch.arange(8) % 5
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, train_loader=loader, val_loader=loader, test_loader=loader, criterion=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4),
        accel=CPU, epochs=1, freeze_epochs=1)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # BatchNorm statistics too stay as they were
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for the next phase


class Recorder(nn.Module):
    """A linear model over a 2x2 RGB image that keeps the inputs it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.fc(x.flatten(1))


def test_device_augmentation_gets_the_loaders_draws_before_normalisation():
    images = torch.randint(0, 256, (6, 3, 2, 2), dtype=torch.uint8)
    draws = torch.rand(6, 3, dtype=torch.float64)
    loader = DataLoader(TensorDataset(images, torch.arange(6) % 5, draws), batch_size=3)
    calls = []

    def flip_all(batch: torch.Tensor, batch_draws: torch.Tensor) -> torch.Tensor:
        calls.append((batch.clone(), batch_draws.clone()))
        return batch.flip(-1)

    model = Recorder()
    train_one_epoch(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                    augment=flip_all)
    assert [len(b) for b, _ in calls] == [3, 3]
    assert torch.equal(torch.cat([b for b, _ in calls]), images)  # uint8, as the loader made them
    assert torch.equal(torch.cat([d for _, d in calls]), draws)  # each image with its own draws
    assert torch.equal(torch.cat(model.inputs), normalize_batch(images.flip(-1)))  # then normalised


def resnet_outputs(name: str, accel: Accelerator, train_steps: int = 0) -> torch.Tensor:
    """Logits of a seeded ResNet on a fixed batch after ``train_steps`` SGD steps under ``accel``."""
    torch.manual_seed(0)
    model = accel.prepare(build_model(name, pretrained=False))
    inputs, targets = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.arange(4) % 5
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(train_steps):
        train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, accel)
    out = evaluate(model, loader, nn.CrossEntropyLoss(), accel)
    return torch.from_numpy(out.probabilities)


@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_channels_last_matches_fp32_contiguous(name):
    reference = resnet_outputs(name, CPU, train_steps=1)
    channels_last = resnet_outputs(name, Accelerator(torch.device("cpu"), channels_last=True), train_steps=1)
    assert torch.allclose(channels_last, reference, atol=1e-4)


@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_bf16_autocast_stays_close_to_fp32(name):
    reference = resnet_outputs(name, CPU)
    bf16 = resnet_outputs(name, Accelerator(torch.device("cpu"), amp_dtype=torch.bfloat16, channels_last=True))
    assert bf16.dtype == torch.float32  # probabilities are computed in fp32 whatever the autocast
    assert (bf16 - reference).abs().max() < 0.05
    assert torch.equal(bf16.argmax(dim=1), reference.argmax(dim=1))


def test_fit_sets_and_logs_each_epochs_lr():
    torch.manual_seed(0)
    model = Dummy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    fit(model, train_loader=separable_loader(), val_loader=separable_loader(seed=1), test_loader=separable_loader(seed=2),
        criterion=nn.CrossEntropyLoss(), optimizer=optimizer, accel=CPU, epochs=3,
        lr_of_epoch=lambda epoch: 0.1 / epoch, on_epoch_end=lambda epoch, metrics: seen.append(metrics["lr"]))
    assert seen == [0.1, 0.05, 0.1 / 3] and optimizer.param_groups[0]["lr"] == 0.1 / 3


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_on_a_terminal_only(terminal, capsys, monkeypatch):
    """An epoch's bars show the running loss and images/s on a terminal; nothing in a log file."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    import functools

    from tqdm import tqdm

    import pipeline.engine

    # Every batch drawn: these epochs take milliseconds, less than tqdm's refresh interval.
    monkeypatch.setattr(pipeline.engine, "tqdm", functools.partial(tqdm, mininterval=0, miniters=1))
    torch.manual_seed(0)
    model, loader = Dummy(), separable_loader()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU, progress="epoch 1/1 train")
    evaluate(model, separable_loader(shuffle=False), nn.CrossEntropyLoss(), CPU, progress="epoch 1/1 val")
    shown = capsys.readouterr().err
    if terminal:
        assert "epoch 1/1 train" in shown and "epoch 1/1 val" in shown and "5/5" in shown
        assert f"loss={train['loss']:.4f}" in shown and "img_s=" in shown  # the last batch's running figures
    else:
        assert shown == ""
