"""The ``train`` step: one configuration, tracked per epoch, its selected model evaluated and logged.

It reads as three calls: ``set_up`` (model, optimizer, scaler, loaders), ``fit`` (the engine's
loop, with a checkpoint after every epoch), and ``log_selected_model``. Under torchrun every rank
runs it; only rank 0 logs to MLflow and writes the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from pipeline import checkpoint, faults
from pipeline.catalog import NUM_GRADES, config_label
from pipeline.config import TrainConfig, to_dict, validate_train_config
from pipeline.data.augment import augment_batch
from pipeline.data.balance import balanced_weights, class_weights
from pipeline.data.dataset import (
    EvalPreset,
    FundusDataset,
    ProcessedDataset,
    build_uint8_cache,
    make_loader,
    normalize_batch,
    split_dataset,
    to_unit_float,
)
from pipeline.data.preprocess import PROCESSED_SPLITS
from pipeline.data.sampling import EpochSampler
from pipeline.data.synthetic import render_fundus
from pipeline.distributed import (
    DistContext,
    broadcast_from_main,
    context_from_env,
    destroy_process_group,
    init_process_group,
    shard_indices,
)
from pipeline.engine import EpochCallback, FitResult, FitState, fit
from pipeline.errors import ConfigError, RetinaFlowError
from pipeline.figures import figure_png, gradcam_figure
from pipeline.gradcam import grad_cam
from pipeline.hardware import Accelerator, keep_batch_memory, resolve_device, resolve_precision
from pipeline.fitting import SplitOutputs, fit_grader
from pipeline.gradability import NOVELTY_PHOTOS
from pipeline.grading import Grader
from pipeline.photo_grader import GraderSpec
from pipeline.metrics import epoch_metrics
from pipeline.model_card import CARD_ARTIFACT, CardFacts, model_card, run_description
from pipeline.models import build_model, last_conv_stage, with_tta
from pipeline.schedules import build_optimizer, epoch_lr
from pipeline.steps.evaluate import log_split_figures, measures_of, split_metrics
from pipeline.tracking import artifacts, readback, registry, runs, tags
from pipeline.tracking.sink import MetricSink, NullSink, metric_sink

log = logging.getLogger(__name__)

SERVING_EXAMPLE_IMAGES = 2  # the logged input example shows a batch, not a single photo
OUTAGE_GRACE_SECONDS = 300  # after the last epoch, how long to wait for a tracking server to return
GRADCAM_IMAGES_PER_GRADE = 2
CHECKPOINT_FOLDER = "checkpoints"  # of the run's artifacts: last.pt while it runs, then the selected weights
BEST_WEIGHTS = "best_model.pt"


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    best_epoch: int
    selection_score: float  # the select metric at the best epoch
    test_accuracy: float


@dataclass
class TrainingSetup:
    """Everything ``fit`` needs, built for this process (one torchrun rank, or the only one)."""

    model: nn.Module  # the network itself: its weights are what is checkpointed and logged
    trained: nn.Module  # what the loop drives: ``model``, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module
    loaders: dict[str, DataLoader]
    eval_lengths: tuple[int, int]  # full (val, test) sizes: a rank's eval loaders hold a slice
    start: FitState | None  # where a resumed run continues from


def run_train(cfg: TrainConfig, resume_from: dict | None = None,
              on_epoch: EpochCallback | None = None) -> TrainOutcome | None:
    """Trains one configuration inside the active run and logs everything a comparison needs.

    Args:
        resume_from: a checkpoint of this run (``checkpoint.load``): training continues after
            its epoch, and metric values the crash kept from MLflow are logged from it.
        on_epoch: called with each epoch's metrics once they are logged (a sweep's pruning);
            what it raises stops the training and leaves the run's checkpoints to the caller
            (``discard_checkpoints``).

    Returns:
        The outcome on rank 0 (or a single process); None on the other torchrun ranks.
    """
    validate_train_config(cfg)
    ctx = context_from_env()
    device = resolve_device(cfg.device, ctx.local_rank)
    accel = Accelerator(device, resolve_precision(cfg.precision, device), cfg.channels_last, ctx)
    keep_batch_memory()  # before the loader workers fork: they inherit it
    processed = ProcessedDataset(cfg.data_dir, cfg.image_size, cfg.enhance)
    log_run_inputs(cfg, processed, accel, resumed=resume_from is not None)
    sink = metric_sink()
    run_id = runs.active_run_id()  # None on torchrun ranks other than 0: they log and save nothing
    checkpoint_path = checkpoint.run_checkpoint_path(cfg.checkpoint_dir, run_id) if ctx.is_main else None
    seed_everything(cfg.seed)
    init_process_group(ctx, device)
    try:
        # Every machine of a multi-node job reports its system metrics to rank 0's run.
        with runs.node_system_metrics(broadcast_from_main(run_id, ctx), ctx):
            setup = set_up(cfg, processed, accel, resume_from)
            if setup.start is not None:
                sink.log_missing_epochs(setup.start.history)
                log.info("resuming %s after epoch %d of %d", run_id, setup.start.epoch, cfg.epochs)
            result = fit(
                setup.trained,
                train_loader=setup.loaders["train"], val_loader=setup.loaders["val"], test_loader=setup.loaders["test"],
                criterion=setup.criterion, optimizer=setup.optimizer, accel=accel, scaler=setup.scaler,
                epochs=cfg.epochs, freeze_epochs=cfg.freeze_epochs, eval_lengths=setup.eval_lengths,
                epoch_metrics=epoch_metrics, select_metric=cfg.select_metric, start=setup.start,
                on_checkpoint=checkpoint_writer(cfg, checkpoint_path, setup) if ctx.is_main else None,
                on_batch_end=faults.batch_hook_from_env(), on_epoch_end=chained(sink.log_epoch, on_epoch),
                augment=augment_batch if cfg.augment_device == "model" else None,
                lr_of_epoch=functools.partial(epoch_lr, base_lr=cfg.lr, epochs=cfg.epochs, schedule=cfg.lr_schedule,
                                              warmup_epochs=cfg.warmup_epochs),
                evaluated=with_tta(setup.trained, cfg.tta),
            )
    finally:
        destroy_process_group()
    if not ctx.is_main:
        return None  # rank 0 logs the result
    deliver_metrics(sink, checkpoint_path, run_id)
    outcome = log_selected_model(cfg, setup.model, result, processed, device, sink)
    discard_checkpoints(cfg, run_id)
    return outcome


def chained(first: EpochCallback, second: EpochCallback | None) -> EpochCallback:
    """``first``, then ``second`` if given, for every epoch."""
    if second is None:
        return first

    def both(epoch: int, metrics: dict[str, float]) -> None:
        first(epoch, metrics)
        second(epoch, metrics)

    return both


def discard_checkpoints(cfg: TrainConfig, run_id: str) -> None:
    """A finished (or pruned) run needs no crash-resume checkpoint: not on this disk (unless asked),
    nor on the server, where it would hold the weights a second time plus the optimizer state."""
    if not cfg.keep_checkpoint:
        checkpoint.discard(checkpoint.run_checkpoint_path(cfg.checkpoint_dir, run_id))
    if cfg.checkpoint_artifact:
        artifacts.delete_artifact(run_id, f"{CHECKPOINT_FOLDER}/{checkpoint.LAST}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log_run_inputs(cfg: TrainConfig, processed: ProcessedDataset, accel: Accelerator, *, resumed: bool) -> None:
    """The resolved config, the input dataset and where it runs (a resumed run has the first two)."""
    if not resumed:
        config = to_dict(cfg)
        runs.log_config(config, {k: v for k, v in config.items() if k != "resume"})
        artifacts.log_dataset(processed.manifest, str(processed.root.resolve()), processed.root.name, "training")
    runs.set_tags({tags.DEVICE: str(accel.device), tags.WORLD_SIZE: str(accel.dist.world_size),
                   tags.PRECISION: str(accel.amp_dtype or torch.float32).removeprefix("torch."),
                   tags.CONFIGURATION: config_label(cfg.model, cfg.pretrained, cfg.recipe)})


def set_up(cfg: TrainConfig, processed: ProcessedDataset, accel: Accelerator,
           resume_from: dict | None) -> TrainingSetup:
    """Model, optimizer, loss scaler, criterion and loaders; restored from ``resume_from`` if given."""
    arrays = build_uint8_cache(processed, cfg.image_size, cfg.num_workers) if cfg.cache_format == "uint8" else {}
    datasets = {
        split: split_dataset(processed, split, cfg.image_size, train=split == "train", array=arrays.get(split),
                             rotation_degrees=cfg.rotation_degrees, augment_on_device=cfg.augment_device == "model",
                             augment_recipe=cfg.augment)
        for split in PROCESSED_SPLITS
    }
    # A resumed run takes every weight from its checkpoint, so it needs no ImageNet file.
    model = accel.prepare(build_model(cfg.model, pretrained=cfg.pretrained and resume_from is None,
                                      weights_path=cfg.weights_path if resume_from is None else "", head=cfg.head))
    trained = model
    if accel.dist.enabled:
        # Frozen-head epochs leave backbone parameters without gradients, which DDP must be told.
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[accel.device.index] if accel.device.type == "cuda" else None,
            find_unused_parameters=cfg.freeze_epochs > 0)
    if cfg.compile:
        trained = torch.compile(trained)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if accel.amp_dtype == torch.float16 and accel.device.type == "cuda" else None
    train_grades = processed.split("train")["grade"].to_numpy()
    weights = class_weights(train_grades, cfg.class_weighting)
    if weights is not None:
        runs.log_params({f"loss_weight_grade_{g}": round(float(w), 4) for g, w in enumerate(weights)})
    loaders = make_train_loaders(datasets, cfg, accel.dist, train_grades)
    # Last: the RNG states it restores must be the ones the next epoch starts from.
    start = checkpoint.restore(resume_from, model, optimizer, scaler) if resume_from is not None else None
    return TrainingSetup(
        model=model, trained=trained, optimizer=optimizer, scaler=scaler,
        criterion=nn.CrossEntropyLoss(weight=None if weights is None else weights.to(accel.device)),
        loaders=loaders, eval_lengths=(len(datasets["val"]), len(datasets["test"])), start=start,
    )


def make_train_loaders(datasets: dict[str, FundusDataset], cfg: TrainConfig, ctx: DistContext,
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


def checkpoint_writer(cfg: TrainConfig, path: Path, setup: TrainingSetup) -> Callable[[FitState], None]:
    """Saves the run's checkpoint at ``path`` after every epoch (and logs it, if asked)."""

    def save(state: FitState) -> None:
        checkpoint.save_atomic(checkpoint.training_state(to_dict(cfg), setup.model, setup.optimizer,
                                                         setup.scaler, state), path)
        if cfg.checkpoint_artifact:
            try:
                artifacts.log_artifact(path, CHECKPOINT_FOLDER)
            except Exception as exc:  # noqa: BLE001 - an outage must not stop training; the local copy stands
                log.warning("checkpoint of epoch %d kept locally only (%s): the tracking server did not take it",
                            state.epoch, str(exc).splitlines()[0][:200])

    return save


def deliver_metrics(sink: MetricSink | NullSink, checkpoint_path: Path, run_id: str) -> None:
    """Waits a while for a tracking server that is away: the epochs' metrics must reach the run."""
    if not sink.flush(wait_seconds=OUTAGE_GRACE_SECONDS):
        raise RetinaFlowError(
            f"training finished but the tracking server stayed unreachable for {OUTAGE_GRACE_SECONDS} s; every "
            f"epoch's metrics are in {checkpoint_path}: run "
            f"`python -m pipeline.cli.train --resume {run_id}` once it is back to deliver them")


def log_selected_model(cfg: TrainConfig, model: nn.Module, result: FitResult, processed: ProcessedDataset,
                       device: torch.device, sink: MetricSink | NullSink) -> TrainOutcome:
    """The best epoch's model, fitted into a grader (``fitting.fit_grader``: calibration, decision,
    operating point, gradability), its test and validation metrics with CIs, Grad-CAM, its weights,
    and the grader as the served model."""
    model.load_state_dict(result.best_state)
    # fp32 weights in the default memory format: what Grad-CAM and the served model take.
    model = model.float().to(memory_format=torch.contiguous_format)
    rows = {split: processed.split(split) for split in PROCESSED_SPLITS}
    base = GraderSpec(cfg.model, cfg.image_size, processed.image_size, tta=cfg.tta, head=cfg.head,
                      enhance=processed.enhance)
    network = Grader(model, base, device=device)
    seen = {split: split_outputs(network, processed, split_rows, cfg) for split, split_rows in rows.items()}
    # The thresholds of the quality measures see every training photo (the manifest has them all).
    seen_measures = np.concatenate([measures_of(processed, rows["train"]), seen["val"].measures])
    fitted = fit_grader(seen["train"], seen["val"], seen_measures, decision=cfg.decision, fuse_eyes=cfg.fuse_eyes,
                        target_sensitivity=cfg.referable_target_sensitivity)
    spec = dataclasses.replace(base, referable_threshold=fitted.referable_threshold, cut_points=fitted.cut_points,
                               fuse_weight=fitted.fuse_weight, temperature=fitted.temperature,
                               gradability=fitted.gradability)
    grader = Grader(model, spec, fitted.novelty, device=device)
    label = config_label(cfg.model, cfg.pretrained, cfg.recipe)
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        outputs = seen[split]
        judged = grader.judge(grader.calibrated(outputs.probabilities), outputs.features, outputs.measures)
        scalars = split_metrics(grader, outputs.targets, outputs.probabilities, judged, outputs.patients,
                                prefix=f"selected_{split}_", resamples=cfg.bootstrap_resamples, seed=cfg.seed)
        if split == "test":
            log_split_figures(grader, outputs.targets, outputs.probabilities, judged, outputs.patients,
                              title=f"{label}: test set, epoch {result.best_epoch} (best {cfg.select_metric})",
                              split="test", metrics=scalars, resamples=cfg.bootstrap_resamples, seed=cfg.seed)
        metrics |= scalars
    log_gradcam(model, processed, rows["test"], cfg.image_size, device)
    artifacts.log_state_dict({k: v.detach().cpu() for k, v in result.best_state.items()},
                             f"{CHECKPOINT_FOLDER}/{BEST_WEIGHTS}")
    # The model first, then the summary attached to it: logging a model, MLflow links it to the run's
    # step-0 metrics by asking the server for each metric's history, a request per metric the run
    # has by then (166 after the summary, ~25 before it, in the tests' trainings).
    model_uri, model_id = registry.log_grader(grader, example_photos(processed.image_size))
    best = result.history[result.best_epoch - 1]
    sink.log_summary({
        "best_epoch": result.best_epoch,
        f"best_{cfg.select_metric}": result.best_score,
        "selection_score": result.best_score,
        "best_val_accuracy": best["val_accuracy"],
        "highest_test_accuracy": max(h["test_accuracy"] for h in result.history),
        **fitted.metrics(cfg.decision, cfg.fuse_eyes),
        **metrics,
    }, model_id=model_id)
    run_id = runs.active_run_id()
    dataset_name, dataset_digest = readback.input_dataset(run_id)
    facts = CardFacts(
        run_id=run_id, config=to_dict(cfg), dataset_name=dataset_name, dataset_digest=dataset_digest,
        grade_counts=processed.metadata["counts"], synthetic=processed.metadata.get("synthetic"),
        best_epoch=result.best_epoch, selection_score=result.best_score, metrics=metrics,
        referable_threshold=fitted.referable_threshold, operating_point_chosen=fitted.operating_point_chosen,
        cache_size=processed.image_size, cut_points=fitted.cut_points, fuse_weight=fitted.fuse_weight,
        temperature=fitted.temperature, gradability=fitted.gradability)
    artifacts.log_text(model_card(facts), CARD_ARTIFACT)
    runs.set_tags({tags.NOTE: run_description(facts)})
    # No test photo gradable (another camera's, say): the outcome says so with NaN.
    return TrainOutcome(run_id, model_uri, result.best_epoch, result.best_score,
                        metrics.get("selected_test_accuracy", float("nan")))


def split_outputs(grader: Grader, processed: ProcessedDataset, rows: pd.DataFrame, cfg: TrainConfig) -> SplitOutputs:
    """What the selected network (``grader``, read uncalibrated) gives a split's photos; of the
    training split, a sample of at most ``NOVELTY_PHOTOS``, evenly spread (all the novelty model needs)."""
    if rows["split"].iloc[0] == "train" and len(rows) > NOVELTY_PHOTOS:
        rows = rows.iloc[np.linspace(0, len(rows) - 1, NOVELTY_PHOTOS).astype(int)].reset_index(drop=True)
    dataset = FundusDataset(processed.root, rows, EvalPreset(cfg.image_size))
    loader = make_loader(dataset, cfg.batch_size, shuffle=False, num_workers=cfg.num_workers, seed=cfg.seed)
    targets, probabilities, features = grader.outputs_of(loader, calibrated=False)
    return SplitOutputs(targets, probabilities, features, measures_of(processed, rows), rows["patient"].to_numpy())


def outcome_of_run(run_id: str) -> TrainOutcome:
    """What ``log_selected_model`` returned, read back from a train run another process finished."""
    model_uri, metrics = readback.train_result(run_id)
    return TrainOutcome(run_id, model_uri, int(metrics["best_epoch"]), metrics["selection_score"],
                        metrics["selected_test_accuracy"])


def example_photos(side: int, count: int = SERVING_EXAMPLE_IMAGES) -> list[bytes]:
    """Synthetic photos for the logged model's input example: no patient's photo travels with a model."""
    rng = np.random.default_rng(0)
    photos = []
    for index in range(count):
        buffer = io.BytesIO()
        photo = render_fundus(index % NUM_GRADES, ("left", "right")[index % 2], (max(side, 128), max(side, 128) * 3 // 4), rng)
        photo.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def log_gradcam(model: nn.Module, processed: ProcessedDataset, test_rows: pd.DataFrame, image_size: int,
                device: torch.device, per_grade: int = GRADCAM_IMAGES_PER_GRADE) -> None:
    """Grad-CAM over a fixed sample (the first ``per_grade`` test images of each grade)."""
    sample = test_rows.sort_values("grade", kind="stable").groupby("grade", sort=True).head(per_grade).reset_index(drop=True)
    dataset = FundusDataset(processed.root, sample, EvalPreset(image_size))
    raw = torch.stack([dataset[i][0] for i in range(len(sample))])
    images = normalize_batch(raw).to(device)
    heatmaps = grad_cam(model, images, last_conv_stage(model)).cpu()
    with torch.no_grad():
        model.eval()
        predicted = model(images).argmax(dim=1).tolist()
    titles = [f"{image_id}: grade {grade}, predicted {p}" for image_id, grade, p in zip(sample["id"], sample["grade"], predicted)]
    figure = gradcam_figure(to_unit_float(raw), heatmaps, titles, columns=min(per_grade, len(sample)))
    artifacts.log_bytes(figure_png(figure), "gradcam/test_gradcam.png")
    artifacts.log_arrays("gradcam/test_gradcam.npz", heatmaps=heatmaps.numpy(), grades=sample["grade"].to_numpy(),
                         ids=sample["id"].to_numpy(dtype=str))


def load_run_checkpoint(run_id: str, checkpoint_dir: str) -> dict:
    """The last checkpoint of ``run_id``: the local file, else the one logged to the run."""
    local = checkpoint.run_checkpoint_path(checkpoint_dir, run_id)
    if not local.is_file():
        data = artifacts.read_artifact(run_id, f"{CHECKPOINT_FOLDER}/{checkpoint.LAST}")
        if data is None:
            raise ConfigError(f"run {run_id} has no checkpoint to resume from: neither {local} nor a "
                              f"{CHECKPOINT_FOLDER}/{checkpoint.LAST} artifact (it may have died before its first epoch ended)")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    return checkpoint.load(local)
