"""The ``sweep`` entry point's body: an Optuna study over train values, each trial a nested train run.

TPE proposes each trial's values from the search space; the median pruner stops a trial whose
per-epoch validation metric falls below the median of earlier trials' at that epoch. The study
lives in Optuna's storage, so a sweep with the same study name continues it: it runs only the
trials still missing, under a sweep run of its own, and sums up the whole study there.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from pipeline.config import SweepConfig, TrainConfig, to_dict, validate_sweep_config, validate_train_config
from pipeline.data.dataset import resolve_dataset_dir
from pipeline.engine import EpochCallback
from pipeline.errors import ConfigError, RetinaFlowError
from pipeline.search_space import SearchSpace, load_space
from pipeline.steps.train import discard_checkpoints, run_train
from pipeline.tracking import artifacts, runs, tags
from pipeline.tracking.sink import metric_sink

log = logging.getLogger(__name__)

RUN_ID = "mlflow_run_id"  # a trial's user attr: its train run
# A trial's user attr: set on a trial another sweep of the study made unneeded (see ``trial_needed``).
SURPLUS = "surplus"
# Optuna's heartbeat: the trial of a process that died (killed, say) stays RUNNING until a later
# sweep of the study finds it silent this long; it is then failed, and its train run marked FAILED.
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180
SCHEMA_ATTEMPTS = 3  # opening a new storage that another sweep is creating at the same moment
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials that count towards `trials`
# The trial counts the sweep run logs, as metrics trials_<name>.
COUNTED = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}

SWEEP_RECIPE = "sweep"  # the recipe name of every trial run


@dataclass
class SweepOutcome:
    study_name: str
    ran: int  # the trials this sweep ran; the study may hold more, from earlier sweeps
    counts: dict[str, int]  # the study's trials by state (COUNTED's names)
    best: FrozenTrial
    best_run_id: str


def run_sweep(cfg: SweepConfig, base: TrainConfig) -> SweepOutcome:
    """Runs the trials the study still misses inside the active (sweep) run, then logs the best
    trial's values as ``best_<key>`` params and its score as ``best_<metric>``.

    Args:
        base: every trial's train values before the space's draws; its select_metric becomes ``cfg.metric``.
    """
    validate_sweep_config(cfg)
    # Trials are named a recipe of their own, so that `compare` never averages them (each with
    # other values) into the rows of the labs' or another recipe's configurations.
    base = dataclasses.replace(base, select_metric=cfg.metric, recipe=SWEEP_RECIPE)
    check_base(base)
    space = load_space(cfg.space)
    space.check_against(base)
    log_sweep_inputs(cfg, base, space)
    study = open_study(cfg, base, space)
    missing = max(cfg.trials - sum(t.state in FINISHED for t in study.trials), 0)
    log.info("study %s in %s: %d of %d trials to run", cfg.study_name, cfg.storage, missing, cfg.trials)
    if missing:
        # A trial whose run fails on a user error (a value it refuses) is FAIL, as is one scoring NaN,
        # and the sweep goes on; any other exception is a bug and stops it. Sweeps of one study on
        # several machines share its trials: each stops once the study holds or runs them all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            quota = optuna.study.MaxTrialsCallback(cfg.trials, states=(*FINISHED, TrialState.RUNNING))
        ran: list[int] = []

        def count_mine(study: optuna.Study, trial: FrozenTrial) -> None:
            if not trial.user_attrs.get(SURPLUS):
                ran.append(trial.number)

        study.optimize(trial_objective(cfg, base, space), n_trials=missing, catch=(RetinaFlowError,),
                       callbacks=[record_trial_state, count_mine, quota])
        missing = len(ran)
    return log_best(cfg, study, ran=missing)


def check_base(base: TrainConfig) -> None:
    """Fails on train values no trial could use, before the study is opened."""
    if base.nproc != 1:
        raise ConfigError(f"nproc={base.nproc}: a sweep trains its trials in its own process, one at a time; "
                          "leave nproc at 1")
    if base.resume:
        raise ConfigError(f"resume={base.resume!r}: every trial is a new run; a sweep continues through its study_name")
    validate_train_config(base)
    resolve_dataset_dir(base.data_dir, base.image_size, base.enhance)  # the data every trial reads, checked once


def log_sweep_inputs(cfg: SweepConfig, base: TrainConfig, space: SearchSpace) -> None:
    """The sweep's options and the train values no trial changes as params; all of it, with the
    space, in ``config.yaml``; the space file itself, comments and all."""
    fixed = {k: v for k, v in to_dict(base).items() if k not in space.params}
    runs.log_config({"sweep": to_dict(cfg), "train": to_dict(base), "space": space.describe()},
                    {**to_dict(cfg), **fixed})
    artifacts.log_artifact(space.path)
    runs.set_tags({tags.OPTUNA_STUDY: cfg.study_name})


def open_study(cfg: SweepConfig, base: TrainConfig, space: SearchSpace) -> optuna.Study:
    """The study ``cfg.study_name`` in ``cfg.storage``, created if new; a stored one must have the
    same metric and space, or its trials' scores would not compare."""
    study = optuna.create_study(
        storage=open_storage(cfg.storage), study_name=cfg.study_name, direction="maximize", load_if_exists=True,
        # Optuna prunes from step n_warmup_steps on; steps are epochs, counted from 1.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                           n_warmup_steps=cfg.pruner_warmup_epochs + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # before counting: a dead process's trial is no longer running
    # Seeded past the trials already drawn: a continued study must not draw its first values again.
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials))
    record = {"metric": cfg.metric, "space": space.describe(), "train": to_dict(base)}
    if not study.trials and not study.user_attrs:  # a new study: what its scores mean
        for key, value in record.items():
            study.set_user_attr(key, value)
    else:
        check_continued_study(study, cfg, record, swept=set(space.params))
    return study


def check_continued_study(study: optuna.Study, cfg: SweepConfig, record: dict[str, Any], swept: set[str]) -> None:
    """Refuses another metric or space than the study began with; warns of other fixed train values."""
    for key in ("metric", "space"):
        if study.user_attrs.get(key, record[key]) != record[key]:
            raise ConfigError(f"study '{cfg.study_name}' in {cfg.storage} began with {key} "
                              f"{study.user_attrs[key]!r}, not {record[key]!r}; continue it with that {key}, "
                              "or give this sweep another study_name")
    began = study.user_attrs.get("train", {})
    changed = sorted(k for k, v in record["train"].items() if k in began and began[k] != v and k not in swept)
    if changed:
        log.warning("study %s continues with other train values than it began with (its trials may not compare): %s",
                    cfg.study_name, ", ".join(f"{k} {began[k]!r} -> {record['train'][k]!r}" for k in changed))


# SQLSTATEs of a CREATE that another connection's CREATE beat: PostgreSQL's duplicate_table and
# duplicate_object (a type: Optuna's enums).
DUPLICATE_SCHEMA_STATES = ("42P07", "42710")


def created_by_another(exc: DBAPIError) -> bool:
    """Whether ``exc`` is a CREATE of Optuna's schema that lost a race with another sweep's."""
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(exc, IntegrityError) or state in DUPLICATE_SCHEMA_STATES or "already exists" in str(exc.orig)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url``, with the heartbeat that finds the trials of a killed sweep."""
    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    # Optuna calls its heartbeat experimental; it is what lets a sweep clean up after a killed one.
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                                      grace_period=GRACE_SECONDS,
                                                      heartbeat_stale_trial_callback=record_trial_state)
            except DBAPIError as exc:
                # Sweeps started together on a new database both create Optuna's tables (and, on
                # PostgreSQL, its enum types); the slower one's CREATE collides with the other's.
                # What it wanted to create is there a moment later.
                if not created_by_another(exc) or attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(1 + attempt)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"storage={url!r} is not a database Optuna can open (an SQLAlchemy URL such as "
                          f"sqlite:///optuna.db): {str(exc).splitlines()[0]}") from None


def trial_objective(cfg: SweepConfig, base: TrainConfig, space: SearchSpace) -> Callable[[optuna.Trial], float]:
    """One trial: the base values with the space's draws, trained in a train run nested in the
    sweep run; its score is the best epoch's ``cfg.metric`` (NaN, for a diverged model, fails it)."""

    def train_trial(trial: optuna.Trial) -> float:
        if not trial_needed(trial, cfg.trials):
            trial.set_user_attr(SURPLUS, True)
            trial.study.stop()
            raise SurplusTrialError(f"trial {trial.number} is not needed: other sweeps of study '{cfg.study_name}' "
                                    f"hold or run its {cfg.trials} trials")
        config = dataclasses.replace(base, **space.suggest(trial))
        with runs.step_run("train", f"trial-{trial.number}", nested=True, system_metrics=True,
                           stopped=(optuna.TrialPruned,)):
            run_id = runs.active_run_id()
            trial.set_user_attr(RUN_ID, run_id)
            runs.set_tags({tags.OPTUNA_STUDY: cfg.study_name, tags.TRIAL: str(trial.number)})
            try:
                outcome = run_train(config, on_epoch=pruning_hook(trial, cfg.metric, config.epochs))
            except optuna.TrialPruned:
                discard_checkpoints(config, run_id)  # a pruned trial is never resumed
                raise
        return outcome.selection_score

    return train_trial


class SurplusTrialError(RetinaFlowError):
    """A trial begun as another sweep of the study began the last one it needed."""


def trial_needed(trial: optuna.Trial, trials: int) -> bool:
    """Whether the study still needs ``trial``: fewer than ``trials`` trials numbered before it are
    finished or running. Optuna numbers a study's trials one by one in its storage, so of two sweeps
    that begin a last trial at once only the lower number is needed; the other ends unrun."""
    ahead = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(other.number < trial.number for other in ahead) < trials


def pruning_hook(trial: optuna.Trial, metric: str, epochs: int) -> EpochCallback:
    """Reports each epoch's ``metric`` to the trial and stops it (``optuna.TrialPruned``) when the
    pruner says so. Never after the last epoch: the trial has trained in full, and its score counts."""

    def report(epoch: int, metrics: dict[str, float]) -> None:
        trial.report(metrics[metric], epoch)
        if epoch < epochs and trial.should_prune():
            raise optuna.TrialPruned(f"after epoch {epoch} at {metric}={metrics[metric]:.4f}")

    return report


def record_trial_state(study: optuna.Study, trial: FrozenTrial) -> None:
    """Tags a trial's train run with Optuna's verdict on it; a run whose process died with it
    (found by the heartbeat) is marked FAILED."""
    run_id = trial.user_attrs.get(RUN_ID)
    if run_id is None or not runs.run_exists(run_id):  # it failed before its run began, or the run is deleted
        return
    runs.fail_if_unfinished(run_id)
    runs.tag_run(run_id, {tags.TRIAL_STATE: trial.state.name})


def log_best(cfg: SweepConfig, study: optuna.Study, ran: int) -> SweepOutcome:
    """The best trial's values (``best_<key>``), number and score (``best_<metric>``), the trial
    counts, and the whole study as a table in the sweep run's description."""
    trials = [t for t in study.trials if not t.user_attrs.get(SURPLUS)]
    counts = {name: sum(t.state == state for t in trials) for name, state in COUNTED.items()}
    if not counts["complete"]:
        raise RetinaFlowError(f"no trial of study '{cfg.study_name}' has a score ({counts['failed']} failed, "
                              f"{counts['pruned']} pruned); each failed trial's run says why in its tag {tags.ERROR}")
    best = study.best_trial
    best_run_id = best.user_attrs[RUN_ID]
    runs.log_params({"best_trial": best.number, **{f"best_{name}": value for name, value in best.params.items()}})
    metric_sink().log_summary({f"best_{cfg.metric}": best.value, **{f"trials_{n}": c for n, c in counts.items()}})
    runs.set_tags({tags.BEST_RUN: best_run_id, tags.NOTE: sweep_description(cfg, trials, best, counts)})
    return SweepOutcome(cfg.study_name, ran, counts, best, best_run_id)


def sweep_description(cfg: SweepConfig, trials: list[FrozenTrial], best: FrozenTrial, counts: dict[str, int]) -> str:
    """The sweep run's description in the MLflow UI (markdown): the best trial, then every trial."""
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    rows = [["trial", "state", cfg.metric, *names, "run"]]
    for trial in trials:
        state = trial.state.name + (f" after epoch {trial.last_step}" if trial.state == TrialState.PRUNED else "")
        score = f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else ""
        rows.append([f"**{trial.number}**" if trial.number == best.number else str(trial.number), state, score,
                     *(shown(trial.params.get(name)) for name in names), run_cell(trial.user_attrs.get(RUN_ID))])
    table = [rows[0], ["---"] * len(rows[0]), *rows[1:]]
    return (f"**retina-flow sweep** `{cfg.study_name}`: best trial **{best.number}**, `{cfg.metric}` "
            f"{best.value:.4f}, of {len(trials)} ({', '.join(f'{c} {n}' for n, c in counts.items())}).\n\n"
            + "\n".join("| " + " | ".join(row) + " |" for row in table) + "\n")


def shown(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else runs.param_text(value)


def run_cell(run_id: str | None) -> str:
    """A link to a trial's run; its id alone once the run is deleted from the tracking server."""
    if run_id is None:
        return ""
    return f"[{run_id[:8]}]({runs.run_url(run_id)})" if runs.run_exists(run_id) else run_id[:8]
