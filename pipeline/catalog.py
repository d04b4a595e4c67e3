"""The project's named things, each listed once: grades, models and their ImageNet weights,
configuration labels, and metric names. Everything else imports them from here.

No heavy imports: the config, the data readers and the tracking package all read this module.
"""

from __future__ import annotations

from typing import NamedTuple

# --- Grades -------------------------------------------------------------------------------------

NUM_GRADES = 5  # 0 none, 1 mild, 2 moderate, 3 severe, 4 proliferative DR
GRADES = tuple(range(NUM_GRADES))
GRADE_NAMES = ("0 none", "1 mild", "2 moderate", "3 severe", "4 prolif.")
# Moderate DR or worse is what screening programmes refer to an ophthalmologist.
REFERABLE_GRADE = 2
# An image is called referable when P(grade >= REFERABLE_GRADE) reaches this.
DEFAULT_REFERABLE_THRESHOLD = 0.5

# --- Models -------------------------------------------------------------------------------------

# torchvision model name -> its ImageNet weights (``torchvision.models.get_weight`` resolves the
# name). V1 is what the course labs' ``pretrained=True`` loaded; keep it so results stay comparable.
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
}
SUPPORTED_MODELS = tuple(IMAGENET_WEIGHTS)


# The course labs' training recipe: the train defaults. Labels leave it unsaid, so the labs' study
# reads as it always has; any other recipe (experiments/field.yaml's ``field``) is named in them.
LAB_RECIPE = "lab"


def config_label(model: str, pretrained: bool, recipe: str = LAB_RECIPE) -> str:
    """How a configuration of the study is named in tables, figures, tags and run names."""
    label = f"{model} {'pretrained' if pretrained else 'scratch'}"
    return label if recipe == LAB_RECIPE else f"{label} {recipe}"


def run_name_of(model: str, pretrained: bool, recipe: str = LAB_RECIPE) -> str:
    """A configuration's train run name: its label with hyphens (``resnet50-scratch``)."""
    return config_label(model, pretrained, recipe).replace(" ", "-")


class Configuration(NamedTuple):
    """A cell of the study's grid: depth x ImageNet pretraining x training recipe."""

    model: str
    pretrained: bool
    recipe: str = LAB_RECIPE

    @property
    def label(self) -> str:
        return config_label(self.model, self.pretrained, self.recipe)


# --- Metrics ------------------------------------------------------------------------------------

# What the evaluation loop measures on the validation and test sets every epoch.
EVAL_METRICS = ("loss", "accuracy", "kappa", "balanced_accuracy", "macro_f1",
                "referable_sensitivity", "referable_specificity", "referable_auc")
# Per-epoch metrics that measure speed, not the model: they differ between otherwise identical runs.
SPEED_METRICS = ("train_images_per_sec",)
# Logged by every train run with step = epoch (counting from 1).
PER_EPOCH_METRICS = ("train_loss", "train_accuracy", "lr", *SPEED_METRICS,
                     *(f"{split}_{name}" for split in ("val", "test") for name in EVAL_METRICS))
# Per-epoch validation metrics that can choose the best epoch and the champion; all: higher is better.
SELECT_METRICS = ("val_kappa", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_referable_auc")
# The per-epoch metrics compare draws as curves (read back with their full history).
CURVE_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy", "val_kappa", "test_kappa")
# Test metrics of a selected model logged with 95% bootstrap bounds (``{name}_ci_low/_ci_high``).
INTERVAL_METRICS = ("accuracy", "kappa", "referable_auc", "referable_sensitivity", "referable_specificity",
                    "ece", "referable_ece", "brier", "nll")
# Of those, the ones the comparison table shows with their interval.
TABLE_INTERVAL_METRICS = ("kappa", "referable_auc")

# Training recipes: the labs' (sgd, constant) and the field's (adamw, cosine after a warm-up).
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
# Test-time augmentation: none, or the mean grade probabilities over the four flips of a photo.
TTA_MODES = ("none", "flips")
# The network's last layer: one logit per grade (the labs'), or cumulative P(grade >= k), k = 1..4.
HEADS = ("classification", "ordinal")
# How probabilities become a grade: the most probable one (the labs'), or cut points on the
# expected grade fitted for quadratic weighted kappa on validation.
DECISIONS = ("argmax", "kappa_thresholds")
# Photo enhancement in the processed cache: none, or Ben Graham's local-average subtraction
# (Kaggle 2015). Each has a cache of its own, and a grader prepares photos with its own.
ENHANCEMENTS = ("none", "ben_graham")
# The public DR sets' own layouts that preprocess reads (see ``data.layouts``); ``labs`` is the
# course labs' four header-less CSVs.
LAYOUTS = ("labs", "kaggle_eyepacs", "aptos2019", "messidor2", "idrid", "ddr", "folder")
# What preprocess makes of a set: the study's train/val/test, or (``external``) every photo a test
# photo, for validating a champion trained elsewhere.
DATASET_ROLES = ("study", "external")
# Training augmentation: the labs' flips + rotation, or the field's flips, any rotation, shift,
# scale, brightness and contrast (after YijinHuang/pytorch-classification's EyePACS config).
AUGMENT_RECIPES = ("lab", "field")

# Why the grader refuses a photo (a prediction row's ``ungradable_reason``), in the order they are
# checked (see ``gradability``): no field of view, an unreadable file, a quality measure beyond its
# threshold, and the network's own view of a photo unlike those it learnt from.
NOT_A_FUNDUS = "not a fundus photograph"
UNREADABLE = "unreadable photo"
TOO_DARK = "too dark"
OVEREXPOSED = "over-exposed"
OUT_OF_FOCUS = "out of focus"
LOW_CONTRAST = "low contrast"
UNLIKE_TRAINING = "unlike the training photos"
UNGRADABLE_REASONS = (NOT_A_FUNDUS, UNREADABLE, TOO_DARK, OVEREXPOSED, OUT_OF_FOCUS, LOW_CONTRAST, UNLIKE_TRAINING)
