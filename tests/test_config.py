from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    StudyConfig,
    TrainConfig,
    coerce_int,
    flatten,
    load_study_config,
    to_dict,
    validate_study_config,
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
    cfg = load_study_config(None, {"image_size": "96", "seed": "5"})
    assert cfg.preprocess.image_size == cfg.train.image_size == 96
    assert cfg.preprocess.seed == cfg.train.seed == 5


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


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
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


def test_mlproject_train_defaults_equal_the_dataclass():
    """`mlflow run -e train` logs MLproject's defaults as params: they must be what actually runs."""
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    declared = spec["entry_points"]["train"]["parameters"]
    defaults = to_dict(TrainConfig())
    assert set(declared) == set(defaults)
    for name, value in defaults.items():
        loaded = load_study_config(None, {f"train.{name}": str(declared[name]["default"])}).train
        assert getattr(loaded, name) == value, name


def test_flatten_gives_dotted_param_names():
    flat = flatten(to_dict(StudyConfig()))
    assert flat["train.lr"] == 0.001 and flat["preprocess.image_size"] == 512 and flat["registered_model"] == "dr-resnet"
