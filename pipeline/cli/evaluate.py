"""Entry point ``evaluate``: a run id or model URI + the test split -> test metrics and confusion matrices."""

from __future__ import annotations

from pipeline.cli import exit_with
from pipeline.cli._runner import EntryPointParser, run_step
from pipeline.config import StudyConfig, coerce_int
from pipeline.steps.evaluate import run_evaluate

DEFAULT_MODEL = f"models:/{StudyConfig().registered_model}@{StudyConfig().champion_alias}"


def main(argv: list[str] | None = None) -> int:
    parser = EntryPointParser(prog="evaluate", description=__doc__)
    parser.add_argument("--model_uri", default=DEFAULT_MODEL, help="train run id, runs:/, models:/ URI (default %(default)s)")
    parser.add_argument("--data_dir", default="data/processed")
    parser.add_argument("--batch_size", default="32")
    parser.add_argument("--num_workers", default="0")
    parser.add_argument("--bootstrap_resamples", default="1000", help="for the 95%% confidence intervals (0: none)")
    args = parser.parse_args(argv)

    def body() -> None:
        metrics = run_evaluate(args.model_uri, args.data_dir, coerce_int(args.batch_size, "batch_size", 1),
                                     coerce_int(args.num_workers, "num_workers", 0),
                                     coerce_int(args.bootstrap_resamples, "bootstrap_resamples", 0))
        for name, value in metrics.items():
            print(f"{name:36s} {value:.4f}")

    return run_step("evaluate", body)


if __name__ == "__main__":
    exit_with(main())
