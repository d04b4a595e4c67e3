"""Finding the interrupted train run a resume continues, and marking the run that launched it."""

from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.tracking import tags
from pipeline.tracking.runs import experiment_ids, param_text

# Train options that say how and where a run executes, not what it computes: a run started with
# other values of these is still the same configuration.
HOUSEKEEPING_OPTIONS = frozenset({"resume", "num_workers", "device", "checkpoint_dir", "checkpoint_artifact",
                                  "keep_checkpoint"})


def find_resumable_run(config: dict[str, Any]) -> str | None:
    """The latest unfinished (RUNNING, FAILED or KILLED) train run of the same configuration."""
    same = {k: param_text(v) for k, v in config.items() if k not in HOUSEKEEPING_OPTIONS}
    runs = MlflowClient().search_runs(
        experiment_ids(), filter_string=f"tags.`{tags.STEP}` = 'train' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=200)
    for run in runs:
        if all(_same_param_value(run.data.params.get(k), v) for k, v in same.items()):
            return run.info.run_id
    return None


def _same_param_value(logged: str | None, wanted: str) -> bool:
    """Equal as text, or as numbers: ``mlflow run -P lr=1e-3`` logs the spelling the user typed."""
    if logged is None or logged == wanted:
        return logged == wanted
    try:
        return float(logged) == float(wanted)
    except ValueError:
        return logged.lower() == wanted.lower()  # True / true


def mark_resume_launcher(launcher_run_id: str, resumed_run_id: str) -> None:
    """Points ``mlflow run``'s own run at the run a resume continues, and says so in the UI.

    ``mlflow run`` always opens a run before the entry point starts; the training goes on in the
    interrupted run, so this one only records the launch (its params are the command line's).
    """
    client = MlflowClient()
    client.set_tag(launcher_run_id, tags.RESUMED_RUN, resumed_run_id)
    client.set_tag(launcher_run_id, tags.NOTE,
                   f"This run launched a resume: training continued in run {resumed_run_id}, where its "
                   "params, metrics and artifacts are.")
