"""Entry point ``train``: one ResNet configuration, tracked per epoch, best checkpoint and model logged."""

from __future__ import annotations

import sys

from pipeline import steps
from pipeline.cli._runner import load_section, run_step, section_parser
from pipeline.compare import config_label


def main(argv: list[str] | None = None) -> int:
    args = section_parser("train", "train", __doc__).parse_args(argv)

    def body() -> None:
        cfg = load_section(args, "train")
        outcome = steps.run_train(cfg)
        print(f"{config_label(cfg.model, cfg.pretrained)}: best epoch {outcome.best_epoch}, "
              f"val accuracy {outcome.best_val_accuracy:.3f}, test accuracy {outcome.test_accuracy:.3f}")
        print(f"run {outcome.run_id}, model {outcome.model_uri}")

    return run_step("train", body)


if __name__ == "__main__":
    sys.exit(main())
