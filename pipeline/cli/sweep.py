"""Entry point ``sweep``: an Optuna search over train values (TPE, median pruning), each trial a
train run nested in one sweep run; the best trial's values are logged as ``best_*``.

Train values come from the defaults < ``--config``'s train section < the train flags given < each
trial's draws from ``--space``. A sweep with the same ``--storage`` and ``--study_name`` continues
that study, running only the trials it still misses.
"""

from __future__ import annotations

import optuna

from pipeline.cli import exit_with
from pipeline.cli._runner import load_section, run_step, section_parser
from pipeline.config import add_override_arguments, given_overrides, load_sweep_config, sweep_option_names
from pipeline.steps.sweep import run_sweep
from pipeline.tracking import runs

OPTIONS = sweep_option_names()


def main(argv: list[str] | None = None) -> int:
    parser = section_parser("train", "sweep", __doc__)
    add_override_arguments(parser, OPTIONS)
    args = parser.parse_args(argv)
    # Optuna's trial lines go through the same handler, in the same format, as the pipeline's.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()

    def body() -> None:
        cfg = load_sweep_config(given_overrides(args, OPTIONS))
        outcome = run_sweep(cfg, load_section(args, "train"))
        best, counts = outcome.best, outcome.counts
        print(f"study {outcome.study_name}: ran {outcome.ran} trial(s); it holds {counts['complete']} complete, "
              f"{counts['pruned']} pruned, {counts['failed']} failed")
        print(f"best trial {best.number}: {cfg.metric} {best.value:.4f} with "
              + " ".join(f"{name}={value}" for name, value in best.params.items()))
        print(f"best trial's run: {runs.run_url(outcome.best_run_id)}")
        print(f"sweep run: {runs.run_link()}")
        print(f"to browse the runs, {runs.tracking_ui_hint()}")

    return run_step("sweep", body, run_name="sweep")


if __name__ == "__main__":
    exit_with(main())
