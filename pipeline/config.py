"""Typed configuration: dataclass defaults < experiments/*.yaml (with ``base:``) < CLI overrides.

One YAML schema serves every entry point: a ``preprocess`` section, a ``train`` section and
the study-level keys that ``main`` uses. Unknown keys are errors, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.catalog import (
    AUGMENT_RECIPES,
    DATASET_ROLES,
    DECISIONS,
    ENHANCEMENTS,
    HEADS,
    LAB_RECIPE,
    LAYOUTS,
    LR_SCHEDULES,
    OPTIMIZERS,
    SELECT_METRICS,
    SUPPORTED_MODELS,
    TTA_MODES,
    Configuration,
)
from pipeline.errors import ConfigError

CLASS_WEIGHTINGS = ("none", "inverse", "sqrt_inverse")
CACHE_FORMATS = ("jpeg", "uint8")
AUGMENT_DEVICES = ("loader", "model")
BAD_IMAGE_POLICIES = ("error", "skip")
# Five stride-2 stages take a ResNet input down by 32x; below that the last stage sees < 1 pixel.
MIN_IMAGE_SIZE = 32
# numpy's generators take seeds in [0, 2**32 - 1]; torch's would take more, so numpy's range is the rule.
MAX_SEED = 2**32 - 1


@dataclass
class PreprocessConfig:
    raw_dir: str = "data/raw"
    image_dir: str = ""  # empty: <raw_dir>/images if it exists, else raw_dir itself
    data_dir: str = "data/processed"
    image_size: int = 512
    val_fraction: float = 0.2
    seed: int = 0
    num_workers: int = 0  # 0: one process per CPU core
    on_bad_image: str = "error"  # error | skip: skip leaves corrupt photos out and records them
    max_bad_fraction: float = 0.01  # with skip: fail anyway when more than this share is bad
    # none | ben_graham: subtract the local average colour, black rim (a cache of its own, <size>px-ben_graham)
    enhance: str = "none"
    layout: str = "labs"  # the set's own layout (catalog.LAYOUTS; data.layouts reads each)
    # Where a set ships no labelled test split: this share of its patients becomes test (seeded,
    # stratified by grade, whole patients).
    test_fraction: float = 0.2
    role: str = "study"  # study: train/val/test | external: every photo a test photo (validation elsewhere)


@dataclass
class TrainConfig:
    data_dir: str = "data/processed"
    model: str = "resnet18"
    pretrained: bool = False
    weights_path: str = ""  # a local ImageNet state dict, for machines that cannot download
    head: str = "classification"  # classification (5 logits) | ordinal (cumulative P(grade >= k))
    # argmax | kappa_thresholds: cut points on the expected grade, fitted for QWK on validation
    decision: str = "argmax"
    # Blend each eye's probabilities with the same patient's other eye's (weight fitted on
    # validation) wherever both photos are graded together: evaluate, predict; not single photos.
    fuse_eyes: bool = False
    epochs: int = 10
    batch_size: int = 16
    optimizer: str = "sgd"  # sgd (the labs', with momentum) | adamw
    lr: float = 0.001  # the base lr: every epoch's under lr_schedule=constant
    lr_schedule: str = "constant"  # constant | cosine | step (tenfold down after each third)
    warmup_epochs: int = 0  # epochs of linear warm-up to lr before the schedule
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0005
    image_size: int = 224
    # The processed cache to read (none | ben_graham); the grader prepares new photos the same way.
    enhance: str = "none"
    freeze_epochs: int = 0
    rotation_degrees: float = 20.0  # augment=lab's rotation range, +-degrees
    # lab: flips and a rotation up to rotation_degrees; field: flips, any rotation, +-10% shift,
    # 0.9-1.1 scale, 0.8-1.2 brightness and contrast (see data.augment)
    augment: str = "lab"
    tta: str = "none"  # none | flips: validation, test, evaluate, predict and serving average the four flips
    seed: int = 0
    num_workers: int = 2
    # jpeg: decode the processed JPEGs every epoch; uint8: decode them once, at image_size, into
    # memory-mapped arrays beside the manifest (image_size^2 x 3 bytes per image), and read those.
    cache_format: str = "jpeg"
    # loader: the augmentation in the loader workers (PIL); model: on whole uint8 batches on the
    # training device (the same per-image draws), leaving the workers only the reading.
    augment_device: str = "loader"
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto avoids bf16 on CPUs without native support
    channels_last: bool = True
    compile: bool = False
    nproc: int = 1  # >1: relaunch under torchrun with DistributedDataParallel
    select_metric: str = "val_kappa"  # chooses the best epoch (and, in main, the champion)
    class_weighting: str = "none"  # none | inverse | sqrt_inverse: cross-entropy weights per grade
    weighted_sampler: bool = False  # draw training images with inverse grade frequency
    bootstrap_resamples: int = 1000  # for the 95% confidence intervals of the selected model
    # The referable-DR operating point: the most specific threshold on P(grade >= 2) that finds this share
    # of the referable eyes of the validation set (metrics.operating_threshold).
    referable_target_sensitivity: float = 0.9
    checkpoint_dir: str = "checkpoints"  # <checkpoint_dir>/<run id>/last.pt, rewritten every epoch
    checkpoint_artifact: bool = True  # also log last.pt to the run every epoch (resume on another machine)
    keep_checkpoint: bool = False  # keep the local last.pt once the run has finished (removed by default)
    resume: str = ""  # a train run id to continue, or "auto": the latest unfinished run of this configuration
    # The training recipe's name, for the study's tables (a study sets it per recipe; see RecipeConfig).
    recipe: str = LAB_RECIPE


# Set per configuration by the study's grid, never by a recipe.
GRID_KEYS = ("model", "pretrained", "seed", "recipe")


@dataclass
class RecipeConfig:
    """A training recipe of the study: the ``train`` keys in which it differs from the ``train``
    section, trained for every model (and ``pretrained`` value) of the study."""

    name: str = LAB_RECIPE
    pretrained: list[bool] = field(default_factory=list)  # empty: the study's ``pretrained`` values
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExternalDatasetConfig:
    """A set the champion is validated on after the study: preprocessed with the study's cache
    settings, every photo a test photo; never trained or selected on."""

    name: str = ""  # how tables and runs name it
    raw_dir: str = ""
    layout: str = "labs"
    image_dir: str = ""


@dataclass
class StudyConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    models: list[str] = field(default_factory=lambda: list(SUPPORTED_MODELS))
    pretrained: list[bool] = field(default_factory=lambda: [True, False])
    # The labs' recipe alone by default; experiments/field.yaml adds the field's beside it.
    recipes: list[RecipeConfig] = field(default_factory=lambda: [RecipeConfig()])
    skip_unavailable_weights: bool = False
    seeds: int = 1  # runs per configuration, with seeds train.seed, train.seed + 1, ...
    # Trainings at once: 1 trains one after another in this process; N > 1 runs up to N train
    # processes side by side (one per GPU where there are GPUs, sharing the cores on a CPU machine).
    parallel: int = 1
    registered_model: str = "dr-resnet"
    champion_alias: str = "champion"
    # Sets the champion is validated on once chosen (the cross-dataset table); none by default.
    external: list[ExternalDatasetConfig] = field(default_factory=list)
    # Train values for one depth only, over the train section and every recipe:
    # {resnet50: {lr: 0.001}} (a deeper net from scratch may need a lower learning rate).
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """The ``sweep`` entry point's own options; each trial's train values start from a TrainConfig."""

    trials: int = 20  # how many finished (complete or pruned) trials the study should hold, earlier runs' included
    metric: str = "val_kappa"  # maximised; also every trial's select_metric
    space: str = "experiments/sweeps/recipe.yaml"  # the search space file (see search_space.py)
    # Optuna's storage (an SQLAlchemy URL); a sweep with the same study_name there continues that study.
    storage: str = "sqlite:///optuna.db"
    study_name: str = "retina-flow-sweep"
    pruner_startup_trials: int = 5  # trials that must finish before any trial is pruned
    pruner_warmup_epochs: int = 1  # a trial's first epochs, never pruned (early epochs are noisy)


ConfigT = TypeVar("ConfigT")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def parse_bool(text: str | bool, name: str) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean; use true or false")


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Converts a YAML or command-line value to the annotated type, or fails naming it."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if not isinstance(value, list):
            raise ConfigError(f"{name}={value!r} must be a list")
        if dataclasses.is_dataclass(item_type):
            return [_build(item_type, _mapping(item, f"{name}[{index}]"), prefix=f"{name}[{index}].")
                    for index, item in enumerate(value)]
        return [_coerce(item, item_type, name) for item in value]
    if origin is dict:
        return dict(_mapping(value, name))  # checked by whoever reads it (see recipe_train_config)
    if annotation is bool:
        return parse_bool(value, name)
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be an integer")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} must be an integer") from None
        if not as_float.is_integer():
            raise ConfigError(f"{name}={value!r} must be an integer")
        return int(as_float)
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} must be a number") from None
    if annotation is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{name}={value!r} must be a string")
        return str(value)
    raise TypeError(f"unsupported config annotation {annotation!r} for {name}")


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of keys, got {value!r}")
    return value


def coerce_int(value: Any, name: str, minimum: int | None = None) -> int:
    """An integer option from the command line, with the same messages as config keys."""
    number = _coerce(value, int, name)
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} must be at least {minimum}")
    return number


def coerce_value(value: Any, value_type: type, name: str) -> Any:
    """A command-line option of ``value_type``, with the same messages as config keys."""
    return _coerce(value, value_type, name)


def coerce_train_value(name: str, value: Any) -> Any:
    """``value`` as TrainConfig's key ``name`` takes it, or a ConfigError naming both."""
    return _coerce(value, typing.get_type_hints(TrainConfig)[name], name)


def coerce_list(value: Any, item_type: type, name: str) -> list:
    """A comma-separated command-line list (``resnet18,resnet50``) of ``item_type`` values."""
    return _coerce(value, list[item_type], name)


def _build(cls: type[ConfigT], values: dict[str, Any], prefix: str = "") -> ConfigT:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f" in section '{prefix.rstrip('.')}'" if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}{where}; valid keys: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a mapping of keys, got {value!r}")
            kwargs[name] = _build(annotation, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, annotation, prefix + name)
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_with_bases(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads an experiment file, resolving ``base:`` (relative to the file) recursively."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"config files inherit from each other in a cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    return _deep_merge(read_yaml_with_bases(path.parent / base, (*_seen, path)), loaded)


def load_study_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Builds the study config from defaults, an optional YAML file and flat overrides.

    A flat override such as ``image_size`` applies to every section that has that key (both
    ``preprocess`` and ``train``); a dotted one (``train.image_size``) to that section only. An
    override of a ``train`` key also wins over a recipe that sets it (the command line wins).
    """
    values = read_yaml_with_bases(path) if path else {}
    for key, value in (overrides or {}).items():
        nested = _nest_override(key, value)
        values = _deep_merge(values, nested)
        for leaf, leaf_value in nested.get("train", {}).items():
            _override_recipes(values, leaf, leaf_value)
    return _build(StudyConfig, values)


def _override_recipes(values: dict[str, Any], key: str, value: Any) -> None:
    """Sets a train key given on the command line in every recipe of ``values`` that sets it too."""
    for recipe in values.get("recipes") or []:
        if isinstance(recipe, dict) and isinstance(recipe.get("train"), dict) and key in recipe["train"]:
            recipe["train"] = {**recipe["train"], key: value}


def load_sweep_config(values: dict[str, Any]) -> SweepConfig:
    """The sweep's options from defaults and the given ones (strings from the command line)."""
    return _build(SweepConfig, values)


def sweep_option_names() -> list[str]:
    return [f.name for f in dataclasses.fields(SweepConfig)]


def _nest_override(key: str, value: Any) -> dict[str, Any]:
    if "." in key:
        section, _, leaf = key.partition(".")
        return {section: {leaf: value}}
    nested: dict[str, Any] = {}
    if key in _study_level_keys():
        nested[key] = value
        if key in GRID_KEYS:  # `pretrained`: the study's list; the grid sets train's per configuration
            return nested
    for section, section_type in _SECTION_TYPES.items():
        if key in {f.name for f in dataclasses.fields(section_type)}:
            nested[section] = {key: value}
    if not nested:
        raise ConfigError(f"unknown option '{key}'; valid options: {', '.join(study_option_names())}")
    return nested


def _study_level_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(StudyConfig) if f.name not in _SECTION_TYPES}


_SECTION_TYPES: dict[str, type] = {"preprocess": PreprocessConfig, "train": TrainConfig}


def study_option_names() -> list[str]:
    """Every flat option of a study (a section's key sets it in every section that has it)."""
    names = _study_level_keys()
    for section_type in _SECTION_TYPES.values():
        names.update(f.name for f in dataclasses.fields(section_type))
    return sorted(names)


def dotted_option_names() -> list[str]:
    """``section.key`` for every key of every section: sets it in that section only."""
    return [f"{section}.{f.name}" for section, section_type in _SECTION_TYPES.items()
            for f in dataclasses.fields(section_type)]


def section_option_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_SECTION_TYPES[section])]


def require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Fails naming the key, its value and the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}")


def validate_train_config(cfg: TrainConfig) -> None:
    """Rejects values no run could succeed with, before any data is read."""
    require_choice("model", cfg.model, SUPPORTED_MODELS)
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"image_size={cfg.image_size} is too small for {cfg.model}: its five stride-2 stages need "
            f"at least {MIN_IMAGE_SIZE} px"
        )
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be at least 1")
    if not 0 <= cfg.freeze_epochs <= cfg.epochs:
        raise ConfigError(f"freeze_epochs={cfg.freeze_epochs} must be between 0 and epochs={cfg.epochs}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"lr={cfg.lr} must be a positive number")
    require_in_range("momentum", cfg.momentum, 0, 1, upper_open=True)
    require_in_range("weight_decay", cfg.weight_decay, 0, math.inf)
    require_in_range("rotation_degrees", cfg.rotation_degrees, 0, 180)
    require_seed(cfg.seed)
    require_choice("tta", cfg.tta, TTA_MODES)
    require_choice("head", cfg.head, HEADS)
    require_choice("decision", cfg.decision, DECISIONS)
    require_choice("enhance", cfg.enhance, ENHANCEMENTS)
    require_choice("augment", cfg.augment, AUGMENT_RECIPES)
    require_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    require_choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise ConfigError(f"warmup_epochs={cfg.warmup_epochs} must be between 0 and epochs - 1 ({cfg.epochs - 1})")
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers={cfg.num_workers} must be 0 or more")
    if cfg.nproc < 1:
        raise ConfigError(f"nproc={cfg.nproc} must be at least 1")
    require_choice("select_metric", cfg.select_metric, SELECT_METRICS)
    require_choice("cache_format", cfg.cache_format, CACHE_FORMATS)
    require_choice("augment_device", cfg.augment_device, AUGMENT_DEVICES)
    require_choice("class_weighting", cfg.class_weighting, CLASS_WEIGHTINGS)
    if cfg.bootstrap_resamples < 0:
        raise ConfigError(f"bootstrap_resamples={cfg.bootstrap_resamples} must be 0 (no intervals) or more")
    if not 0 < cfg.referable_target_sensitivity <= 1:
        raise ConfigError(f"referable_target_sensitivity={cfg.referable_target_sensitivity} must be in (0, 1]")


def require_in_range(name: str, value: float, lower: float, upper: float, *, upper_open: bool = False) -> None:
    """Fails naming the key, its value and the valid interval when ``value`` (NaN included) is outside it."""
    inside = lower <= value < upper if upper_open else lower <= value <= upper
    if not (math.isfinite(value) and inside):
        closing = ")" if upper_open or math.isinf(upper) else "]"
        raise ConfigError(f"{name}={value} must be a finite number in [{lower:g}, {upper:g}{closing}")


def require_seed(seed: int, name: str = "seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name}={seed} must be an integer in [0, {MAX_SEED}]")


def validate_preprocess_config(cfg: PreprocessConfig) -> None:
    require_seed(cfg.seed)
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers={cfg.num_workers} must be 0 (one process per CPU core) or more")
    require_choice("on_bad_image", cfg.on_bad_image, BAD_IMAGE_POLICIES)
    require_choice("layout", cfg.layout, LAYOUTS)
    require_choice("role", cfg.role, DATASET_ROLES)
    if not 0 < cfg.test_fraction < 1:
        raise ConfigError(f"test_fraction={cfg.test_fraction} must be between 0 and 1 (exclusive)")
    require_choice("enhance", cfg.enhance, ENHANCEMENTS)
    if not 0 <= cfg.max_bad_fraction < 1:
        raise ConfigError(f"max_bad_fraction={cfg.max_bad_fraction} must be in [0, 1)")
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size={cfg.image_size} is too small: ResNets need at least {MIN_IMAGE_SIZE} px")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction={cfg.val_fraction} must be between 0 and 1 (exclusive)")


# An external set's name names its processed folder and its runs.
EXTERNAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_external(external: list[ExternalDatasetConfig]) -> None:
    names = [dataset.name for dataset in external]
    if len(set(names)) < len(names) or not all(names):
        raise ConfigError(f"external datasets must each have a name, each once; got {names}")
    for dataset in external:
        if not EXTERNAL_NAME.fullmatch(dataset.name):
            raise ConfigError(f"external name {dataset.name!r} must be letters, digits, '.', '_' or '-' (it names "
                              "a folder and a run)")
        require_choice(f"external[{dataset.name}].layout", dataset.layout, LAYOUTS)
        if not dataset.raw_dir:
            raise ConfigError(f"external[{dataset.name}] names no raw_dir")


def validate_study_config(cfg: StudyConfig) -> None:
    for model in cfg.models:
        if model not in SUPPORTED_MODELS:
            raise ConfigError(f"models contains {model!r}, which is not supported; choose from {', '.join(SUPPORTED_MODELS)}")
    if not cfg.models or not cfg.pretrained:
        raise ConfigError("models and pretrained must each list at least one value")
    for name in ("seeds", "parallel"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be at least 1")
    names = [recipe.name for recipe in cfg.recipes]
    if not names or len(set(names)) < len(names) or not all(names):
        raise ConfigError(f"recipes must name at least one recipe, each once and non-empty; got {names}")
    validate_preprocess_config(cfg.preprocess)
    validate_train_config(cfg.train)
    validate_external(cfg.external)
    for model in cfg.per_model:
        if model not in cfg.models:
            raise ConfigError(f"per_model names {model!r}, which is not one of the study's models "
                              f"({', '.join(cfg.models)})")
    for recipe in cfg.recipes:
        train = recipe_train_config(cfg.train, recipe)
        try:
            validate_train_config(train)
        except ConfigError as exc:
            raise ConfigError(f"recipes[{recipe.name}]: {exc}") from None
        if train.enhance != cfg.preprocess.enhance:
            # The study preprocesses one cache, of preprocess.enhance: another would not exist.
            raise ConfigError(f"recipes[{recipe.name}] trains on enhance={train.enhance!r} but the study preprocesses "
                              f"enhance={cfg.preprocess.enhance!r}; set enhance for the whole study (-P enhance=...)")
        # A sound recipe may still be spoilt for one depth by that depth's own values.
        for model in cfg.per_model:
            try:
                validate_train_config(model_train_config(train, model, cfg.per_model))
            except ConfigError as exc:
                raise ConfigError(f"per_model[{model}] with recipes[{recipe.name}]: {exc}") from None


def recipe_train_config(train: TrainConfig, recipe: RecipeConfig) -> TrainConfig:
    """The ``train`` section with ``recipe``'s keys over it, named after it; unknown keys and the
    grid's own keys (``GRID_KEYS``) are errors naming the recipe."""
    where = f"recipes[{recipe.name}].train"
    grid = sorted(set(recipe.train) & set(GRID_KEYS))
    if grid:
        raise ConfigError(f"{where} sets {', '.join(grid)}, which the study's grid sets per configuration "
                          "(models, pretrained, seeds)")
    return _build(TrainConfig, {**to_dict(train), **recipe.train, "recipe": recipe.name}, prefix=f"{where}.")


def model_train_config(train: TrainConfig, model: str, per_model: dict[str, dict[str, Any]]) -> TrainConfig:
    """``train`` (a recipe's) for ``model``: with ``per_model[model]``'s keys over it; unknown keys
    and the grid's own keys are errors naming the model."""
    values = per_model.get(model, {})
    where = f"per_model[{model}]"
    grid = sorted(set(values) & set(GRID_KEYS))
    if grid:
        raise ConfigError(f"{where} sets {', '.join(grid)}, which the study's grid sets per configuration")
    return _build(TrainConfig, {**to_dict(train), **values, "model": model}, prefix=f"{where}.") if values else \
        dataclasses.replace(train, model=model)


def study_configurations(cfg: StudyConfig) -> list[Configuration]:
    """Every cell of the study's grid, recipe by recipe, then depth, then pretraining: the study's
    ``pretrained`` values, narrowed to a recipe's own where it lists them."""
    return [Configuration(model, pretrained, recipe.name) for recipe in cfg.recipes for model in cfg.models
            for pretrained in cfg.pretrained if not recipe.pretrained or pretrained in recipe.pretrained]


def validate_sweep_config(cfg: SweepConfig) -> None:
    require_choice("metric", cfg.metric, SELECT_METRICS)
    if cfg.trials < 1:
        raise ConfigError(f"trials={cfg.trials} must be at least 1")
    for name in ("pruner_startup_trials", "pruner_warmup_epochs"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}={getattr(cfg, name)} must be 0 or more")
    for name in ("storage", "study_name", "space"):
        if not getattr(cfg, name).strip():
            raise ConfigError(f"{name} must not be empty")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'train': {'lr': 0.1}}`` -> ``{'train.lr': 0.1}``: the shape MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def add_override_arguments(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """One ``--name VALUE`` flag per config key; values stay strings until the config coerces them."""
    for name in names:
        parser.add_argument(f"--{name}", dest=name, default=None, metavar="VALUE")


def given_overrides(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
