"""Entry point ``preprocess``: raw EyePACS layout -> processed dataset (crop, resize, split, manifest)."""

from __future__ import annotations

import sys

from pipeline.cli._runner import load_section, run_step, section_parser
from pipeline.steps.preprocess import run_preprocess


def main(argv: list[str] | None = None) -> int:
    args = section_parser("preprocess", "preprocess", __doc__).parse_args(argv)

    def body() -> None:
        cfg = load_section(args, "preprocess")
        summary = run_preprocess(cfg)
        print(f"processed dataset: {cfg.data_dir} ({summary['image_size']} px)")
        for split, counts in summary["counts"].items():
            print(f"  {split:5s} {sum(counts):6d} images, per grade {counts}")

    return run_step("preprocess", body)


if __name__ == "__main__":
    sys.exit(main())
