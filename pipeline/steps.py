"""The pipeline's steps, each the body of one MLflow run: data -> model -> engine -> tracking -> evaluation.

Entry points wrap one step in a run; ``run_study`` runs them all as nested runs of one study.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline import checkpoint, tracking
from pipeline.compare import config_of, comparison_table, config_label, curves_figure, display_table, format_table
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
from pipeline.data.balance import balanced_weights, class_weights
from pipeline.data.dataset import (
    EvalPreset,
    FundusDataset,
    ProcessedDataset,
    make_loader,
    normalize_batch,
    split_dataset,
    to_unit_float,
)
from pipeline.data.preprocess import preprocess
from pipeline.data.sampling import EpochSampler
from pipeline.distributed import DistContext, context_from_env, destroy_process_group, init_process_group, shard_indices
from pipeline.engine import EvalOutput, FitState, fit, predict_probabilities, ranking_score
from pipeline.errors import ConfigError, RetinaFlowError, WeightsUnavailableError
from pipeline.evaluation import (
    all_metrics,
    bootstrap_intervals,
    confusion_figure,
    confusion_grid_figure,
    confusion_matrices,
    epoch_metrics,
    roc_figure,
)
from pipeline.gradcam import grad_cam, gradcam_figure
from pipeline.hardware import Accelerator, resolve_device, resolve_precision
from pipeline.models import build_model, ensure_pretrained_available, serving_model, weights_cache_file
from pipeline.predict import list_inputs, predict_photos, write_predictions
from pipeline.report import build_html_report, figure_png

log = logging.getLogger(__name__)

SERVING_EXAMPLE_IMAGES = 2  # a batch of 1 would make torch.export fix the batch size at 1
OUTAGE_GRACE_SECONDS = 300  # after the last epoch, how long to wait for a tracking server to return


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_preprocess(cfg: PreprocessConfig) -> dict[str, object]:
    validate_preprocess_config(cfg)
    tracking.log_config(to_dict(cfg), to_dict(cfg))
    summary = preprocess(cfg.raw_dir, cfg.data_dir, image_size=cfg.image_size, image_dir=cfg.image_dir,
                         val_fraction=cfg.val_fraction, seed=cfg.seed, num_workers=cfg.num_workers,
                         on_bad_image=cfg.on_bad_image, max_bad_fraction=cfg.max_bad_fraction)
    counts = summary["counts"]
    tracking.log_metrics({f"{split}_images": sum(grades) for split, grades in counts.items()}
                         | {"preprocess_seconds": summary["seconds"], "skipped_images": len(summary["skipped_images"])})
    if summary["skipped_images"]:
        tracking.log_text(pd.DataFrame(summary["skipped_images"]).to_csv(index=False), "skipped_images.csv")
    tracking.log_dict(summary, "dataset.json")
    return summary


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    best_epoch: int
    selection_score: float  # the select metric at the best epoch
    test_accuracy: float


KEY_METRICS = ("accuracy", "kappa", "referable_auc", "referable_sensitivity", "referable_specificity")


def log_model_evaluation(targets: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, *, title: str,
                         prefix: str, resamples: int, seed: int) -> dict[str, float]:
    """Confusion matrices, every metric with its patient-level 95% bootstrap interval, and the ROC.

    Returns the scalar metrics, named ``{prefix}{metric}`` and ``{prefix}{metric}_ci_low/high``.
    """
    matrices = confusion_matrices(targets, probabilities.argmax(axis=1))
    tracking.log_dict(matrices, "confusion_matrix/test_confusion_matrix.json")
    for name, figure in (("confusion_matrix/test_confusion_matrix.png", confusion_figure(matrices, title)),
                         ("roc/test_referable_roc.png", roc_figure(targets, probabilities))):
        tracking.log_figure(figure, name)
        plt.close(figure)
    metrics = all_metrics(targets, probabilities)
    intervals = bootstrap_intervals(targets, probabilities, groups=patients, n_resamples=resamples, seed=seed) if resamples else {}
    tracking.log_dict({"metrics": metrics, "ci95": {k: list(v) for k, v in intervals.items()},
                       "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed}, "images": len(targets)},
                      "metrics/test_metrics.json")
    scalars = {f"{prefix}{name}": value for name, value in metrics.items()}
    for name in KEY_METRICS:
        if name in intervals:
            scalars[f"{prefix}{name}_ci_low"], scalars[f"{prefix}{name}_ci_high"] = intervals[name]
    return scalars


def log_gradcam(model: nn.Module, processed: ProcessedDataset, test_rows: pd.DataFrame, image_size: int,
                device: torch.device, per_grade: int = 2) -> None:
    """Grad-CAM over a fixed sample (the first ``per_grade`` test images of each grade)."""
    sample = test_rows.sort_values("grade", kind="stable").groupby("grade", sort=True).head(per_grade).reset_index(drop=True)
    dataset = FundusDataset(processed.root, sample, EvalPreset(image_size))
    raw = torch.stack([dataset[i][0] for i in range(len(sample))])
    images = normalize_batch(raw)
    heatmaps = grad_cam(model, images.to(device), model.layer4).cpu()
    predicted = _predict(model, images.to(device))
    titles = [f"{image_id}: grade {grade}, predicted {p}" for image_id, grade, p in zip(sample["id"], sample["grade"], predicted)]
    figure = gradcam_figure(to_unit_float(raw), heatmaps, titles,
                            columns=min(per_grade, len(sample)))
    tracking.log_figure(figure, "gradcam/test_gradcam.png")
    plt.close(figure)
    tracking.log_arrays("gradcam/test_gradcam.npz", heatmaps=heatmaps.numpy(), grades=sample["grade"].to_numpy(),
                        ids=sample["id"].to_numpy(dtype=str))


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor) -> list[int]:
    model.eval()
    return model(images).argmax(dim=1).tolist()


def run_train(cfg: TrainConfig, resume_from: dict | None = None) -> TrainOutcome:
    """Trains one configuration inside the active run and logs everything a comparison needs.

    Under torchrun every rank runs this; only rank 0 writes to MLflow (see tracking).

    Args:
        resume_from: a checkpoint of this run (``checkpoint.load``): training continues after
            its epoch, and metric values the crash kept from MLflow are logged from it.
    """
    validate_train_config(cfg)
    if resume_from is None:
        config = to_dict(cfg)
        tracking.log_config(config, {k: v for k, v in config.items() if k != "resume"})
    ctx = context_from_env()
    device = resolve_device(cfg.device, ctx.local_rank)
    accel = Accelerator(device, resolve_precision(cfg.precision, device), cfg.channels_last, ctx)
    processed = ProcessedDataset(cfg.data_dir, cfg.image_size)
    seed_everything(cfg.seed)
    datasets = {
        "train": split_dataset(processed, "train", cfg.image_size, train=True, rotation_degrees=cfg.rotation_degrees),
        "val": split_dataset(processed, "val", cfg.image_size, train=False),
        "test": split_dataset(processed, "test", cfg.image_size, train=False),
    }
    if resume_from is None:
        tracking.log_dataset(processed.manifest, str(processed.root.resolve()), processed.root.name, "training")
    tracking.set_tags({"retina_flow.device": str(device), "retina_flow.world_size": str(ctx.world_size),
                       "retina_flow.precision": str(accel.amp_dtype or torch.float32).removeprefix("torch."),
                       "retina_flow.configuration": config_label(cfg.model, cfg.pretrained)})
    checkpoint_path = checkpoint.run_checkpoint_path(cfg.checkpoint_dir, tracking.active_run_id())
    init_process_group(ctx, device)
    try:
        # A resumed run takes every weight from its checkpoint, so it needs no ImageNet file.
        model = accel.prepare(build_model(cfg.model, pretrained=cfg.pretrained and resume_from is None,
                                          weights_path=cfg.weights_path if resume_from is None else ""))
        trained = model
        if ctx.enabled:
            # Frozen-head epochs leave backbone parameters without gradients, which DDP must be told.
            trained = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.freeze_epochs > 0)
        if cfg.compile:
            trained = torch.compile(trained)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler("cuda") if accel.amp_dtype == torch.float16 and device.type == "cuda" else None
        train_grades = processed.split("train")["grade"].to_numpy()
        weights = class_weights(train_grades, cfg.class_weighting)
        if weights is not None:
            tracking.log_params({f"loss_weight_grade_{g}": round(float(w), 4) for g, w in enumerate(weights)})
        loaders = make_train_loaders(datasets, cfg, ctx, train_grades)
        start = None
        if resume_from is not None:
            start = restore_training(resume_from, model, optimizer, scaler)
            tracking.log_missing_epoch_metrics(start.history)
            log.info("resuming %s after epoch %d of %d", tracking.active_run_id(), start.epoch, cfg.epochs)
        save_checkpoint = checkpoint_writer(cfg, checkpoint_path, model, optimizer, scaler) if ctx.is_main else None
        result = fit(
            trained,
            train_loader=loaders["train"], val_loader=loaders["val"], test_loader=loaders["test"],
            criterion=nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device)),
            optimizer=optimizer, accel=accel,
            epochs=cfg.epochs, freeze_epochs=cfg.freeze_epochs, scaler=scaler,
            eval_lengths=(len(datasets["val"]), len(datasets["test"])),
            epoch_metrics=epoch_metrics, select_metric=cfg.select_metric,
            start=start, on_checkpoint=save_checkpoint, on_batch_end=fault_injector(),
            on_epoch_end=lambda epoch, metrics: tracking.log_metrics(metrics, step=epoch),
        )
    finally:
        destroy_process_group()
    if not tracking.flush_metrics(wait_seconds=OUTAGE_GRACE_SECONDS):
        raise RetinaFlowError(
            f"training finished but the tracking server stayed unreachable for {OUTAGE_GRACE_SECONDS} s; every "
            f"epoch's metrics are in {checkpoint_path}: run "
            f"`python -m pipeline.cli.train --resume {tracking.active_run_id()}` once it is back to deliver them")
    model.load_state_dict(result.best_state)
    # fp32 weights in the default memory format: what Grad-CAM and torch.export both take.
    model = model.float().to(memory_format=torch.contiguous_format)
    test, test_rows = result.best_test, processed.split("test")
    best = result.history[result.best_epoch - 1]
    selected = log_model_evaluation(
        test.targets, test.probabilities, test_rows["patient"].to_numpy(), prefix="selected_test_",
        title=f"{config_label(cfg.model, cfg.pretrained)}: test set, epoch {result.best_epoch} (best {cfg.select_metric})",
        resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    tracking.log_metrics({
        "best_epoch": result.best_epoch,
        f"best_{cfg.select_metric}": result.best_score,
        "selection_score": result.best_score,
        "best_val_accuracy": best["val_accuracy"],
        "highest_test_accuracy": max(h["test_accuracy"] for h in result.history),
        **selected,
    })
    if ctx.is_main:
        log_gradcam(model, processed, test_rows, cfg.image_size, device)
    cpu_state = {k: v.detach().cpu() for k, v in result.best_state.items()}
    tracking.log_state_dict(cpu_state, "checkpoints", "best_model.pt")
    example_set = FundusDataset(processed.root, test_rows.head(SERVING_EXAMPLE_IMAGES), EvalPreset(cfg.image_size))
    example = to_unit_float(torch.stack([example_set[i][0] for i in range(len(example_set))]))
    model_uri, _ = tracking.log_model(serving_model(model), example)
    if ctx.is_main and not cfg.keep_checkpoint:
        checkpoint.discard(checkpoint_path)
    return TrainOutcome(tracking.active_run_id(), model_uri, result.best_epoch, result.best_score,
                        selected["selected_test_accuracy"])


def make_train_loaders(datasets: dict[str, Dataset], cfg: TrainConfig, ctx: DistContext,
                       train_grades: np.ndarray) -> dict[str, DataLoader]:
    """Loaders for one rank: an EpochSampler share of train, a ``rank::world`` slice of val/test."""
    loaders = {}
    for name, dataset in datasets.items():
        sampler = None
        if name == "train":
            weights = balanced_weights(train_grades)[train_grades] if cfg.weighted_sampler else None
            sampler = EpochSampler(len(dataset), cfg.seed, weights=weights, rank=ctx.rank, world_size=ctx.world_size)
        elif ctx.enabled:
            dataset = Subset(dataset, shard_indices(len(dataset), ctx))
        loaders[name] = make_loader(dataset, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                                    seed=cfg.seed, sampler=sampler, training=name == "train")
    return loaders


def checkpoint_writer(cfg: TrainConfig, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None) -> Callable[[FitState], None]:
    """Saves the run's checkpoint at ``path`` after every epoch (and logs it, if asked)."""

    def save(state: FitState) -> None:
        checkpoint.save_atomic({
            "format": checkpoint.FORMAT_VERSION,
            "config": to_dict(cfg),
            "epoch": state.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "history": state.history,
            "best_epoch": state.best_epoch,
            "best_state": state.best_state,
            "best_test": {"loss": state.best_test.loss, "accuracy": state.best_test.accuracy,
                          "targets": torch.from_numpy(state.best_test.targets),
                          "probabilities": torch.from_numpy(state.best_test.probabilities)},
            "rng": checkpoint.rng_state(),
        }, path)
        if cfg.checkpoint_artifact:
            try:
                tracking.log_artifact(path, "checkpoints")
            except Exception as exc:  # noqa: BLE001 - an outage must not stop training; the local copy stands
                log.warning("checkpoint of epoch %d kept locally only (%s): the tracking server did not take it",
                            state.epoch, str(exc).splitlines()[0][:200])

    return save


def restore_training(saved: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None) -> FitState:
    """Puts model, optimizer, scaler and RNGs back as they were after the saved epoch."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    checkpoint.restore_rng(saved["rng"])
    best = saved["best_test"]
    return FitState(saved["epoch"], saved["history"], saved["best_epoch"], saved["best_state"],
                    EvalOutput(best["loss"], best["accuracy"], best["targets"].numpy(), best["probabilities"].numpy()))


def load_run_checkpoint(run_id: str, checkpoint_dir: str) -> dict:
    """The last checkpoint of ``run_id``: the local file, else the one logged to the run."""
    local = checkpoint.run_checkpoint_path(checkpoint_dir, run_id)
    if not local.is_file():
        data = tracking.read_artifact(run_id, f"checkpoints/{checkpoint.LAST}")
        if data is None:
            raise ConfigError(f"run {run_id} has no checkpoint to resume from: neither {local} nor a "
                              f"checkpoints/{checkpoint.LAST} artifact (it may have died before its first epoch ended)")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    return checkpoint.load(local)


FAULT_ENV = "RETINA_FLOW_KILL_AT_BATCH"


def fault_injector() -> Callable[[], None] | None:
    """For the crash tests: SIGKILL this process after the given number of training batches."""
    kill_at = os.environ.get(FAULT_ENV)
    if not kill_at:
        return None
    counter = itertools.count(1)

    def maybe_die() -> None:
        if next(counter) == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_die


def run_evaluate(model_ref: str, data_dir: str, batch_size: int = 32, num_workers: int = 0,
                 resamples: int = 1000) -> dict[str, float]:
    """Test metrics with 95% CIs of a logged or registered model, linked to the run that trained it."""
    uri = tracking.model_uri_of(model_ref)
    loaded = tracking.load_model(uri)
    tracking.log_params({"model_uri": uri, "data_dir": data_dir, "batch_size": batch_size, "bootstrap_resamples": resamples})
    if loaded.source_run_id:
        tracking.set_tags({tracking.SOURCE_RUN_TAG: loaded.source_run_id})
    processed = ProcessedDataset(data_dir, loaded.image_size)
    test_rows = processed.split("test")
    test = FundusDataset(processed.root, test_rows, EvalPreset(loaded.image_size))
    loader = make_loader(test, batch_size, shuffle=False, num_workers=num_workers, seed=0)
    targets, probabilities = predict_probabilities(loaded.module, loader, torch.device("cpu"))
    test_metrics = log_model_evaluation(targets, probabilities, test_rows["patient"].to_numpy(),
                                        title=f"{uri}: test set", prefix="test_", resamples=resamples, seed=0)
    tracking.log_metrics(test_metrics, model_id=loaded.model_id)
    return test_metrics


def run_predict(model_ref: str, source: str, output: str, batch_size: int = 32, num_workers: int = 0) -> pd.DataFrame:
    """Predictions for new photos with the same crop/resize/normalise as training; CSV logged too."""
    uri = tracking.model_uri_of(model_ref)
    loaded = tracking.load_model(uri)
    tracking.log_params({"model_uri": uri, "input": source, "output": output, "batch_size": batch_size})
    inputs = list_inputs(source)
    frame = predict_photos(loaded.module, inputs, loaded.image_size, batch_size=batch_size, num_workers=num_workers)
    path = write_predictions(frame, output)
    tracking.log_metrics({"images": len(frame), "referable_share": float(frame["referable"].mean())})
    tracking.log_artifact(path, "predictions")
    return frame


def run_compare(models: list[str], pretrained_values: list[bool], parent_run_id: str | None = None) -> str:
    """Reads train runs back from the tracking server; logs the table, figures and an HTML report."""
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
    figures: dict[str, bytes] = {}
    for name, heading, metrics, ylabel in (
        ("accuracy_curves", "Train and test accuracy per epoch", ("train_accuracy", "test_accuracy"), "accuracy"),
        ("kappa_curves", "Quadratic weighted kappa per epoch", ("val_kappa", "test_kappa"), "kappa"),
        ("loss_curves", "Train and validation loss per epoch", ("train_loss", "val_loss"), "cross-entropy loss"),
    ):
        figure = curves_figure(records, models, pretrained_values, metrics, ylabel)
        tracking.log_figure(figure, f"comparison/{name}.png")
        figures[heading] = figure_png(figure)
    matrices = {}
    for record in records:
        label = config_label(*config_of(record))
        raw = tracking.read_artifact(record.run_id, "confusion_matrix/test_confusion_matrix.json")
        if raw is not None and label not in matrices:
            matrices[label] = json.loads(raw)
    if matrices:
        figure = confusion_grid_figure(matrices)
        tracking.log_figure(figure, "comparison/confusion_matrices.png")
        figures["Test confusion matrices of the selected epoch (first run of each configuration)"] = figure_png(figure)
    notes = [f"{label}: not run: {reason}" for label, reason in not_run.items()]
    if records:
        champion = max(records, key=lambda r: ranking_score(r.metrics.get("selection_score", float("nan"))))
        notes.append(f"Champion (best {champion.params.get('select_metric', 'validation')} on validation): "
                     f"{champion.run_name} ({champion.run_id})")
        for artifact, heading in (("roc/test_referable_roc.png", "Champion: referable DR (grade >= 2) ROC on test"),
                                  ("gradcam/test_gradcam.png", "Champion: Grad-CAM on a fixed test sample per grade")):
            png = tracking.read_artifact(champion.run_id, artifact)
            if png is not None:
                figures[heading] = png
    report = build_html_report(
        title="retina-flow: ResNet depth x ImageNet pretraining",
        summary_table=display_table(table), figures=figures, notes=notes,
        run_links={f"{r.run_name} ({r.run_id[:8]})": tracking.run_url(r.run_id) for r in records},
    )
    tracking.log_text(report, "comparison/report.html")
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
            skipped[config_label(model, True)] = f"no ImageNet weights ({missing.name})"
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
            for seed in range(cfg.train.seed, cfg.train.seed + cfg.seeds):
                name = label.replace(" ", "-") + (f"-seed{seed}" if cfg.seeds > 1 else "")
                with tracking.step_run("train", name, nested=True):
                    trained.append(run_train(dataclasses.replace(cfg.train, model=model, pretrained=pretrained, seed=seed)))
    if not trained:
        raise ConfigError("every configuration was skipped; nothing was trained")
    champion = max(trained, key=lambda outcome: ranking_score(outcome.selection_score))
    version = tracking.register_model(champion.model_uri, cfg.registered_model, cfg.champion_alias,
                                      tags={"train_run_id": champion.run_id})
    tracking.set_tags({"retina_flow.champion_run_id": champion.run_id,
                       "retina_flow.champion_version": f"{cfg.registered_model} v{version}"})
    champion_uri = f"models:/{cfg.registered_model}@{cfg.champion_alias}"
    with tracking.step_run("evaluate", "evaluate-champion", nested=True):
        evaluation = run_evaluate(champion_uri, cfg.preprocess.data_dir, resamples=cfg.train.bootstrap_resamples)
    with tracking.step_run("compare", "compare", nested=True):
        comparison = run_compare(cfg.models, cfg.pretrained, parent_run_id=study_run_id)
    tracking.log_metrics({"champion_selection_score": champion.selection_score, **evaluation})
    return StudyOutcome(trained, skipped, champion, version, evaluation, comparison)
