"""Entry point ``compare``: the depth x pretraining (x recipe) comparison, read back from the tracking server."""

from __future__ import annotations

from pipeline.catalog import Configuration
from pipeline.cli import exit_with
from pipeline.cli._runner import EntryPointParser, run_step
from pipeline.config import StudyConfig, coerce_list
from pipeline.steps.compare import run_compare

DEFAULTS = StudyConfig()


def main(argv: list[str] | None = None) -> int:
    parser = EntryPointParser(prog="compare", description=__doc__)
    parser.add_argument("--models", default=",".join(DEFAULTS.models))
    parser.add_argument("--pretrained", default=",".join(str(p).lower() for p in DEFAULTS.pretrained))
    parser.add_argument("--recipes", default=",".join(r.name for r in DEFAULTS.recipes),
                        help="training recipes by name (train runs' `recipe` param), e.g. lab,field")
    parser.add_argument("--study_run_id", default="", help="only the train runs of this main run (default: all in the experiment)")
    args = parser.parse_args(argv)

    def body() -> None:
        models = coerce_list(args.models, str, "models")
        pretrained = coerce_list(args.pretrained, bool, "pretrained")
        recipes = coerce_list(args.recipes, str, "recipes")
        configurations = [Configuration(m, p, r) for r in recipes for m in models for p in pretrained]
        print(run_compare(configurations, parent_run_id=args.study_run_id or None).terminal)

    return run_step("compare", body)


if __name__ == "__main__":
    exit_with(main())
