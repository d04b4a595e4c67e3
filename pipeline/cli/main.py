"""Entry point ``main``: the whole study in one command, each step a nested MLflow run."""

from __future__ import annotations

from pipeline.catalog import REFERABLE_GRADE
from pipeline.cli import exit_with
from pipeline.cli._runner import EntryPointParser, run_step
from pipeline.config import (add_override_arguments, dotted_option_names, given_overrides, load_study_config,
                             study_option_names)
from pipeline.model_card import with_interval
from pipeline.steps.study import run_study
from pipeline.tracking import runs

# --image_size: every section that has it; --train.image_size: train's alone.
OPTIONS = study_option_names() + dotted_option_names()


def build_parser() -> EntryPointParser:
    parser = EntryPointParser(prog="main", description=__doc__)
    parser.add_argument("--config", default="experiments/study.yaml", help="experiment YAML (default %(default)s)")
    add_override_arguments(parser, OPTIONS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

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
        evaluation = outcome.evaluation
        print(f"operating point: referable when P(grade >= {REFERABLE_GRADE}) >= {evaluation['referable_threshold']:.4f}, "
              f"chosen on validation to find {cfg.train.referable_target_sensitivity:.0%} of referable eyes; on test: "
              f"sensitivity {with_interval(evaluation, 'test_referable_sensitivity')}, "
              f"specificity {with_interval(evaluation, 'test_referable_specificity')}")
        shown = [k for k in evaluation if not k.endswith(("_ci_low", "_ci_high")) and "grade" not in k
                 and k != "referable_threshold"]
        print("champion on test (95% CI by patient bootstrap):")
        for name in shown:
            print(f"  {name:28s} {with_interval(evaluation, name)}")
        print(f"report: {outcome.report}")
        print(f"champion's page (its model card): {runs.model_version_url(cfg.registered_model, outcome.champion_version)}")
        print(f"study run: {runs.run_link()}")
        print(f"to browse the runs, {runs.tracking_ui_hint()}")

    return run_step("main", body, run_name="study")


if __name__ == "__main__":
    exit_with(main())
