import numpy as np
import pytest
import torch

from pipeline.data.balance import balanced_weights, class_weights
from pipeline.data.sampling import EpochSampler

# 6 x grade 0, 2 x grade 1, 2 x grade 2, none of 3 and 4: n = 10, five grades.
GRADES = np.array([0] * 6 + [1] * 2 + [2] * 2)


def test_inverse_frequency_weights_by_hand():
    # n / (5 * n_g): 10 / 30, 10 / 10, 10 / 10; absent grades get 0.
    assert balanced_weights(GRADES) == pytest.approx([1 / 3, 1, 1, 0, 0])
    assert torch.allclose(class_weights(GRADES, "inverse"), torch.tensor([1 / 3, 1.0, 1.0, 0.0, 0.0]))


def test_square_root_inverse_is_milder():
    weights = class_weights(GRADES, "sqrt_inverse")
    assert torch.allclose(weights, torch.tensor([(1 / 3) ** 0.5, 1.0, 1.0, 0.0, 0.0]))
    assert weights[0] > class_weights(GRADES, "inverse")[0]


def test_no_weighting():
    assert class_weights(GRADES, "none") is None


def test_weighted_loss_counts_rare_grades_more():
    logits = torch.zeros(2, 5)
    targets = torch.tensor([0, 1])
    weights = class_weights(GRADES, "inverse")
    per_image = torch.nn.CrossEntropyLoss(weight=weights, reduction="none")(logits, targets)
    assert per_image[1] / per_image[0] == pytest.approx(3.0)


def weighted_draw(grades, seed, epoch):
    sampler = EpochSampler(len(grades), seed, weights=balanced_weights(grades)[grades])
    sampler.set_epoch(epoch)
    return [index for index, _ in sampler]


def test_weighted_sampler_draws_grades_evenly_and_is_seeded():
    grades = np.array([0] * 80 + [1] * 10 + [2] * 10)
    drawn = grades[weighted_draw(grades, seed=0, epoch=1)]
    assert len(drawn) == 100
    shares = np.bincount(drawn, minlength=3) / 100
    assert all(0.2 < share < 0.47 for share in shares)  # ~1/3 each instead of 80/10/10 %
    assert weighted_draw(grades, 0, 1) == weighted_draw(grades, 0, 1)
    assert weighted_draw(grades, 0, 1) != weighted_draw(grades, 0, 2)
