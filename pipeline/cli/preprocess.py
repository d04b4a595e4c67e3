"""Entry point ``preprocess``: a raw set in its own layout -> processed dataset (crop, resize, split, manifest)."""

from __future__ import annotations

from pipeline.cli import exit_with
from pipeline.cli._runner import load_section, run_step, section_parser
from pipeline.steps.preprocess import run_preprocess


def main(argv: list[str] | None = None) -> int:
    args = section_parser("preprocess", "preprocess", __doc__).parse_args(argv)

    def body() -> None:
        cfg = load_section(args, "preprocess")
        summary = run_preprocess(cfg)
        print(f"processed dataset: {cfg.data_dir} ({summary['image_size']} px, layout {summary['layout']}, "
              f"role {summary['role']}); test: {summary['test_split']}")
        for split, counts in summary["counts"].items():
            ungradable = summary["ungradable"][split]
            labelled = f", {ungradable} labelled ungradable (not trained on)" if ungradable else ""
            print(f"  {split:5s} {sum(counts):6d} images, per grade {counts}{labelled}")

    return run_step("preprocess", body)


if __name__ == "__main__":
    exit_with(main())
