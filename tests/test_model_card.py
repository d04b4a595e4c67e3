"""The model card says what the model is, what it learnt from, how it did and what it is not for."""

import pytest

from pipeline.config import TrainConfig, to_dict
from pipeline.model_card import (
    PERFORMANCE_HEADING,
    VALIDATED_HEADING,
    CardFacts,
    model_card,
    run_description,
    validated_on,
    with_validation,
)

METRICS = {"selected_test_accuracy": 0.44, "selected_test_accuracy_ci_low": 0.34, "selected_test_accuracy_ci_high": 0.54,
           "selected_val_kappa": 0.805, "selected_test_referable_sensitivity": 0.875}


def facts(**changes) -> CardFacts:
    values = dict(run_id="abc123", config=to_dict(TrainConfig(model="resnet50", pretrained=True, seed=7)),
                  dataset_name="224px", dataset_digest="e4c3bb0b",
                  grade_counts={"train": [48, 40, 51, 48, 53], "val": [11, 11, 13, 12, 13], "test": [10, 18, 24, 22, 26]},
                  synthetic=None, best_epoch=5, selection_score=0.805, metrics=METRICS, referable_threshold=0.5974,
                  operating_point_chosen=True, cache_size=224)
    return CardFacts(**(values | changes))


def test_the_card_states_configuration_data_selection_metrics_and_limits():
    card = model_card(facts())
    assert card.startswith("# retina-flow DR grader: resnet50 pretrained\n")
    assert "pretrained on ImageNet (`ResNet50_Weights.IMAGENET1K_V1`)" in card and "seed 7" in card
    assert "Dataset `224px` (MLflow digest `e4c3bb0b`)" in card
    assert "| val | 11 | 11 | 13 | 12 | 13 | 60 |" in card
    assert "Epoch 5 of 10, chosen by `val_kappa` on validation (0.805)" in card
    assert "**0.5974**: the most specific threshold that finds 90% of the referable eyes" in card
    assert "| Accuracy (5 grades) | - | 0.440 [0.340, 0.540] |" in card  # a missing value shows as "-"
    assert "| Quadratic weighted kappa | 0.805 | - |" in card  # no interval logged: the value alone
    assert "`predicted_grade`, `p_grade_0`" in card and "quality 95" in card
    assert "**Not a medical device.**" in card
    assert "synthetic" not in card.lower()


def test_a_synthetic_training_set_is_said_plainly():
    card = model_card(facts(synthetic={"seed": 0, "size": [512, 384]}))
    assert "**Trained and evaluated on synthetic photos**" in card and "say nothing about real patients" in card


def test_a_default_operating_point_is_not_passed_off_as_chosen():
    card = model_card(facts(referable_threshold=0.5, operating_point_chosen=False))
    assert "**0.5000**: the default, because none could be chosen on validation" in card
    assert "most specific threshold" not in card


@pytest.mark.parametrize("pretrained, expected", [(True, "**resnet50 pretrained**, seed 7"), (False, "**resnet50 scratch**")])
def test_the_run_description_summarises_the_selected_model(pretrained, expected):
    config = to_dict(TrainConfig(model="resnet50", pretrained=pretrained, seed=7))
    text = run_description(facts(config=config))
    assert expected in text and "Selected epoch **5**" in text and "accuracy 0.440 [0.340, 0.540]" in text
    assert "sensitivity 0.875," in text


def test_the_card_states_the_field_recipe_and_its_fitted_decision():
    field_config = to_dict(TrainConfig(model="resnet50", pretrained=True, head="ordinal", decision="kappa_thresholds",
                                       optimizer="adamw", lr_schedule="cosine", warmup_epochs=1, augment="field",
                                       tta="flips", fuse_eyes=True, enhance="ben_graham", recipe="field"))
    card = model_card(facts(config=field_config, cut_points=(0.61, 1.52, 2.4, 3.33), fuse_weight=0.25))
    assert card.startswith("# retina-flow DR grader: resnet50 pretrained field\n")
    assert "ordinal head" in card and "AdamW, lr 0.001 (cosine after 1 warm-up epoch(s))" in card
    assert "augmentation `field`" in card and "Ben Graham" in card
    assert "grade >= k from 0.610, 1.520, 2.400, 3.330" in card
    assert "four flips" in card and "weight **0.25**" in card and "The served model grades one photo alone" in card
    labs = model_card(facts())
    assert "5-grade classification head" in labs and "SGD momentum 0.9" in labs and "the most probable one (argmax)" in labs
    kept = model_card(facts(config=field_config, cut_points=None, fuse_weight=0.0))
    assert "no cut points beat it on validation" in kept


def test_the_card_and_description_state_rejection_rates_and_calibration():
    from pipeline.gradability import GradabilityThresholds

    metrics = METRICS | {"selected_val_ungradable_fraction": 0.012, "selected_test_ungradable_fraction": 0.031,
                         "selected_test_uncalibrated_ece": 0.142, "selected_test_ece": 0.048,
                         "selected_test_ece_ci_low": 0.03, "selected_test_ece_ci_high": 0.07}
    thresholds = GradabilityThresholds(min_brightness=38.5, max_overexposed=5.0, min_focus=6.2, min_contrast=9.1,
                                       max_novelty=41.0)
    card = model_card(facts(metrics=metrics, temperature=1.734, gradability=thresholds))
    assert "Refused: 1.2% of the validation photos, 3.1% of the test photos" in card
    assert "median grey level below 38.5 (`too dark`)" in card and "further than 41.00" in card
    assert "T = 1.734" in card
    assert "| Expected calibration error of the top grade (15 equal-mass bins) | - -> - | 0.142 -> 0.048 [0.030, 0.070] |" in card
    assert "retake it, or examine the eye in person" in card
    text = run_description(facts(metrics=metrics, temperature=1.734, gradability=thresholds))
    assert "refused as ungradable: 1.2% of validation, 3.1% of test photos" in text
    assert "temperature 1.734; test ECE 0.142 before, 0.048 [0.030, 0.070] after" in text


def test_validated_on_is_added_once_and_replaced_by_a_later_table():
    card = model_card(facts())
    first = with_validation(card, "| dataset |\n| --- |\n| internal test |")
    assert first.count(VALIDATED_HEADING) == 1 and "| internal test |" in first
    assert first.replace("\n\n" + validated_on("| dataset |\n| --- |\n| internal test |"), "\n") == card  # nothing else changed
    second = with_validation(first, "| dataset |\n| --- |\n| m2 |")
    assert second.count(VALIDATED_HEADING) == 1 and "| m2 |" in second and "| internal test |" not in second


def test_validated_on_follows_the_test_performance_so_a_cut_description_keeps_it():
    card = with_validation(model_card(facts()), "| dataset |\n| --- |\n| m2 |")
    sections = [line for line in card.splitlines() if line.startswith("## ")]
    assert sections.index(VALIDATED_HEADING) == sections.index(PERFORMANCE_HEADING) + 1 < len(sections) - 1
