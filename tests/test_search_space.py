"""The sweep's search space file: typed choices and ranges, and errors that name the file and key."""

from __future__ import annotations

import optuna
import pytest

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.search_space import Choices, Range, load_space
from tests.conftest import PROJECT_ROOT


def write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "experiments" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads_and_fits_a_one_epoch_sweep(path):
    """The README's `mlflow run . -e sweep -P trials=3 -P epochs=1` draws from these."""
    load_space(path).check_against(TrainConfig(epochs=1))


def test_choices_and_ranges_take_the_train_keys_types(tmp_path):
    space = load_space(write(tmp_path, """
lr: {low: 1e-4, high: 1.0e-2, log: true}
batch_size: {low: 8, high: 32, step: 8}
rotation_degrees: {low: 0, high: 30, step: 7.5}
optimizer: [sgd, adamw]
pretrained: ["true", false]
"""))
    assert space.params == {
        "lr": Range(1e-4, 1e-2, integer=False, log=True),
        "batch_size": Range(8, 32, integer=True, step=8),
        "rotation_degrees": Range(0.0, 30.0, integer=False, step=7.5),
        "optimizer": Choices(("sgd", "adamw")),
        "pretrained": Choices((True, False)),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        drawn = space.suggest(study.ask())
        assert 1e-4 <= drawn["lr"] <= 1e-2 and isinstance(drawn["lr"], float)
        assert drawn["batch_size"] in (8, 16, 24, 32) and isinstance(drawn["batch_size"], int)
        assert drawn["rotation_degrees"] in (0.0, 7.5, 15.0, 22.5, 30.0)
        assert drawn["optimizer"] in ("sgd", "adamw") and drawn["pretrained"] in (True, False)


BAD_SPACES = [
    ("lrr: [0.1, 0.2]", "unknown train key 'lrr'; valid keys: data_dir, model"),
    ("nproc: [1, 2]", "nproc cannot be swept: trials train in the sweep's process"),
    ("select_metric: [val_kappa, val_accuracy]", "select_metric cannot be swept: it is the sweep's `metric`"),
    ("lr: 0.01", "lr: 0.01 is neither a list of choices nor a range"),
    ("optimizer: []", "optimizer: the list of choices is empty"),
    ("optimizer: [sgd, sgd]", "optimizer: the choices ['sgd', 'sgd'] repeat a value"),
    ("batch_size: [8, many]", "batch_size: batch_size='many' must be an integer"),
    ("optimizer: {low: 1, high: 2}", "optimizer: a range needs a number key, and optimizer is a str"),
    ("pretrained: {low: 0, high: 1}", "pretrained: a range needs a number key, and pretrained is a bool"),
    ("batch_size: {low: 8.5, high: 32}", "batch_size: batch_size=8.5 must be an integer"),
    ("lr: {low: 0.1}", "lr: a range has low and high, optionally log and step; got low"),
    ("lr: {low: 0.1, high: 0.2, scale: log}", "lr: a range has low and high, optionally log and step"),
    ("lr: {low: 0.2, high: 0.1}", "lr: low=0.2 must be below high=0.1"),
    ("weight_decay: {low: 0, high: 0.1, log: true}", "weight_decay: a log range needs low > 0, got low=0.0"),
    ("lr: {low: 0.1, high: 0.2, log: yes please}", "lr: log='yes please' must be true or false"),
    ("lr: {low: 0.1, high: 0.2, log: true, step: 0.05}", "lr: step=0.05 must be positive, and a log range takes no step"),
    ("batch_size: {low: 8, high: 32, step: 0}", "batch_size: step=0 must be positive"),
    ("[lr, momentum]", "must map train keys to choices or ranges"),
    ("", "must map train keys to choices or ranges"),
    ("lr: [0.1", "is not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD_SPACES, ids=[text or "empty" for text, _ in BAD_SPACES])
def test_a_bad_space_fails_naming_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_space(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_a_missing_space_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"search space file not found: {tmp_path / 'none.yaml'}"):
        load_space(tmp_path / "none.yaml")


@pytest.mark.parametrize("text, message", [
    ("warmup_epochs: {low: 0, high: 3}", "warmup_epochs: warmup_epochs=3 must be between 0 and epochs - 1 (1)"),
    ("optimizer: [sgd, lion]", "optimizer: optimizer='lion' is not supported; choose one of sgd, adamw"),
    ("image_size: [16, 32]", "image_size: image_size=16 is too small for resnet18"),
])
def test_a_choice_or_end_no_run_could_train_with_fails_before_any_trial(tmp_path, text, message):
    path = write(tmp_path, text)
    space = load_space(path)
    with pytest.raises(ConfigError) as raised:
        space.check_against(TrainConfig(epochs=2))
    assert f"search space {path}: {message}" in str(raised.value)
