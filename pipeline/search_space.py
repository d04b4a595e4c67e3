"""A sweep's search space: which train values each trial draws, read from a YAML file.

Each key is a ``TrainConfig`` key; its value is either a list (the choices) or a mapping
``{low, high, log, step}`` (a range of the key's type: float, or int for an integer key)::

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    batch_size: [8, 16, 32]
    optimizer: [sgd, adamw]

No Optuna import here: a trial is anything with Optuna's ``suggest_*`` methods.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from pipeline.config import TrainConfig, coerce_train_value, validate_train_config
from pipeline.errors import ConfigError

# Keys the sweep itself decides: its metric is every trial's select_metric, and trials train in
# the sweep's process, one at a time, each a new run.
NOT_SWEPT = {"select_metric": "it is the sweep's `metric`", "nproc": "trials train in the sweep's process",
             "resume": "every trial is a new run"}
RANGE_KEYS = ("low", "high", "log", "step")


class Suggesting(Protocol):
    """What the space needs of an Optuna trial."""

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


@dataclass(frozen=True)
class Choices:
    values: tuple[Any, ...]

    def suggest(self, trial: Suggesting, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def candidates(self) -> tuple[Any, ...]:
        return self.values

    def describe(self) -> dict[str, Any]:
        return {"choices": list(self.values)}


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    integer: bool  # the key is an int: draw whole numbers
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Suggesting, name: str) -> float | int:
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> tuple[float, float]:
        return self.low, self.high

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    path: str  # the file it was read from, named in every error
    params: dict[str, Choices | Range]

    def suggest(self, trial: Suggesting) -> dict[str, Any]:
        """One trial's train values: a key -> value override of the base config."""
        return {name: param.suggest(trial, name) for name, param in self.params.items()}

    def describe(self) -> dict[str, dict[str, Any]]:
        """Plain data (for the study's record): a resumed study must draw from the same space."""
        return {name: param.describe() for name, param in self.params.items()}

    def check_against(self, base: TrainConfig) -> None:
        """Fails before any trial when a choice or a range's end is a value no run could train with
        (``warmup_epochs`` up to 3 with ``epochs=2``, an unknown optimizer), naming the file and key."""
        for name, param in self.params.items():
            for value in param.candidates():
                try:
                    validate_train_config(dataclasses.replace(base, **{name: value}))
                except ConfigError as exc:
                    raise ConfigError(f"search space {self.path}: {name}: {exc}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Reads and checks a search space file; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"search space {path} must map train keys to choices or ranges, e.g. "
                          "`lr: {low: 1.0e-4, high: 1.0e-2, log: true}` or `optimizer: [sgd, adamw]`")
    types = typing.get_type_hints(TrainConfig)
    params = {}
    for name, value in loaded.items():
        if name not in types:
            raise ConfigError(f"search space {path}: unknown train key '{name}'; valid keys: "
                              f"{', '.join(k for k in types if k not in NOT_SWEPT)}")
        if name in NOT_SWEPT:
            raise ConfigError(f"search space {path}: {name} cannot be swept: {NOT_SWEPT[name]}")
        params[name] = _parse_param(path, name, value, types[name])
    return SearchSpace(str(path), params)


def _parse_param(path: Path, name: str, value: Any, annotation: type) -> Choices | Range:
    where = f"search space {path}: {name}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: the list of choices is empty")
        choices = tuple(_coerce(where, name, v) for v in value)
        if len(set(choices)) < len(choices):
            raise ConfigError(f"{where}: the choices {value} repeat a value")
        return Choices(choices)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {value!r} is neither a list of choices nor a range {{low, high, log, step}}; "
                          "a fixed value belongs in the config file or a -P option")
    if annotation not in (int, float):
        raise ConfigError(f"{where}: a range needs a number key, and {name} is a {annotation.__name__}: "
                          "give a list of choices")
    unknown = sorted(set(value) - set(RANGE_KEYS))
    if unknown or not {"low", "high"} <= set(value):
        raise ConfigError(f"{where}: a range has low and high, optionally log and step; got {', '.join(map(str, value))}")
    low, high = _coerce(where, name, value["low"]), _coerce(where, name, value["high"])
    log = value.get("log", False)
    step = None if value.get("step") is None else _coerce(where, name, value["step"])
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log={log!r} must be true or false")
    if not low < high:
        raise ConfigError(f"{where}: low={low} must be below high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low={low}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step={step} must be positive, and a log range takes no step")
    return Range(low, high, integer=annotation is int, log=log, step=step)


def _coerce(where: str, name: str, value: Any) -> Any:
    try:
        return coerce_train_value(name, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
