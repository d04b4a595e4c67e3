"""Learning rates per epoch against their formulas, and the two optimizers."""

import math

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.schedules import build_optimizer, epoch_lr


def lrs(schedule, epochs, warmup=0, base=0.1):
    return [epoch_lr(e, base_lr=base, epochs=epochs, schedule=schedule, warmup_epochs=warmup) for e in range(1, epochs + 1)]


def test_constant_is_the_labs_lr_every_epoch():
    assert lrs("constant", 4) == [0.1] * 4


def test_cosine_starts_at_the_base_lr_and_falls_by_half_a_cosine():
    expected = [0.1 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(6)]
    assert lrs("cosine", 6) == pytest.approx(expected, rel=1e-12)
    assert lrs("cosine", 6)[3] == pytest.approx(0.05)  # halfway: half the lr
    assert all(a > b > 0 for a, b in zip(lrs("cosine", 6), lrs("cosine", 6)[1:]))


def test_step_falls_tenfold_after_each_third():
    assert lrs("step", 9) == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 3, rel=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_warm_up_rises_linearly_then_the_schedule_starts_at_the_base_lr(schedule):
    with_warmup = lrs(schedule, 8, warmup=3)
    assert with_warmup[:3] == pytest.approx([0.025, 0.05, 0.075], rel=1e-12)
    assert with_warmup[3:] == pytest.approx(lrs(schedule, 5), rel=1e-12)  # the 5 epochs after it


def test_unknown_schedule_and_optimizer_name_the_choices():
    with pytest.raises(ConfigError, match="lr_schedule='linear' is not supported; choose one of constant, cosine, step"):
        epoch_lr(1, base_lr=0.1, epochs=2, schedule="linear")
    with pytest.raises(ConfigError, match="optimizer='adam' is not supported; choose one of sgd, adamw"):
        build_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, weight_decay=0)


def test_optimizers_are_torchs_with_the_given_settings():
    weight = torch.nn.Parameter(torch.zeros(2))
    sgd = build_optimizer("sgd", [weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    adamw = build_optimizer("adamw", [weight], lr=0.001, momentum=0.9, weight_decay=0.05)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 0.001 and adamw.defaults["weight_decay"] == 0.05
