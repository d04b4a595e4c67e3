"""Entry point ``main``: the whole study in one command, each step a nested MLflow run."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli._runner import run_step
from pipeline.config import add_override_arguments, given_overrides, load_study_config, study_option_names
from pipeline.steps.study import run_study
from pipeline.tracking import runs

OPTIONS = study_option_names()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="main", description=__doc__)
    parser.add_argument("--config", default="experiments/study.yaml", help="experiment YAML (default %(default)s)")
    add_override_arguments(parser, OPTIONS)
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = load_study_config(args.config, given_overrides(args, OPTIONS))
        outcome = run_study(cfg)
        for skipped in outcome.skipped:
            print(f"NOTE: {skipped.label} was not run: {skipped.reason}; put {skipped.weights_file.name} in "
                  f"{skipped.weights_file.parent} to run it")
        print("\n" + outcome.comparison + "\n")
        champion = outcome.champion
        print(f"champion: {cfg.registered_model} v{outcome.champion_version} (alias @{cfg.champion_alias}), "
              f"train run {champion.run_id}, best {cfg.train.select_metric} {champion.selection_score:.3f}")
        shown = [k for k in outcome.evaluation if not k.endswith(("_ci_low", "_ci_high")) and "grade" not in k]
        print("champion on test (95% CI by patient bootstrap):")
        for name in shown:
            low, high = outcome.evaluation.get(f"{name}_ci_low"), outcome.evaluation.get(f"{name}_ci_high")
            interval = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
            print(f"  {name:28s} {outcome.evaluation[name]:.3f}{interval}")
        print(f"study run: {runs.run_link()}")
        print(f"to browse the runs, {runs.tracking_ui_hint()}")

    return run_step("main", body, run_name="study")


if __name__ == "__main__":
    sys.exit(main())
