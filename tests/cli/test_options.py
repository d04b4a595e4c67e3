"""What the README promises of every entry point's options: MLproject's spellings, hyphenated
ones alike, and main's dotted overrides reaching one section only."""

import importlib

import pytest
import yaml

from pipeline.cli import main as main_cli
from pipeline.config import given_overrides, load_study_config
from tests.conftest import PROJECT_ROOT

ENTRY_POINTS = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]


def help_of(name: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"pipeline.cli.{name}").main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_parameter_takes_its_own_and_the_hyphenated_spelling(name, capsys):
    text = help_of(name, capsys)
    for parameter in ENTRY_POINTS[name]["parameters"]:
        assert f"--{parameter} " in text, parameter
        assert f"--{parameter.replace('_', '-')} " in text, parameter


@pytest.mark.parametrize("name", ["evaluate", "predict", "compare", "generate"])
def test_a_hyphenated_option_parses_to_the_same_value(name, monkeypatch):
    """The four entry points the README's claim once left out, parsed for real."""
    seen = {}
    module = importlib.import_module(f"pipeline.cli.{name}")
    monkeypatch.setattr(module, "EntryPointParser", _recording(module.EntryPointParser, seen))
    option = {"evaluate": "bootstrap_resamples", "predict": "batch_size", "compare": "study_run_id",
              "generate": "train_patients"}[name]
    required = ["--input", "x"] if name == "predict" else []
    with pytest.raises(_Parsed):
        module.main([f"--{option.replace('_', '-')}", "7", *required])
    assert seen["args"][option] == "7"


class _Parsed(Exception):
    pass


def _recording(parser_type, seen):
    class Recording(parser_type):
        def parse_args(self, argv=None, namespace=None):
            seen["args"] = vars(super().parse_args(argv, namespace))
            raise _Parsed
    return Recording


def test_main_takes_flat_dotted_and_hyphenated_overrides():
    args = main_cli.build_parser().parse_args(["--config", str(PROJECT_ROOT / "experiments" / "demo.yaml"),
                                               "--train.image-size", "96", "--seed", "3", "--train.lr", "0.01"])
    cfg = load_study_config(args.config, given_overrides(args, main_cli.OPTIONS))
    demo = load_study_config(PROJECT_ROOT / "experiments" / "demo.yaml")
    assert (cfg.train.image_size, cfg.preprocess.image_size) == (96, demo.preprocess.image_size)
    assert cfg.train.image_size != demo.train.image_size
    assert (cfg.train.seed, cfg.preprocess.seed, cfg.train.lr) == (3, 3, 0.01)
