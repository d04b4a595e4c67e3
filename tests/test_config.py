import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from pipeline.catalog import SUPPORTED_MODELS
from pipeline.config import (
    ExternalDatasetConfig,
    PreprocessConfig,
    StudyConfig,
    SweepConfig,
    TrainConfig,
    coerce_int,
    flatten,
    load_study_config,
    recipe_train_config,
    study_configurations,
    load_sweep_config,
    to_dict,
    validate_preprocess_config,
    validate_study_config,
    validate_sweep_config,
    validate_train_config,
)
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_without_files():
    cfg = load_study_config()
    assert cfg == StudyConfig()
    assert cfg.preprocess.image_size == 512 and cfg.train.image_size == 224


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.1\npreprocess:\n  image_size: 300\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  lr: 0.05\n")
    cfg = load_study_config(tmp_path / "child.yaml", {"train.epochs": "3"})
    assert (cfg.train.epochs, cfg.train.lr, cfg.preprocess.image_size) == (3, 0.05, 300)


def test_flat_override_reaches_every_section_with_the_key():
    cfg = load_study_config(None, {"image_size": "96", "seed": "5", "enhance": "ben_graham"})
    assert cfg.preprocess.image_size == cfg.train.image_size == 96
    assert cfg.preprocess.seed == cfg.train.seed == 5
    assert cfg.preprocess.enhance == cfg.train.enhance == "ben_graham"  # `main -P enhance=...`: the cache and its reader


@pytest.mark.parametrize("text, expected", [("resnet18", ["resnet18"]), ("resnet18, resnet50", ["resnet18", "resnet50"])])
def test_list_overrides(text, expected):
    assert load_study_config(None, {"models": text}).models == expected


def test_unknown_keys_are_errors(tmp_path):
    (tmp_path / "typo.yaml").write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ConfigError, match="epohcs.*section 'train'"):
        load_study_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        load_study_config(None, {"bogus": "1"})


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_study_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("key, value, message", [
    ("train.epochs", "2.5", "epochs='2.5' must be an integer"),
    ("train.lr", "fast", "lr='fast' must be a number"),
    ("train.pretrained", "maybe", "pretrained='maybe' is not a boolean"),
])
def test_values_are_type_checked(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_study_config(None, {key: value})


@pytest.mark.parametrize("model", SUPPORTED_MODELS)
def test_image_size_too_small_names_value_and_model(model):
    with pytest.raises(ConfigError, match=f"image_size=16 is too small for {model}"):
        validate_train_config(TrainConfig(model=model, image_size=16))


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError, match="model='resnet34' is not supported; choose one of resnet18, resnet50"):
        validate_train_config(TrainConfig(model="resnet34"))


def test_coerce_int_minimum():
    assert coerce_int("4", "batch_size", 1) == 4
    with pytest.raises(ConfigError, match="batch_size=0 must be at least 1"):
        coerce_int("0", "batch_size", 1)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_file_loads_and_validates(path):
    validate_study_config(load_study_config(path))


@pytest.mark.parametrize("section, config_type", [("train", TrainConfig), ("preprocess", PreprocessConfig)])
def test_mlproject_defaults_equal_the_dataclass(section, config_type):
    """`mlflow run -e train` logs MLproject's defaults as params: they must be what actually runs,
    and the command must pass each one on."""
    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][section]
    declared = spec["parameters"]
    defaults = to_dict(config_type())
    assert set(declared) == set(defaults)
    for name, value in defaults.items():
        loaded = getattr(load_study_config(None, {f"{section}.{name}": str(declared[name]["default"])}), section)
        assert getattr(loaded, name) == value, name
        assert f"--{name} {{{name}}}" in spec["command"], name


def test_mlproject_sweep_defaults_equal_the_dataclasses():
    """The sweep's own parameters are SweepConfig's; `config` and `data_dir` lead to the train values."""
    declared = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["sweep"]["parameters"]
    own = {name: spec for name, spec in declared.items() if name not in ("config", "data_dir")}
    assert set(own) == set(to_dict(SweepConfig()))
    assert load_sweep_config({name: str(spec["default"]) for name, spec in own.items()}) == SweepConfig()
    assert declared["data_dir"]["default"] == TrainConfig().data_dir and declared["config"]["default"] == ""


def test_flatten_gives_dotted_param_names():
    flat = flatten(to_dict(StudyConfig()))
    assert flat["train.lr"] == 0.001 and flat["preprocess.image_size"] == 512 and flat["registered_model"] == "dr-resnet"


# --- One test per validation rule: each names the offending key and value, and a boundary passes. ---


def _case_id(values: dict) -> str:
    return "-".join(f"{key}={value}" for key, value in values.items())


TRAIN_REJECTIONS = [
    ({"epochs": 0}, "epochs=0 must be at least 1"),
    ({"epochs": -3}, "epochs=-3 must be at least 1"),
    ({"batch_size": 0}, "batch_size=0 must be at least 1"),
    ({"epochs": 5, "freeze_epochs": -1}, "freeze_epochs=-1 must be between 0 and epochs=5"),
    ({"epochs": 5, "freeze_epochs": 6}, "freeze_epochs=6 must be between 0 and epochs=5"),
    ({"lr": 0.0}, "lr=0.0 must be a positive number"),
    ({"lr": -0.01}, "lr=-0.01 must be a positive number"),
    ({"lr": float("nan")}, "lr=nan must be a positive number"),
    ({"lr": float("inf")}, "lr=inf must be a positive number"),
    ({"num_workers": -1}, "num_workers=-1 must be 0 or more"),
    ({"nproc": 0}, "nproc=0 must be at least 1"),
    ({"optimizer": "adam"}, "optimizer='adam' is not supported; choose one of sgd, adamw"),
    ({"lr_schedule": "linear"}, "lr_schedule='linear' is not supported; choose one of constant, cosine, step"),
    ({"warmup_epochs": 10}, "warmup_epochs=10 must be between 0 and epochs - 1 (9)"),
    ({"warmup_epochs": -1}, "warmup_epochs=-1 must be between 0 and epochs - 1 (9)"),
    ({"select_metric": "val_loss"}, "select_metric='val_loss' is not supported; choose one of val_kappa, "),
    ({"class_weighting": "balanced"}, "class_weighting='balanced' is not supported; choose one of none, inverse, sqrt_inverse"),
    ({"cache_format": "png"}, "cache_format='png' is not supported; choose one of jpeg, uint8"),
    ({"augment_device": "gpu"}, "augment_device='gpu' is not supported; choose one of loader, model"),
    ({"enhance": "clahe"}, "enhance='clahe' is not supported; choose one of none, ben_graham"),
    ({"augment": "heavy"}, "augment='heavy' is not supported; choose one of lab, field"),
    ({"bootstrap_resamples": -1}, "bootstrap_resamples=-1 must be 0 (no intervals) or more"),
    ({"referable_target_sensitivity": 0.0}, "referable_target_sensitivity=0.0 must be in (0, 1]"),
    ({"referable_target_sensitivity": 1.01}, "referable_target_sensitivity=1.01 must be in (0, 1]"),
]


@pytest.mark.parametrize("values, message", TRAIN_REJECTIONS, ids=[_case_id(v) for v, _ in TRAIN_REJECTIONS])
def test_train_rule_rejects_and_names_key_and_value(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_train_config(TrainConfig(**values))


@pytest.mark.parametrize("values", [
    {"epochs": 1},
    {"batch_size": 1},
    {"epochs": 5, "freeze_epochs": 0},
    {"epochs": 5, "freeze_epochs": 5},
    {"lr": 1e-12},
    {"num_workers": 0},
    {"nproc": 1},
    {"image_size": 32},
    {"bootstrap_resamples": 0},
    {"referable_target_sensitivity": 1.0},
    {"referable_target_sensitivity": 0.01},
    *({"select_metric": metric} for metric in ("val_kappa", "val_accuracy", "val_balanced_accuracy",
                                               "val_macro_f1", "val_referable_auc")),
    *({"class_weighting": weighting} for weighting in ("none", "inverse", "sqrt_inverse")),
    *({"cache_format": cache_format} for cache_format in ("jpeg", "uint8")),
    *({"augment_device": place} for place in ("loader", "model")),
    *({"enhance": enhance} for enhance in ("none", "ben_graham")),
    *({"augment": recipe} for recipe in ("lab", "field")),
    *({"optimizer": name} for name in ("sgd", "adamw")),
    *({"lr_schedule": schedule} for schedule in ("constant", "cosine", "step")),
    *({"tta": mode} for mode in ("none", "flips")),
    {"epochs": 5, "warmup_epochs": 4},
], ids=_case_id)
def test_train_rule_boundary_is_accepted(values):
    validate_train_config(TrainConfig(**values))


PREPROCESS_REJECTIONS = [
    ({"on_bad_image": "ignore"}, "on_bad_image='ignore' is not supported; choose one of error, skip"),
    ({"enhance": "Ben_Graham"}, "enhance='Ben_Graham' is not supported; choose one of none, ben_graham"),
    ({"max_bad_fraction": -0.1}, "max_bad_fraction=-0.1 must be in [0, 1)"),
    ({"max_bad_fraction": 1.0}, "max_bad_fraction=1.0 must be in [0, 1)"),
    ({"image_size": 31}, "image_size=31 is too small: ResNets need at least 32 px"),
    ({"val_fraction": 0.0}, "val_fraction=0.0 must be between 0 and 1 (exclusive)"),
    ({"val_fraction": 1.0}, "val_fraction=1.0 must be between 0 and 1 (exclusive)"),
    ({"test_fraction": 0.0}, "test_fraction=0.0 must be between 0 and 1 (exclusive)"),
    ({"layout": "eyepacs"}, "layout='eyepacs' is not supported; choose one of labs, kaggle_eyepacs, aptos2019, "),
    ({"role": "holdout"}, "role='holdout' is not supported; choose one of study, external"),
]


@pytest.mark.parametrize("values, message", PREPROCESS_REJECTIONS, ids=[_case_id(v) for v, _ in PREPROCESS_REJECTIONS])
def test_preprocess_rule_rejects_and_names_key_and_value(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_preprocess_config(PreprocessConfig(**values))


@pytest.mark.parametrize("values", [
    {"on_bad_image": "error"},
    {"on_bad_image": "skip"},
    {"enhance": "none"},
    {"enhance": "ben_graham"},
    {"max_bad_fraction": 0.0},
    {"max_bad_fraction": 0.999},
    {"image_size": 32},
    {"val_fraction": 0.001},
    {"val_fraction": 0.999},
], ids=_case_id)
def test_preprocess_rule_boundary_is_accepted(values):
    validate_preprocess_config(PreprocessConfig(**values))


@pytest.mark.parametrize("values, message", [
    ({"models": ["resnet18", "vgg16"]}, "models contains 'vgg16', which is not supported; choose from resnet18, resnet50"),
    # This rule's message names both keys but no value (an empty list has none to name).
    ({"models": []}, "models and pretrained must each list at least one value"),
    ({"pretrained": []}, "models and pretrained must each list at least one value"),
    ({"seeds": 0}, "seeds=0 must be at least 1"),
    ({"parallel": 0}, "parallel=0 must be at least 1"),
    ({"external": [ExternalDatasetConfig("m2", "raw", "messidor")]},
     "external[m2].layout='messidor' is not supported; choose one of labs, "),
    ({"external": [ExternalDatasetConfig("m2", "")]}, "external[m2] names no raw_dir"),
    ({"external": [ExternalDatasetConfig("m2", "a"), ExternalDatasetConfig("m2", "b")]},
     "external datasets must each have a name, each once; got ['m2', 'm2']"),
    ({"external": [ExternalDatasetConfig("../m2", "a")]}, "external name '../m2' must be letters, digits, "),
], ids=["unknown-model", "empty-models", "empty-pretrained", "seeds=0", "parallel=0", "external-layout",
        "external-raw-dir", "external-twice", "external-name"])
def test_study_rule_rejects_and_names_key_and_value(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_study_config(StudyConfig(**values))


@pytest.mark.parametrize("values", [
    {"models": ["resnet50"]},
    {"pretrained": [False]},
    {"seeds": 1},
    {"parallel": 1},
], ids=_case_id)
def test_study_rule_boundary_is_accepted(values):
    validate_study_config(StudyConfig(**values))


SWEEP_REJECTIONS = [
    ({"metric": "val_loss"}, "metric='val_loss' is not supported; choose one of val_kappa, val_accuracy, "),
    ({"trials": 0}, "trials=0 must be at least 1"),
    ({"pruner_startup_trials": -1}, "pruner_startup_trials=-1 must be 0 or more"),
    ({"pruner_warmup_epochs": -1}, "pruner_warmup_epochs=-1 must be 0 or more"),
    ({"storage": " "}, "storage must not be empty"),
    ({"study_name": ""}, "study_name must not be empty"),
]


@pytest.mark.parametrize("values, message", SWEEP_REJECTIONS, ids=[_case_id(v) for v, _ in SWEEP_REJECTIONS])
def test_sweep_rule_rejects_and_names_key_and_value(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_sweep_config(SweepConfig(**values))


@pytest.mark.parametrize("values", [
    {"trials": 1}, {"pruner_startup_trials": 0}, {"pruner_warmup_epochs": 0}, {"metric": "val_referable_auc"},
], ids=_case_id)
def test_sweep_rule_boundary_is_accepted(values):
    validate_sweep_config(SweepConfig(**values))


def test_unknown_sweep_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) trails; valid keys: metric, "):
        load_sweep_config({"trails": "3"})


def test_study_validation_reaches_both_sections():
    with pytest.raises(ConfigError, match=re.escape("val_fraction=1.0 must be between 0 and 1")):
        validate_study_config(StudyConfig(preprocess=PreprocessConfig(val_fraction=1.0)))
    with pytest.raises(ConfigError, match=re.escape("nproc=0 must be at least 1")):
        validate_study_config(StudyConfig(train=TrainConfig(nproc=0)))


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="config file not found: " + re.escape(str(missing.resolve()))):
        load_study_config(missing)


def test_missing_base_file_is_named(tmp_path):
    (tmp_path / "child.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: " + re.escape(str((tmp_path / "gone.yaml").resolve()))):
        load_study_config(tmp_path / "child.yaml")


def test_invalid_yaml_is_named(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: [3\n")
    with pytest.raises(ConfigError, match=f"config file {re.escape(str(broken.resolve()))} is not valid YAML: "):
        load_study_config(broken)


def test_top_level_list_is_not_a_mapping(tmp_path):
    listed = tmp_path / "listed.yaml"
    listed.write_text("- train\n- preprocess\n")
    with pytest.raises(ConfigError, match=f"config file {re.escape(str(listed.resolve()))} must hold a mapping of keys, got list"):
        load_study_config(listed)


@pytest.mark.parametrize("text, message", [
    ("train: 3\n", "train must be a mapping of keys, got 3"),
    ("preprocess: [1, 2]\n", "preprocess must be a mapping of keys, got [1, 2]"),
], ids=["train-int", "preprocess-list"])
def test_section_that_is_not_a_mapping(tmp_path, text, message):
    (tmp_path / "section.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study_config(tmp_path / "section.yaml")


def test_well_formed_yaml_file_is_accepted(tmp_path):
    """The counterpart of the YAML rules: a file, valid YAML, mapping sections: loads."""
    (tmp_path / "ok.yaml").write_text("train:\n  epochs: 3\npreprocess: {}\nseeds: 2\n")
    cfg = load_study_config(tmp_path / "ok.yaml")
    validate_study_config(cfg)
    assert (cfg.train.epochs, cfg.seeds) == (3, 2)


def test_the_default_study_is_the_labs_grid_under_its_old_names():
    configurations = study_configurations(StudyConfig())
    assert [c.label for c in configurations] == ["resnet18 pretrained", "resnet18 scratch",
                                                 "resnet50 pretrained", "resnet50 scratch"]
    assert {c.recipe for c in configurations} == {"lab"}


def test_field_yaml_puts_the_field_recipe_beside_the_labs_four():
    cfg = load_study_config("experiments/field.yaml")
    validate_study_config(cfg)
    labels = [c.label for c in study_configurations(cfg)]
    assert labels == ["resnet18 pretrained", "resnet18 scratch", "resnet50 pretrained", "resnet50 scratch",
                      "resnet18 pretrained field", "resnet50 pretrained field"]
    lab, field_recipe = (recipe_train_config(cfg.train, recipe) for recipe in cfg.recipes)
    assert lab == dataclasses.replace(cfg.train, recipe="lab") and lab.optimizer == "sgd" and lab.head == "classification"
    expected = {"head": "ordinal", "decision": "kappa_thresholds", "optimizer": "adamw", "lr_schedule": "cosine",
                "warmup_epochs": 1, "augment": "field", "tta": "flips", "fuse_eyes": True, "recipe": "field"}
    assert {key: getattr(field_recipe, key) for key in expected} == expected
    assert field_recipe.image_size == cfg.train.image_size == 512  # what the recipe leaves alone stays the study's


@pytest.mark.parametrize("recipes, message", [
    ([{"name": "x", "train": {"optimiser": "adamw"}}], "unknown config key(s) optimiser in section 'recipes[x].train'"),
    ([{"name": "x", "train": {"model": "resnet50"}}], "recipes[x].train sets model, which the study's grid sets"),
    ([{"name": "x", "train": {"head": "regression"}}], "head='regression' is not supported; choose one of classification, ordinal"),
    ([{"name": "x", "train": {"lr": "fast"}}], "recipes[x].train.lr='fast' must be a number"),
    ([{"name": "x"}, {"name": "x"}], "recipes must name at least one recipe, each once"),
    ([], "recipes must name at least one recipe"),
    ([{"name": "x", "epochs": 3}], "unknown config key(s) epochs in section 'recipes[0]'"),
    (["field"], "recipes[0] must be a mapping of keys, got 'field'"),
])
def test_a_bad_recipe_is_named(recipes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_study_config(load_study_config(None, {"recipes": recipes}))


def test_the_command_line_wins_over_a_recipe_and_a_recipe_narrows_pretraining():
    cfg = load_study_config("experiments/field.yaml", {"epochs": 1, "warmup_epochs": 0, "lr": 0.01,
                                                       "pretrained": "false,true"})
    validate_study_config(cfg)
    lab, field_recipe = (recipe_train_config(cfg.train, recipe) for recipe in cfg.recipes)
    assert (lab.lr, field_recipe.lr, field_recipe.warmup_epochs, field_recipe.epochs) == (0.01, 0.01, 0, 1)
    assert field_recipe.optimizer == "adamw"  # what the command line leaves alone stays the recipe's
    labels = [c.label for c in study_configurations(cfg)]
    assert labels[-2:] == ["resnet18 pretrained field", "resnet50 pretrained field"]
    scratch_only = load_study_config("experiments/field.yaml", {"pretrained": "false"})
    assert [c.label for c in study_configurations(scratch_only)] == ["resnet18 scratch", "resnet50 scratch"]


def test_a_recipes_bad_value_and_another_enhancement_are_named():
    with pytest.raises(ConfigError, match=re.escape("recipes[field]: warmup_epochs=1 must be between 0 and epochs - 1 (0)")):
        validate_study_config(load_study_config("experiments/field.yaml", {"epochs": 1}))
    other = [{"name": "lab"}, {"name": "graham", "train": {"enhance": "ben_graham"}}]
    with pytest.raises(ConfigError, match=re.escape("recipes[graham] trains on enhance='ben_graham' but the study "
                                                    "preprocesses enhance='none'")):
        validate_study_config(load_study_config(None, {"recipes": other}))


def test_per_model_values_apply_to_that_depth_only_over_every_recipe(tmp_path):
    from pipeline.steps.study import train_jobs

    path = tmp_path / "exp.yaml"
    path.write_text("base: " + str(ROOT / "experiments" / "field.yaml") + "\ntrain: {lr: 0.003}\n"
                    "per_model: {resnet50: {lr: 0.001, warmup_epochs: 1}}\n")
    cfg = load_study_config(path)
    validate_study_config(cfg)
    jobs = train_jobs(cfg, skipped=set())
    by_model = {(job.config.model, job.config.recipe): job.config for job in jobs}
    assert {key: config.lr for key, config in by_model.items()} == {
        ("resnet18", "lab"): 0.003, ("resnet50", "lab"): 0.001,
        ("resnet18", "field"): recipe_train_config(cfg.train, cfg.recipes[1]).lr, ("resnet50", "field"): 0.001}
    assert {config.warmup_epochs for (model, _), config in by_model.items() if model == "resnet50"} == {1}


@pytest.mark.parametrize("per_model, message", [
    ({"resnet34": {"lr": 0.001}}, "per_model names 'resnet34', which is not one of the study's models"),
    ({"resnet50": {"pretrained": True}}, "per_model[resnet50] sets pretrained, which the study's grid sets"),
    ({"resnet50": {"learning_rate": 0.001}}, "unknown config key(s) learning_rate in section 'per_model[resnet50]'"),
    ({"resnet50": {"lr": -1.0}}, "per_model[resnet50] with recipes[lab]: lr=-1.0"),
])
def test_a_bad_per_model_value_is_named(per_model, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_study_config(StudyConfig(per_model=per_model))
