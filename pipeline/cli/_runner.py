"""What every entry point shares: logging setup, the step's MLflow run, and clean user errors."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from pipeline.cli import imports_done
from pipeline.config import add_override_arguments, given_overrides, load_study_config, section_option_names
from pipeline.errors import RetinaFlowError

log = logging.getLogger("pipeline")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# What a stopped run leaves, and what to do with it, by step (the others: delete or rerun).
STOP_HINTS = {
    "train": ("its last finished epoch's checkpoint is kept (checkpoint_dir, and the run's artifacts): continue "
              "with `mlflow run . -e train -P resume={run_id}` (the same parameters) or "
              "`python -m pipeline.cli.train --resume {run_id}`; or delete it: `mlflow runs delete --run-id {run_id}` "
              "and its folder under checkpoint_dir"),
}
DEFAULT_STOP_HINT = "delete it with `mlflow runs delete --run-id {run_id}`, or run the step again"


class Stopped(KeyboardInterrupt):
    """SIGTERM, met as Ctrl-C is: the step's run ends KILLED, not FAILED."""


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise Stopped(f"signal {signum}")


def run_step(step: str, body: Callable[[], None], run_name: str | None = None,
             existing_run: Callable[[], str | None] | None = None, system_metrics: bool = False) -> int:
    """Runs ``body`` inside the step's MLflow run; a user error exits 2 with its message, run FAILED.

    The run is opened before the config is read, so even a bad option leaves a FAILED run behind.
    ``existing_run`` names a run to continue (a resume) instead of a new one. Ctrl-C or SIGTERM
    ends the run KILLED with a one-line hint on what it left (exit 130 or 143).
    """
    # Imported here: train's --help, a bad option and its torchrun launcher need no MLflow, whose
    # import is ~1.5 s of CPU (torch's, through the tracking package, ~3 s more).
    from pipeline.tracking import runs

    imports_done()
    setup_logging()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started: list[str] = []
    try:
        uri = runs.configure()
        log.info("tracking to %s", uri)
        with runs.step_run(step, run_name, run_id=existing_run() if existing_run else None,
                           system_metrics=system_metrics) as run:
            if run is not None:
                started.append(run.info.run_id)
            body()
    except RetinaFlowError as exc:
        log.error("%s failed: %s", step, exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if not started:
            raise
        hint = STOP_HINTS.get(step, DEFAULT_STOP_HINT).format(run_id=started[0])
        print(f"stopped: run {started[0]} ended KILLED; {hint}", file=sys.stderr)
        return 143 if isinstance(exc, Stopped) else 130
    return 0


class EntryPointParser(argparse.ArgumentParser):
    """Every entry point's parser: an option ``--name_with_underscores`` (as MLproject passes it) also
    answers to ``--name-with-hyphens`` (as people type it)."""

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        spellings = list(names)
        for name in names:
            hyphenated = "--" + name[2:].replace("_", "-")
            if name.startswith("--") and hyphenated not in spellings:
                spellings.append(hyphenated)
        return super().add_argument(*spellings, **kwargs)


def section_parser(section: str, prog: str, description: str | None) -> argparse.ArgumentParser:
    """``--config FILE`` plus one ``--key VALUE`` flag per key of one config section."""
    parser = EntryPointParser(prog=prog, description=description)
    parser.add_argument("--config", help=f"experiment YAML whose '{section}' section sets the defaults")
    add_override_arguments(parser, section_option_names(section))
    return parser


def load_section(args: argparse.Namespace, section: str) -> Any:
    """The section's config: defaults < ``--config`` file < the flags given."""
    given = given_overrides(args, section_option_names(section))
    return getattr(load_study_config(args.config, {f"{section}.{k}": v for k, v in given.items()}), section)
