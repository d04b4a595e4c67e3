"""Entry point ``grade_archive``: every photo of a folder or glob graded on Spark (the grader as an
MLflow Spark UDF, its ONNX export where there is one), one parquet row per photo."""

from __future__ import annotations

from pipeline.cli import exit_with
from pipeline.cli._runner import EntryPointParser, run_step
from pipeline.cli.evaluate import DEFAULT_MODEL
from pipeline.config import coerce_value
from pipeline.steps.grade_archive import run_grade_archive


def main(argv: list[str] | None = None) -> int:
    parser = EntryPointParser(prog="grade_archive", description=__doc__)
    parser.add_argument("--model_uri", default=DEFAULT_MODEL, help="train run id, runs:/, models:/ URI (default %(default)s)")
    parser.add_argument("--input", required=True, help="a folder of photos (read recursively) or a glob")
    parser.add_argument("--output", required=True, help="the parquet folder to write")
    parser.add_argument("--spark_master", default="local[*]", help="local[N], spark://host:7077, yarn, ... (default %(default)s)")
    parser.add_argument("--env_manager", default="local",
                        help="local (the workers have the packages), virtualenv, conda or uv (each builds the model's)")
    parser.add_argument("--overwrite", default="false", help="replace an existing output folder")
    args = parser.parse_args(argv)

    def body() -> None:
        figures = run_grade_archive(args.model_uri, args.input, args.output, args.spark_master, args.env_manager,
                                    coerce_value(args.overwrite, bool, "overwrite"))
        print(f"graded {figures['photos']:.0f} photos into {args.output} ({figures['photos_per_second']:.1f} photos/s); "
              f"ungradable {figures['ungradable_fraction']:.1%}, referable {figures['referable_share']:.1%} of the graded")

    return run_step("grade_archive", body)


if __name__ == "__main__":
    exit_with(main())
