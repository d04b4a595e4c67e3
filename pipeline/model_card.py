"""The model card of a trained grader: markdown saying what the model is, what it learnt from, how
well it did (with 95% intervals), how to call it, and what it is not for.

Logged as ``model_card.md`` on every train run; ``main`` puts the champion's card on the registered
model and its version, where the MLflow UI shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.catalog import GRADE_NAMES, IMAGENET_WEIGHTS, INTERVAL_METRICS, LAB_RECIPE, REFERABLE_GRADE, config_label
from pipeline.data.prepare import CACHE_JPEG_QUALITY
from pipeline.decision import CutPoints
from pipeline.catalog import UNGRADABLE_REASONS
from pipeline.gradability import GradabilityThresholds
from pipeline.photo_grader import PREDICTION_COLUMNS

CARD_ARTIFACT = "model_card.md"  # on every train run
PERFORMANCE_HEADING = "## Performance on the photos it grades (95% intervals: patient-level bootstrap)"
# How the card names each metric that has an interval (catalog.INTERVAL_METRICS).
METRIC_TITLES = {
    "accuracy": "Accuracy (5 grades)",
    "kappa": "Quadratic weighted kappa",
    "referable_auc": f"Referable DR (grade >= {REFERABLE_GRADE}) ROC AUC",
    "referable_sensitivity": "Referable DR sensitivity at the operating point",
    "referable_specificity": "Referable DR specificity at the operating point",
    "ece": "Expected calibration error of the top grade (15 equal-mass bins)",
    "referable_ece": f"Expected calibration error of P(grade >= {REFERABLE_GRADE})",
    "brier": "Brier score (5 grades)",
    "nll": "Negative log-likelihood",
}
CALIBRATION_METRICS = ("ece", "referable_ece", "brier", "nll")


@dataclass
class CardFacts:
    """What the card states, gathered by the train step."""

    run_id: str
    config: dict[str, Any]  # the resolved train config
    dataset_name: str
    dataset_digest: str
    grade_counts: dict[str, list[int]]  # split -> images per grade
    synthetic: dict[str, Any] | None  # the generator's record, when the photos were synthetic
    best_epoch: int
    selection_score: float
    metrics: dict[str, float]  # selected_val_* and selected_test_* with their _ci_low/_ci_high
    referable_threshold: float
    operating_point_chosen: bool  # False: validation could not choose one, the default was used
    cache_size: int
    cut_points: CutPoints | None = None  # decision=kappa_thresholds and they beat argmax on validation
    fuse_weight: float = 0.0  # the fellow eye's weight (fuse_eyes)
    temperature: float = 1.0  # calibration.fit_temperature on validation
    gradability: GradabilityThresholds | None = None  # when it refuses a photo


def with_interval(metrics: dict[str, float], name: str) -> str:
    """``0.812 [0.741, 0.868]``: a metric with its logged 95% interval, where it has one."""
    value = metrics.get(name)
    if value is None:
        return "-"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _initialisation(cfg: dict[str, Any]) -> str:
    return f"pretrained on ImageNet (`{IMAGENET_WEIGHTS[cfg['model']]}`)" if cfg["pretrained"] else "trained from scratch"


def _head(cfg: dict[str, Any]) -> str:
    if cfg.get("head") == "ordinal":
        return "ordinal head (cumulative link: P(grade >= k), k = 1..4, turned into 5 grade probabilities)"
    return "5-grade classification head"


def _training(cfg: dict[str, Any]) -> str:
    optimizer = (f"SGD momentum {cfg['momentum']}" if cfg.get("optimizer", "sgd") == "sgd" else "AdamW")
    schedule = cfg.get("lr_schedule", "constant")
    warmup = f" after {cfg['warmup_epochs']} warm-up epoch(s)" if cfg.get("warmup_epochs") else ""
    return (f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {optimizer}, lr {cfg['lr']} ({schedule}{warmup}), "
            f"weight decay {cfg['weight_decay']}, augmentation `{cfg.get('augment', 'lab')}`, "
            f"class weighting `{cfg['class_weighting']}`, seed {cfg['seed']}")


def _decision(facts: CardFacts) -> list[str]:
    cfg = facts.config
    lines = []
    if facts.cut_points is not None:
        lines.append("- Grade: cut points on the expected grade (sum of k * p_k) fitted for quadratic weighted kappa "
                     "on validation: grade >= k from " + ", ".join(f"{c:.3f}" for c in facts.cut_points) + ".")
    elif cfg.get("decision") == "kappa_thresholds":
        lines.append("- Grade: the most probable one (argmax): no cut points beat it on validation.")
    else:
        lines.append("- Grade: the most probable one (argmax).")
    if cfg.get("tta", "none") != "none":
        lines.append(f"- Test-time augmentation `{cfg['tta']}`: the mean probabilities over the four flips of a photo.")
    if cfg.get("fuse_eyes"):
        lines.append(f"- Both eyes: where a patient's two photos are graded together (evaluate, predict), each eye's "
                     f"probabilities are blended with the other eye's at weight **{facts.fuse_weight:.2f}** "
                     "(chosen on validation). The served model grades one photo alone.")
    return lines


def _rate(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    return "-" if value is None else f"{value:.1%}"


def _gradability(facts: CardFacts) -> list[str]:
    thresholds, metrics = facts.gradability, facts.metrics
    if thresholds is None:
        return []
    novelty = ("never (no novelty model)" if thresholds.max_novelty is None else
               f"its features lie further than {thresholds.max_novelty:.2f} (Mahalanobis) from every grade's training photos")
    return [
        "## Which photos it grades",
        "It refuses a photo as ungradable, with the first reason that applies: no fundus found (`not a fundus "
        "photograph`), a file it cannot read (`unreadable photo`), a field with median grey level below "
        f"{thresholds.min_brightness:.1f} (`too dark`), more than {thresholds.max_overexposed:.2f}% burnt out "
        f"(`over-exposed`), fine detail below {thresholds.min_focus:.2f}% of its brightness (`out of focus`), "
        f"grey-level spread below {thresholds.min_contrast:.2f}% of it (`low contrast`), or when {novelty} "
        "(`unlike the training photos`). Each threshold was fitted on the photos it learnt from.",
        f"- Refused: {_rate(metrics, 'selected_val_ungradable_fraction')} of the validation photos, "
        f"{_rate(metrics, 'selected_test_ungradable_fraction')} of the test photos.",
        "- An ungradable photo gets no grade and no referable call: retake it, or examine the eye in person.",
        "",
    ]


def _calibration(facts: CardFacts) -> list[str]:
    metrics = facts.metrics
    lines = ["## Calibration",
             f"Its probabilities are temperature-scaled (T = {facts.temperature:.3f}, fitted for the negative "
             "log-likelihood of the gradable validation photos); the cut points and the operating point were "
             "fitted after it. Before -> after, gradable photos (95% intervals):", "",
             "| metric | validation | test |", "|---|---|---|"]
    for name in CALIBRATION_METRICS:
        cells = [f"{with_interval(metrics, f'selected_{split}_uncalibrated_{name}')} -> "
                 f"{with_interval(metrics, f'selected_{split}_{name}')}" for split in ("val", "test")]
        lines.append(f"| {METRIC_TITLES[name]} | " + " | ".join(cells) + " |")
    return lines + [""]


def model_card(facts: CardFacts) -> str:
    """The card as markdown."""
    cfg = facts.config
    label = config_label(cfg["model"], cfg["pretrained"], cfg.get("recipe", LAB_RECIPE))
    lines = [f"# retina-flow DR grader: {label}", ""]
    if facts.synthetic is not None:
        lines += ["> **Trained and evaluated on synthetic photos** made by retina-flow's generator "
                  f"(seed {facts.synthetic.get('seed')}, {facts.synthetic.get('size')} px). It has never seen a real "
                  "fundus photograph: its figures below say nothing about real patients.", ""]
    lines += [
        "Grades colour fundus photographs into the five diabetic retinopathy grades "
        f"({', '.join(GRADE_NAMES)}) and flags referable DR (grade {REFERABLE_GRADE} or worse).",
        "",
        "## Configuration",
        f"- Network: torchvision `{cfg['model']}`, {_initialisation(cfg)}, "
        f"{_head(cfg)}; input {cfg['image_size']} px",
        f"- Training: {_training(cfg)}",
        f"- Train run: `{facts.run_id}`",
        "",
        "## Training data",
        f"- Dataset `{facts.dataset_name}` (MLflow digest `{facts.dataset_digest}`), split by patient",
        "",
        "| split | " + " | ".join(GRADE_NAMES) + " | images |",
        "|---|" + "---|" * (len(GRADE_NAMES) + 1),
    ]
    for split, counts in facts.grade_counts.items():
        lines.append(f"| {split} | " + " | ".join(str(c) for c in counts) + f" | {sum(counts)} |")
    lines += [
        "",
        "## Selection and operating point",
        f"- Epoch {facts.best_epoch} of {cfg['epochs']}, chosen by `{cfg['select_metric']}` on validation "
        f"({facts.selection_score:.3f}); test data never chose anything.",
        f"- Referable when P(grade >= {REFERABLE_GRADE}) >= **{facts.referable_threshold:.4f}**: "
        + (f"the most specific threshold that finds {cfg['referable_target_sensitivity']:.0%} of the referable eyes "
           "of the validation set." if facts.operating_point_chosen else
           "the default, because none could be chosen on validation (no referable eye there, or the model's "
           "outputs were not finite)."),
        *_decision(facts),
        "",
        *_gradability(facts),
        *_calibration(facts),
        PERFORMANCE_HEADING,
        "",
        "| metric | validation | test |",
        "|---|---|---|",
    ]
    for name in INTERVAL_METRICS:
        lines.append(f"| {METRIC_TITLES[name]} | {with_interval(facts.metrics, f'selected_val_{name}')} | "
                     f"{with_interval(facts.metrics, f'selected_test_{name}')} |")
    lines += [
        "",
        "## Input contract",
        "- `mlflow models serve` / pyfunc input: a DataFrame with one string column `image`, each row the "
        "base64-encoded bytes of one photo file (JPEG, PNG, TIFF, BMP or DICOM, any size, colour or greyscale).",
        f"- Inside: the field of view is found, the square around it cropped (black outside the field), resized to {facts.cache_size} px"
        + (", enhanced as Ben Graham's (local average colour subtracted, rim masked)"
           if cfg.get("enhance", "none") == "ben_graham" else "")
        + f" and JPEG-encoded (quality {CACHE_JPEG_QUALITY}) exactly as `preprocess` caches training photos, then "
        f"resized to {cfg['image_size']} px and ImageNet-normalised.",
        "- Output per photo: " + ", ".join(f"`{column}`" for column in PREDICTION_COLUMNS) + ".",
        "- A photo it refuses is a row with `gradable` false, `ungradable_reason` one of "
        + ", ".join(f"`{reason}`" for reason in UNGRADABLE_REASONS)
        + ", `predicted_grade` -1 and no `referable` call: retake it, or examine the eye in person. Only a row "
        "that is not base64 fails the request (HTTP 400, naming the row).",
        "",
        "## Intended use and limits",
        "- For research and teaching on diabetic retinopathy grading: comparing recipes, reproducing the course "
        "labs, building screening prototypes.",
        "- **Not a medical device.** It is not cleared or approved for clinical use and must not be used to diagnose, "
        "to refer or to decide anyone's care.",
        "- It grades one photo of one eye at a time. Photos from other cameras, populations or image quality than "
        "its training data were not evaluated; the figures above hold for data like the test split only.",
    ]
    return "\n".join(lines) + "\n"


def run_description(facts: CardFacts) -> str:
    """A train run's description in the MLflow UI (markdown): what it is and how it did, in brief."""
    cfg = facts.config
    metrics = facts.metrics
    return "\n".join([
        f"**{config_label(cfg['model'], cfg['pretrained'], cfg.get('recipe', LAB_RECIPE))}**, seed {cfg['seed']}: {cfg['epochs']} epochs at "
        f"{cfg['image_size']} px, batch {cfg['batch_size']}, lr {cfg['lr']}.",
        "",
        f"Selected epoch **{facts.best_epoch}** by `{cfg['select_metric']}` on validation ({facts.selection_score:.3f}). "
        "On test (95% CI):",
        "",
        f"- accuracy {with_interval(metrics, 'selected_test_accuracy')}",
        f"- quadratic weighted kappa {with_interval(metrics, 'selected_test_kappa')}",
        f"- referable DR AUC {with_interval(metrics, 'selected_test_referable_auc')}",
        f"- at the operating point P(grade >= {REFERABLE_GRADE}) >= {facts.referable_threshold:.4f}: sensitivity "
        f"{with_interval(metrics, 'selected_test_referable_sensitivity')}, specificity "
        f"{with_interval(metrics, 'selected_test_referable_specificity')}",
        f"- refused as ungradable: {_rate(metrics, 'selected_val_ungradable_fraction')} of validation, "
        f"{_rate(metrics, 'selected_test_ungradable_fraction')} of test photos (the figures above are the graded ones')",
        f"- calibration: temperature {facts.temperature:.3f}; test ECE "
        f"{with_interval(metrics, 'selected_test_uncalibrated_ece')} before, "
        f"{with_interval(metrics, 'selected_test_ece')} after",
        "",
        f"The model card is the artifact `{CARD_ARTIFACT}`.",
    ]) + "\n"


VALIDATED_HEADING = "## Validated on"


def validated_on(table_markdown: str) -> str:
    """The card's section on the datasets the champion was evaluated on once chosen: its internal
    test split and every external set, at its own operating point (a markdown table)."""
    return "\n".join([
        VALIDATED_HEADING, "",
        "Evaluated after it was chosen, never trained or selected on, at its own operating point; n is the "
        "photos it graded (95% intervals: patient-level bootstrap):", "",
        table_markdown, ""])


def with_validation(card: str, table_markdown: str) -> str:
    """``card`` with its "Validated on" section (replacing an earlier one) right after the section
    on its test performance, so that a description cut to fit the registry keeps it."""
    start = card.find(f"\n{VALIDATED_HEADING}\n")
    if start >= 0:
        end = card.find("\n## ", start + 1)
        card = card[:start] + (card[end:] if end >= 0 else "\n")
    after = card.find(f"\n{PERFORMANCE_HEADING}")
    at = card.find("\n## ", after + 1) if after >= 0 else -1
    if at < 0:
        return f"{card.rstrip()}\n\n{validated_on(table_markdown)}"
    return f"{card[:at].rstrip()}\n\n{validated_on(table_markdown)}{card[at:]}"
