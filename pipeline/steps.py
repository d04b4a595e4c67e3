"""The pipeline's steps, each the body of one MLflow run: data -> model -> engine -> tracking -> evaluation.

Entry points wrap one step in a run; ``run_study`` runs them all as nested runs of one study.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from pipeline import tracking
from pipeline.compare import comparison_table, config_label, curves_figure, format_table
from pipeline.config import (
    PreprocessConfig,
    StudyConfig,
    TrainConfig,
    flatten,
    to_dict,
    validate_preprocess_config,
    validate_study_config,
    validate_train_config,
)
from pipeline.data.dataset import EvalPreset, FundusDataset, ProcessedDataset, make_loader, split_dataset
from pipeline.data.preprocess import preprocess
from pipeline.engine import fit, predict_probabilities
from pipeline.errors import ConfigError, WeightsUnavailableError
from pipeline.evaluation import classification_metrics, confusion_figure, confusion_matrices
from pipeline.models import build_model, ensure_pretrained_available, serving_model, weights_cache_file

log = logging.getLogger(__name__)

SERVING_EXAMPLE_IMAGES = 2  # a batch of 1 would make torch.export fix the batch size at 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available on this machine")
    return device


def run_preprocess(cfg: PreprocessConfig) -> dict[str, object]:
    validate_preprocess_config(cfg)
    tracking.log_config(to_dict(cfg), to_dict(cfg))
    summary = preprocess(cfg.raw_dir, cfg.data_dir, image_size=cfg.image_size, image_dir=cfg.image_dir,
                         val_fraction=cfg.val_fraction, seed=cfg.seed, num_workers=cfg.num_workers)
    counts = summary["counts"]
    tracking.log_metrics({f"{split}_images": sum(grades) for split, grades in counts.items()}
                         | {"preprocess_seconds": summary["seconds"]})
    tracking.log_dict(summary, "dataset.json")
    return summary


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    best_epoch: int
    best_val_accuracy: float
    test_accuracy: float


def log_test_confusion(targets: np.ndarray, probabilities: np.ndarray, title: str) -> dict[str, float]:
    """Confusion-matrix artifacts (PNG + JSON) and the scalar test metrics of one model."""
    matrices = confusion_matrices(targets, probabilities.argmax(axis=1))
    tracking.log_dict(matrices, "confusion_matrix/test_confusion_matrix.json")
    figure = confusion_figure(matrices, title)
    tracking.log_figure(figure, "confusion_matrix/test_confusion_matrix.png")
    plt.close(figure)
    return classification_metrics(targets, probabilities)


def run_train(cfg: TrainConfig) -> TrainOutcome:
    """Trains one configuration inside the active run and logs everything a comparison needs."""
    validate_train_config(cfg)
    tracking.log_config(to_dict(cfg), to_dict(cfg))
    device = resolve_device(cfg.device)
    processed = ProcessedDataset(cfg.data_dir)
    seed_everything(cfg.seed)
    datasets = {
        "train": split_dataset(processed, "train", cfg.image_size, train=True, rotation_degrees=cfg.rotation_degrees),
        "val": split_dataset(processed, "val", cfg.image_size, train=False),
        "test": split_dataset(processed, "test", cfg.image_size, train=False),
    }
    tracking.log_dataset(processed.manifest, str(processed.root.resolve()), processed.root.name, "training")
    loaders = {
        name: make_loader(ds, cfg.batch_size, shuffle=name == "train", num_workers=cfg.num_workers, seed=cfg.seed)
        for name, ds in datasets.items()
    }
    tracking.set_tags({"retina_flow.device": str(device), "retina_flow.configuration": config_label(cfg.model, cfg.pretrained)})
    model = build_model(cfg.model, pretrained=cfg.pretrained, weights_path=cfg.weights_path).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    result = fit(
        model,
        train_loader=loaders["train"], val_loader=loaders["val"], test_loader=loaders["test"],
        criterion=nn.CrossEntropyLoss(), optimizer=optimizer, device=device,
        epochs=cfg.epochs, freeze_epochs=cfg.freeze_epochs,
        on_epoch_end=lambda epoch, metrics: tracking.log_metrics(metrics, step=epoch),
    )
    model.load_state_dict(result.best_state)
    test = result.best_test
    selected = log_test_confusion(test.targets, test.probabilities, f"{config_label(cfg.model, cfg.pretrained)}: "
                                  f"test set, epoch {result.best_epoch} (best validation accuracy)")
    tracking.log_metrics({
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_score,
        "highest_test_accuracy": max(h["test_accuracy"] for h in result.history),
        **{f"selected_test_{name}": value for name, value in selected.items()},
    })
    cpu_state = {k: v.detach().cpu() for k, v in result.best_state.items()}
    tracking.log_state_dict(cpu_state, "checkpoints", "best_model.pt")
    example_rows = processed.split("test").head(SERVING_EXAMPLE_IMAGES)
    example_set = FundusDataset(processed.root, example_rows, EvalPreset(cfg.image_size, normalize=False))
    example = torch.stack([example_set[i][0] for i in range(len(example_set))])
    model_uri, _ = tracking.log_model(serving_model(model), example)
    return TrainOutcome(tracking.active_run_id(), model_uri, result.best_epoch, result.best_score, selected["accuracy"])


def run_evaluate(model_ref: str, data_dir: str, batch_size: int = 32, num_workers: int = 0) -> dict[str, float]:
    """Test metrics of a logged or registered model, linked to the run that trained it."""
    uri = tracking.model_uri_of(model_ref)
    loaded = tracking.load_model(uri)
    tracking.log_params({"model_uri": uri, "data_dir": data_dir, "batch_size": batch_size})
    if loaded.source_run_id:
        tracking.set_tags({tracking.SOURCE_RUN_TAG: loaded.source_run_id})
    processed = ProcessedDataset(data_dir)
    if loaded.image_size > processed.image_size:
        raise ConfigError(f"model {uri} takes {loaded.image_size} px images but {data_dir} holds {processed.image_size} px")
    test = FundusDataset(processed.root, processed.split("test"), EvalPreset(loaded.image_size, normalize=False))
    loader = make_loader(test, batch_size, shuffle=False, num_workers=num_workers, seed=0)
    targets, probabilities = predict_probabilities(loaded.module, loader, torch.device("cpu"))
    metrics = log_test_confusion(targets, probabilities, f"{uri}: test set")
    test_metrics = {f"test_{name}": value for name, value in metrics.items()}
    tracking.log_metrics(test_metrics, model_id=loaded.model_id)
    return test_metrics


def run_compare(models: list[str], pretrained_values: list[bool], parent_run_id: str | None = None) -> str:
    """Reads train runs back from the tracking server and logs the comparison table and figures."""
    records = tracking.search_train_runs(tracking.experiment_ids(), parent_run_id)
    not_run = {}
    if parent_run_id:
        not_run = {key.removeprefix(tracking.SKIPPED_TAG_PREFIX): value for key, value in
                   tracking.run_tags(parent_run_id).items() if key.startswith(tracking.SKIPPED_TAG_PREFIX)}
    table = comparison_table(records, models, pretrained_values, not_run)
    text = format_table(table)
    tracking.log_params({"models": models, "pretrained": pretrained_values, "parent_run_id": parent_run_id or "",
                         "train_runs": len(records)})
    tracking.log_text(text, "comparison/comparison.txt")
    tracking.log_text(table.to_csv(index=False), "comparison/comparison.csv")
    for name, metrics, ylabel in (
        ("accuracy_curves", ("train_accuracy", "test_accuracy"), "accuracy"),
        ("loss_curves", ("train_loss", "val_loss"), "cross-entropy loss"),
    ):
        figure = curves_figure(records, models, pretrained_values, metrics, ylabel)
        tracking.log_figure(figure, f"comparison/{name}.png")
        plt.close(figure)
    return text


def check_pretrained_weights(cfg: StudyConfig) -> dict[str, str]:
    """Fails fast when ImageNet weights are missing, or returns why each pretrained config is skipped."""
    skipped = {}
    if True not in cfg.pretrained:
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
            log.warning("skipping %s: %s", config_label(model, True), exc)
            missing = weights_cache_file(model)
            skipped[config_label(model, True)] = f"ImageNet weights unavailable (no {missing.name} in {missing.parent})"
    return skipped


@dataclass
class StudyOutcome:
    trained: list[TrainOutcome]
    skipped: dict[str, str]
    champion: TrainOutcome
    champion_version: str
    evaluation: dict[str, float]
    comparison: str


def run_study(cfg: StudyConfig) -> StudyOutcome:
    """preprocess -> train every configuration -> register the best on validation -> evaluate -> compare."""
    validate_study_config(cfg)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data_dir=cfg.preprocess.data_dir))
    tracking.log_config(to_dict(cfg), flatten(to_dict(cfg)))
    skipped = check_pretrained_weights(cfg)
    tracking.set_tags({tracking.SKIPPED_TAG_PREFIX + label: reason for label, reason in skipped.items()})
    study_run_id = tracking.active_run_id()

    with tracking.step_run("preprocess", "preprocess", nested=True):
        run_preprocess(cfg.preprocess)
    trained = []
    for model in cfg.models:
        for pretrained in cfg.pretrained:
            label = config_label(model, pretrained)
            if label in skipped:
                continue
            with tracking.step_run("train", label.replace(" ", "-"), nested=True):
                trained.append(run_train(dataclasses.replace(cfg.train, model=model, pretrained=pretrained)))
    if not trained:
        raise ConfigError("every configuration was skipped; nothing was trained")
    champion = max(trained, key=lambda outcome: outcome.best_val_accuracy)
    version = tracking.register_model(champion.model_uri, cfg.registered_model, cfg.champion_alias,
                                      tags={"train_run_id": champion.run_id})
    tracking.set_tags({"retina_flow.champion_run_id": champion.run_id,
                       "retina_flow.champion_version": f"{cfg.registered_model} v{version}"})
    champion_uri = f"models:/{cfg.registered_model}@{cfg.champion_alias}"
    with tracking.step_run("evaluate", "evaluate-champion", nested=True):
        evaluation = run_evaluate(champion_uri, cfg.preprocess.data_dir)
    with tracking.step_run("compare", "compare", nested=True):
        comparison = run_compare(cfg.models, cfg.pretrained, parent_run_id=study_run_id)
    tracking.log_metrics({"champion_best_val_accuracy": champion.best_val_accuracy, **evaluation})
    return StudyOutcome(trained, skipped, champion, version, evaluation, comparison)
