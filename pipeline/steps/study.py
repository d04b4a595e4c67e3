"""The ``main`` entry point's body: the whole study, each step a nested run of one study run.

preprocess -> train every configuration (x seeds) -> register the best on validation as the
champion -> evaluate the champion -> compare.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.catalog import run_name_of
from pipeline.compare import cross_dataset_table, display_cross_dataset, markdown_of
from pipeline.config import (
    StudyConfig,
    flatten,
    model_train_config,
    recipe_train_config,
    study_configurations,
    to_dict,
    validate_study_config,
)
from pipeline.engine import ranking_score
from pipeline.errors import ConfigError, WeightsUnavailableError
from pipeline.model_card import CARD_ARTIFACT, with_validation
from pipeline.models import ensure_pretrained_available, weights_cache_file
from pipeline.steps.compare import run_compare
from pipeline.steps.evaluate import run_evaluate
from pipeline.steps.preprocess import run_preprocess
from pipeline.steps.parallel import TrainJob, train_in_parallel
from pipeline.steps.train import TrainOutcome, outcome_of_run, run_train
from pipeline.tracking import artifacts, registry, runs, tags
from pipeline.tracking.sink import metric_sink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedConfiguration:
    label: str
    reason: str
    weights_file: Path  # the ImageNet weights file that would let it run


@dataclass
class StudyOutcome:
    trained: list[TrainOutcome]
    skipped: list[SkippedConfiguration]
    champion: TrainOutcome
    champion_version: str
    evaluation: dict[str, float]
    comparison: str  # the comparison as the console shows it (compare.terminal_table)
    report: str = ""  # the HTML report: a local path, or its page in the tracking UI


def check_pretrained_weights(cfg: StudyConfig) -> list[SkippedConfiguration]:
    """Fails fast when ImageNet weights are missing, or (``skip_unavailable_weights``) says which
    pretrained configurations are skipped and why."""
    skipped: list[SkippedConfiguration] = []
    if not any(configuration.pretrained for configuration in study_configurations(cfg)):
        return skipped
    if cfg.train.weights_path and len(cfg.models) > 1:
        raise ConfigError(f"weights_path={cfg.train.weights_path!r} holds one model's weights but the study trains "
                          f"{', '.join(cfg.models)}; put each file in torch.hub's cache instead")
    for model in cfg.models:
        try:
            ensure_pretrained_available(model, cfg.train.weights_path)
        except WeightsUnavailableError as exc:
            if not cfg.skip_unavailable_weights:
                raise WeightsUnavailableError(f"{exc}. To run only the unpretrained configurations, pass "
                                              "skip_unavailable_weights=true") from None
            missing = weights_cache_file(model)
            log.warning("skipping the pretrained %s configurations: %s", model, exc)
            skipped += [SkippedConfiguration(c.label, f"no ImageNet weights ({missing.name})", missing)
                        for c in study_configurations(cfg) if c.model == model and c.pretrained]
    return skipped


# The champion's own test split, as the cross-dataset table names it; external sets are processed
# into <data_dir>/<EXTERNAL_FOLDER>/<name>.
INTERNAL_TEST = "internal test"
EXTERNAL_FOLDER = "external"


def run_study(cfg: StudyConfig) -> StudyOutcome:
    """preprocess -> train every configuration -> register the best on validation -> evaluate (on
    the test split and every external set) -> compare."""
    validate_study_config(cfg)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data_dir=cfg.preprocess.data_dir))
    runs.log_config(to_dict(cfg), flatten(to_dict(cfg)))
    skipped = check_pretrained_weights(cfg)
    runs.set_tags({tags.SKIPPED_PREFIX + s.label: s.reason for s in skipped})
    study_run_id = runs.active_run_id()

    with runs.step_run("preprocess", "preprocess", nested=True):
        run_preprocess(cfg.preprocess)
    trained = train_grid(cfg, skipped={s.label for s in skipped})
    champion = max(trained, key=lambda outcome: ranking_score(outcome.selection_score))
    version = registry.register_model(champion.model_uri, cfg.registered_model, cfg.champion_alias,
                                      version_tags={"train_run_id": champion.run_id})
    runs.set_tags({tags.CHAMPION_RUN: champion.run_id, tags.CHAMPION_VERSION: f"{cfg.registered_model} v{version}"})
    champion_uri = f"models:/{cfg.registered_model}@{cfg.champion_alias}"
    with runs.step_run("evaluate", "evaluate-champion", nested=True):
        evaluation = run_evaluate(champion_uri, cfg.preprocess.data_dir, resamples=cfg.train.bootstrap_resamples)
    cross_dataset = None
    if cfg.external:
        evaluations = {INTERNAL_TEST: evaluation, **validate_externally(cfg, champion_uri)}
        layouts = {INTERNAL_TEST: cfg.preprocess.layout, **{d.name: d.layout for d in cfg.external}}
        cross_dataset = cross_dataset_table(evaluations, layouts)
    describe_champion(cfg, version, champion, cross_dataset)
    with runs.step_run("compare", "compare", nested=True):
        comparison = run_compare(study_configurations(cfg), parent_run_id=study_run_id, cross_dataset=cross_dataset)
    metric_sink().log_summary({"champion_selection_score": champion.selection_score, **evaluation})
    # The study run's page in the MLflow UI opens on the comparison.
    runs.set_tags({tags.NOTE: f"**retina-flow study**: champion `{cfg.registered_model}` v{version} "
                              f"(`models:/{cfg.registered_model}@{cfg.champion_alias}`). {champion_on_test(evaluation)}"
                              f"\n\n{comparison.markdown}"})
    return StudyOutcome(trained, skipped, champion, version, evaluation, comparison.terminal, comparison.report)


def champion_on_test(evaluation: dict[str, float]) -> str:
    """A sentence on the champion's test evaluation: what it refused, how calibrated it is."""
    refused = evaluation.get("test_ungradable_fraction", 0.0)
    before, after = evaluation.get("test_uncalibrated_ece"), evaluation.get("test_ece")
    calibration = "" if before is None or after is None else (
        f"; calibration error (ECE) {before:.3f} before its temperature, {after:.3f} after")
    return f"On test it refused {refused:.1%} of the photos as ungradable{calibration}."


def validate_externally(cfg: StudyConfig, champion_uri: str) -> dict[str, dict[str, float]]:
    """The champion evaluated on every external set: each preprocessed with the study's cache
    settings (every photo a test photo) into ``<data_dir>/external/<name>``, then evaluated, each
    step a run nested in the study."""
    results = {}
    for dataset in cfg.external:
        processed = Path(cfg.preprocess.data_dir) / EXTERNAL_FOLDER / dataset.name
        settings = dataclasses.replace(cfg.preprocess, raw_dir=dataset.raw_dir, image_dir=dataset.image_dir,
                                       layout=dataset.layout, data_dir=str(processed), role="external")
        with runs.step_run("preprocess", f"preprocess-{dataset.name}", nested=True):
            run_preprocess(settings)
        with runs.step_run("evaluate", f"evaluate-{dataset.name}", nested=True):
            runs.set_tags({tags.DATASET: dataset.name})
            results[dataset.name] = run_evaluate(champion_uri, str(processed), resamples=cfg.train.bootstrap_resamples)
    return results


def describe_champion(cfg: StudyConfig, version: str, champion: TrainOutcome,
                      cross_dataset: pd.DataFrame | None = None) -> None:
    """The champion's model card on the registered model and on its version; with the datasets it
    was validated on, its card (the train run's artifact too) lists them."""
    card = (artifacts.read_artifact(champion.run_id, CARD_ARTIFACT) or b"").decode()
    if cross_dataset is not None:
        card = with_validation(card, markdown_of(display_cross_dataset(cross_dataset)))
        artifacts.log_text_to_run(champion.run_id, card, CARD_ARTIFACT)
    heading = (f"**Version {version} is the champion** (`models:/{cfg.registered_model}@{cfg.champion_alias}`), "
               f"chosen over the study's other configurations by `{cfg.train.select_metric}` on validation.\n\n")
    registry.describe(cfg.registered_model, version, heading + card, card,
                      more=f"The whole card is the artifact `{CARD_ARTIFACT}` of train run `{champion.run_id}`.")


def train_jobs(cfg: StudyConfig, skipped: set[str]) -> list[TrainJob]:
    """Every (model, pretrained, recipe, seed) of the study not skipped, named as its run will be."""
    recipes = {recipe.name: recipe_train_config(cfg.train, recipe) for recipe in cfg.recipes}
    jobs = []
    for configuration in study_configurations(cfg):
        if configuration.label in skipped:
            continue
        for seed in range(cfg.train.seed, cfg.train.seed + cfg.seeds):
            name = run_name_of(configuration.model, configuration.pretrained, configuration.recipe) + (
                f"-seed{seed}" if cfg.seeds > 1 else "")
            train = model_train_config(recipes[configuration.recipe], configuration.model, cfg.per_model)
            jobs.append(TrainJob(name, dataclasses.replace(train, pretrained=configuration.pretrained, seed=seed)))
    if not jobs:
        raise ConfigError("every configuration was skipped; nothing was trained")
    return jobs


def train_grid(cfg: StudyConfig, skipped: set[str]) -> list[TrainOutcome]:
    """Trains the study's jobs, each a nested train run: one after another in this process, or
    ``parallel`` at once in processes of their own."""
    jobs = train_jobs(cfg, skipped)
    if cfg.parallel > 1:
        return [outcome_of_run(run_id) for run_id in train_in_parallel(jobs, cfg.parallel)]
    trained = []
    for job in jobs:
        with runs.step_run("train", job.name, nested=True, system_metrics=True):
            trained.append(run_train(job.config))
    return trained

