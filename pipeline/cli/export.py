"""Entry point ``export``: a torch grader -> an ONNX grader (fp32 or int8) that serves without
torch, checked against the torch grader and registered beside it."""

from __future__ import annotations

from pipeline.cli import exit_with
from pipeline.cli._runner import EntryPointParser, run_step
from pipeline.cli.evaluate import DEFAULT_MODEL
from pipeline.config import coerce_int, coerce_value
from pipeline.export import EXPORT_FORMATS, QUANTIZATIONS
from pipeline.steps.export import run_export


def main(argv: list[str] | None = None) -> int:
    parser = EntryPointParser(prog="export", description=__doc__)
    parser.add_argument("--model_uri", default=DEFAULT_MODEL, help="train run id, runs:/, models:/ URI (default %(default)s)")
    parser.add_argument("--data_dir", default="data/processed", help="the processed dataset whose photos check the export")
    parser.add_argument("--format", default="onnx", help=f"{' | '.join(EXPORT_FORMATS)} (default %(default)s)")
    parser.add_argument("--quantize", default="none", help=f"{' | '.join(QUANTIZATIONS)} (default %(default)s)")
    parser.add_argument("--check_photos", default="100", help="validation and test photos each to compare on")
    parser.add_argument("--calibration_photos", default="64", help="training photos that calibrate int8's ranges")
    parser.add_argument("--min_agreement", default="0.98", help="int8: the least share of equal grades and referable calls")
    args = parser.parse_args(argv)

    def body() -> None:
        figures = run_export(args.model_uri, args.data_dir, args.format, args.quantize,
                             coerce_int(args.check_photos, "check_photos", 1),
                             coerce_int(args.calibration_photos, "calibration_photos", 1),
                             coerce_value(args.min_agreement, float, "min_agreement"))
        for name, value in figures.items():
            print(f"{name:44s} {value:.6g}")

    return run_step("export", body)


if __name__ == "__main__":
    exit_with(main())
