"""Where runs go and what a step's run holds: tracking URI, experiment, the run itself, params, tags."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Run, RunStatus
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from pipeline.distributed import DistContext, context_from_env
from pipeline.errors import ConfigError, RetinaFlowError
from pipeline.tracking import tags

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "retina-flow"
# The kind the MLflow UI reads: it shows such an experiment as a model training one.
EXPERIMENT_KIND = "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"
# MLflow 3.17's UI opens in its GenAI view in a browser that has not chosen one, whatever the
# experiment's kind; links that ask for the model-training view open on runs, metrics and models.
UI_VIEW = "?workflowType=machine_learning"
# Set by the user, it names this machine's system metrics instead of torchrun's node rank.
NODE_ID_VARIABLE = "MLFLOW_SYSTEM_METRICS_NODE_ID"


def main_process_only(function: Callable) -> Callable:
    """Under torchrun only rank 0 writes to MLflow; on other ranks the call does nothing."""
    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        if context_from_env().is_main:
            function(*args, **kwargs)
    return wrapper


def configure() -> str:
    """Uses MLFLOW_TRACKING_URI when set (``mlflow run`` sets it), else the embedded sqlite store.

    Outside ``mlflow run``, runs go to the experiment named by MLFLOW_EXPERIMENT_NAME/_ID, or
    ``retina-flow``. A tracking server that does not answer fails the step within seconds. Ranks
    other than 0 of a torchrun job do nothing here: they never talk to MLflow.
    """
    if not context_from_env().is_main:
        return "(no tracking on this torchrun rank)"
    # Artifact read-backs (compare) would otherwise draw a progress bar per file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's default (7 retries, doubling) blocks a training loop for minutes per call while a
    # server restarts; metrics are buffered by the sink instead, so a short retry is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if _served(uri):
        require_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    with _refusal_explained(uri):
        if run_id := os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` opened the run, in its experiment
            experiment_id = client.get_run(run_id).info.experiment_id
        elif not (experiment_id := os.environ.get("MLFLOW_EXPERIMENT_ID", "")):
            # MLflow's own lookup of a name fails the run that loses a race to create it.
            experiment_id = _experiment_id_creating_it(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
            if not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
                mlflow.set_experiment(experiment_id=experiment_id)
        _mark_as_model_development(experiment_id)
    return mlflow.get_tracking_uri()


@contextlib.contextmanager
def _refusal_explained(uri: str) -> Iterator[None]:
    """A server that refuses who we are (HTTP 401 or 403) is a user error, said in one line."""
    try:
        yield
    except mlflow.exceptions.MlflowException as exc:
        status = exc.get_http_status_code()
        if status == 401:
            raise ConfigError(f"the tracking server {uri} refused the request: not authenticated (HTTP 401); "
                              "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        if status == 403:
            raise ConfigError(f"the tracking server {uri} refused the request: this user lacks the permission "
                              "(HTTP 403); ask its admin for it, or use another experiment") from None
        raise


def _experiment_id_creating_it(name: str) -> str:
    """Experiment ``name``'s id, created if missing; a concurrent process creating it first is fine."""
    client = MlflowClient()
    if (experiment := client.get_experiment_by_name(name)) is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.get_experiment_by_name(name).experiment_id


def _mark_as_model_development(experiment_id: str) -> None:
    """Tags the experiment so that the MLflow UI opens it on its training runs, not on the GenAI
    overview (traces, token usage) it shows an experiment of no kind."""
    client = MlflowClient()
    if client.get_experiment(experiment_id).tags.get(tags.EXPERIMENT_KIND) == EXPERIMENT_KIND:
        return
    try:
        client.set_experiment_tag(experiment_id, tags.EXPERIMENT_KIND, EXPERIMENT_KIND)
    except mlflow.MlflowException:
        # Steps starting together race to set it; one of them did.
        if client.get_experiment(experiment_id).tags.get(tags.EXPERIMENT_KIND) != EXPERIMENT_KIND:
            raise


def require_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raises ConfigError naming ``uri`` when nothing answers there (an auth refusal is an answer)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"the tracking server {uri} is unreachable ({reason}); start it, or unset "
                          "MLFLOW_TRACKING_URI to use the embedded sqlite store") from None


@contextlib.contextmanager
def step_run(step: str, run_name: str | None = None, *, nested: bool = False, run_id: str | None = None,
             system_metrics: bool = False, stopped: tuple[type[BaseException], ...] = ()) -> Iterator[Run | None]:
    """An MLflow run for one pipeline step; attaches to ``mlflow run``'s run when there is one.

    A failure marks the run FAILED; a user-facing error's message is also kept as a tag, so the
    UI shows why without a log. Ranks other than 0 of a torchrun job open no run.

    Args:
        system_metrics: log MLflow's system metrics (CPU, memory, disk, GPUs) while the run lasts.
        stopped: exceptions that stop the run on purpose (a pruned sweep trial): it ends KILLED,
            not FAILED, and the exception goes on; so does a run stopped from the keyboard or by SIGTERM.
    """
    ctx = context_from_env()
    if not ctx.is_main:
        yield None
        return
    if system_metrics and ctx.enabled and not os.environ.get(NODE_ID_VARIABLE):
        mlflow.system_metrics.set_system_metrics_node_id(node_id(ctx))
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested,
                          tags={tags.STEP: step}, log_system_metrics=system_metrics) as run:
        try:
            yield run
        except RetinaFlowError as exc:
            mlflow.set_tag(tags.ERROR, str(exc)[:5000])
            raise
        except (*stopped, KeyboardInterrupt):  # Ctrl-C, and SIGTERM met as one (cli._runner)
            # Ended here, the run is no longer active when start_run's exit would mark it FAILED.
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise


# The names MLflow gives a run it was given none for (``judicious-stork-805``).
GENERATED_RUN_NAME = re.compile(r"[a-z]+-[a-z]+-\d+")


@main_process_only
def name_if_generated(name: str) -> None:
    """Names the active run ``name`` where MLflow gave it a random one (a name chosen with
    ``--run-name`` stays)."""
    run = mlflow.active_run()
    if run is not None and GENERATED_RUN_NAME.fullmatch(run.info.run_name or ""):
        MlflowClient().update_run(run.info.run_id, name=name)


def create_child_run(name: str, step: str) -> str:
    """A run nested under the active one, for another process to fill (it attaches through
    ``MLFLOW_RUN_ID``, as under ``mlflow run``); returns its id."""
    parent = mlflow.active_run()
    run = MlflowClient().create_run(parent.info.experiment_id, run_name=name,
                                    tags={tags.PARENT_RUN: parent.info.run_id, tags.STEP: step})
    return run.info.run_id


def tag_run(run_id: str, values: dict[str, str]) -> None:
    """Tags a run that need not be the active one (a sweep trial's, once it has ended)."""
    client = MlflowClient()
    for key, value in values.items():
        client.set_tag(run_id, key, value)


def fail_if_unfinished(run_id: str) -> None:
    """Marks a run its process left behind RUNNING (killed, or died before it could end it) FAILED."""
    client = MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "FAILED")


def node_id(ctx: DistContext) -> str:
    """How a machine of a torchrun job names its system metrics: ``system/node1/cpu_utilization_percentage``."""
    return f"node{ctx.node_rank}"


@contextlib.contextmanager
def node_system_metrics(run_id: str | None, ctx: DistContext) -> Iterator[None]:
    """The system metrics of this machine of a multi-node torchrun job, logged to the job's run by
    the machine's first process while the block lasts. Rank 0's machine needs none: its run's own
    monitor (``step_run(system_metrics=True)``) reports it."""
    if ctx.is_main or not ctx.is_node_main or run_id is None:
        yield
        return
    monitor = SystemMetricsMonitor(run_id, node_id=node_id(ctx), resume_logging=True)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        # The monitor logs a sample only once a sampling interval has passed; a node whose part
        # ended sooner would report nothing, so every node logs its state at the end once more.
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


def active_run_id() -> str | None:
    """The id of the run this process logs to; None where it has none (torchrun ranks other than 0)."""
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


@main_process_only
def set_tags(values: dict[str, str]) -> None:
    mlflow.set_tags(values)


@main_process_only
def log_params(params: dict[str, Any]) -> None:
    """Logs params not already on the run.

    ``mlflow run`` logs the ``-P`` values (as typed, e.g. ``1e-3``) before the entry point starts
    and a param can never change, so those keys keep the user's spelling.
    """
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: param_text(v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def param_text(value: Any) -> str:
    """A config value as MLflow keeps params: text, booleans lower-case, lists comma-separated."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(param_text(v) for v in value)
    return str(value)


@main_process_only
def log_config(config: dict[str, Any], params: dict[str, Any]) -> None:
    """The resolved config as ``config.yaml`` plus the given flat params."""
    mlflow.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")
    log_params(params)


def experiment_ids() -> list[str]:
    """The active run's experiment, or the one new runs would go to."""
    run = mlflow.active_run()
    if run is not None:
        return [run.info.experiment_id]
    return [mlflow.tracking.fluent._get_experiment_id()]


def current_uri() -> str:
    """The tracking URI ``configure`` chose."""
    return mlflow.get_tracking_uri()


def run_exists(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def run_url(run_id: str) -> str:
    return run_link(MlflowClient().get_run(run_id))


def run_link(run: Run | None = None) -> str:
    """The run's page in the tracking UI (the active run by default)."""
    run = run or mlflow.active_run()
    return f"{_ui_base()}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{UI_VIEW}"


def artifact_url(run_id: str, artifact_path: str) -> str:
    """The page of one of the run's artifacts in the tracking UI."""
    return run_url(run_id).removesuffix(UI_VIEW) + f"/artifactPath/{artifact_path}{UI_VIEW}"


def _served(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _ui_base() -> str:
    """Where the tracking UI is: the tracking server itself, else a local `mlflow ui`."""
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if _served(uri) else LOCAL_UI


def model_version_url(name: str, version: str) -> str:
    """A registered model version's page in the tracking UI (its description: the model card)."""
    return f"{_ui_base()}/#/models/{urllib.parse.quote(name)}/versions/{version}{UI_VIEW}"


def artifact_location(run_id: str, artifact_path: str) -> str:
    """Where one of a run's artifacts is: a local file path when the artifacts are on this
    machine (open it in a browser), else its page in the tracking UI."""
    root = MlflowClient().get_run(run_id).info.artifact_uri
    if root.startswith("file:"):
        return str(Path(urllib.parse.urlparse(root).path) / artifact_path)
    if "://" not in root and not root.startswith("mlflow-artifacts:"):
        return str(Path(root) / artifact_path)
    return artifact_url(run_id, artifact_path)


def tracking_ui_hint() -> str:
    """How to look at this experiment's runs in the MLflow UI."""
    uri = mlflow.get_tracking_uri()
    page = f"{_ui_base()}/#/experiments/{experiment_ids()[0]}/runs{UI_VIEW}"
    return f"open {page}" if _served(uri) else f"run `mlflow ui --backend-store-uri {uri}` and open {page}"
