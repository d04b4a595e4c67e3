"""Entry point ``predict``: a folder of photos or an image-id CSV -> a CSV of grades and probabilities."""

from __future__ import annotations

from pipeline.cli import exit_with
from pipeline.cli._runner import EntryPointParser, run_step
from pipeline.cli.evaluate import DEFAULT_MODEL
from pipeline.config import coerce_int
from pipeline.steps.predict import run_predict


def main(argv: list[str] | None = None) -> int:
    parser = EntryPointParser(prog="predict", description=__doc__)
    parser.add_argument("--model_uri", default=DEFAULT_MODEL, help="train run id, runs:/ or models:/ URI (default %(default)s)")
    parser.add_argument("--input", required=True, help="folder of photos, or a one-column CSV of image ids")
    parser.add_argument("--output", default="predictions.csv")
    parser.add_argument("--batch_size", default="32")
    parser.add_argument("--num_workers", default="0")
    args = parser.parse_args(argv)

    def body() -> None:
        frame = run_predict(args.model_uri, args.input, args.output,
                                  coerce_int(args.batch_size, "batch_size", 1), coerce_int(args.num_workers, "num_workers", 0))
        print(f"{len(frame)} predictions in {args.output}; referable: {int(frame['referable'].sum())}; "
              f"ungradable: {int((~frame['gradable']).sum())}")

    return run_step("predict", body)


if __name__ == "__main__":
    exit_with(main())
