"""The sweep: pruning, the best trial on the sweep run, and a study continued after an interruption."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import optuna
import psycopg
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from sqlalchemy.exc import ProgrammingError

from pipeline.cli import sweep as sweep_cli
from pipeline.config import SweepConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.search_space import load_space
from pipeline.steps import sweep as sweep_step
from pipeline.steps.sweep import RUN_ID, log_best, open_study, pruning_hook, record_trial_state, trial_objective
from pipeline.tracking import runs, tags
from tests.conftest import PROJECT_ROOT, tracking_store

SPACE = PROJECT_ROOT / "experiments" / "sweeps" / "recipe.yaml"


class PruneAlways(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def tiny_train(processed_dir, root, **values) -> TrainConfig:
    """A trial's base values: seconds per trial (32 px, no intervals)."""
    return TrainConfig(**{"data_dir": str(processed_dir), "image_size": 32, "epochs": 1, "batch_size": 8,
                          "num_workers": 0, "bootstrap_resamples": 0, "checkpoint_artifact": False,
                          "checkpoint_dir": str(root / "checkpoints"), **values})


@pytest.mark.parametrize("error, then_opens", [
    # Two sweeps creating Optuna's schema on a new PostgreSQL database at once: the slower one's
    # CREATE TYPE (or TABLE) fails; the schema is the winner's, and a second try opens it.
    (psycopg.errors.DuplicateObject('type "studydirection" already exists'), True),
    (psycopg.errors.DuplicateTable('relation "studies" already exists'), True),
    # Anything else is the user's to fix, at once: a wrong password waits for nothing.
    (psycopg.errors.InvalidPassword('password authentication failed for user "optuna"'), False),
])
def test_a_storage_another_sweep_is_creating_opens_on_a_second_try(monkeypatch, error, then_opens):
    attempts = []

    def storage(url, **options):
        attempts.append(url)
        if len(attempts) == 1:
            raise ProgrammingError("CREATE ...", {}, error)
        return "opened"

    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    monkeypatch.setattr(sweep_step.time, "sleep", lambda seconds: None)
    url = "postgresql://optuna@db.example/optuna"
    if then_opens:
        assert sweep_step.open_storage(url) == "opened" and len(attempts) == 2
    else:
        with pytest.raises(ConfigError, match="password authentication failed"):
            sweep_step.open_storage(url)
        assert len(attempts) == 1


def test_the_hook_reports_every_epoch_and_prunes_before_the_last_only():
    study = optuna.create_study(direction="maximize", pruner=PruneAlways())
    trial = study.ask()
    hook = pruning_hook(trial, "val_kappa", epochs=3)
    with pytest.raises(optuna.TrialPruned, match="after epoch 1 at val_kappa=0.2000"):
        hook(1, {"val_kappa": 0.2, "val_accuracy": 0.9})
    hook(3, {"val_kappa": 0.4, "val_accuracy": 0.1})  # trained in full: its score counts
    assert study.trials[0].intermediate_values == {1: 0.2, 3: 0.4}


def test_the_median_pruner_waits_for_the_startup_trials_and_the_warmup_epochs(tmp_path):
    cfg = SweepConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}", pruner_startup_trials=2, pruner_warmup_epochs=1)
    study = open_study(cfg, TrainConfig(), load_space(SPACE))
    finished = {"lr": 1e-3, "weight_decay": 1e-4, "optimizer": "sgd", "lr_schedule": "constant"}
    distributions = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "weight_decay": FloatDistribution(1e-5, 1e-2, log=True),
                     "optimizer": CategoricalDistribution(["sgd", "adamw"]),
                     "lr_schedule": CategoricalDistribution(["constant", "cosine"])}

    def behind_at_epoch_2() -> bool:
        hook = pruning_hook(study.ask(), "val_kappa", epochs=3)
        hook(1, {"val_kappa": 0.0})  # a warm-up epoch: never pruned
        try:
            hook(2, {"val_kappa": 0.0})
        except optuna.TrialPruned:
            return True
        return False

    assert not behind_at_epoch_2()  # no trial has finished yet
    for _ in range(2):
        study.add_trial(create_trial(value=0.5, params=finished, distributions=distributions,
                                     intermediate_values={1: 0.5, 2: 0.5, 3: 0.5}))
    assert behind_at_epoch_2()


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_pruned_trial_ends_killed_with_its_epochs_logged_and_its_checkpoint_gone(sqlite_tracking, processed_dir,
                                                                                  tmp_path):
    base = tiny_train(processed_dir, tmp_path, epochs=2, checkpoint_artifact=True)
    study = optuna.create_study(direction="maximize", pruner=PruneAlways())
    runs.configure()
    with runs.step_run("sweep", "sweep") as sweep_run:
        study.optimize(trial_objective(SweepConfig(), base, load_space(SPACE)), n_trials=1,
                       callbacks=[record_trial_state])
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    client = MlflowClient()
    run_id = trial.user_attrs[RUN_ID]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[tags.TRIAL_STATE] == "PRUNED"
    assert run.data.tags[tags.PARENT_RUN] == sweep_run.info.run_id and run.data.tags[tags.TRIAL] == "0"
    assert client.get_run(sweep_run.info.run_id).info.status == "FINISHED"  # the sweep goes on
    assert [m.step for m in client.get_metric_history(run_id, "val_kappa")] == [1]  # the epoch it trained
    assert not (tmp_path / "checkpoints" / run_id).exists()
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == []


def test_the_sweep_run_logs_the_best_trials_values_and_score(sqlite_tracking):
    distributions = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "optimizer": CategoricalDistribution(["sgd", "adamw"])}
    outcomes = [(TrialState.COMPLETE, 0.2, 1e-3, "sgd"), (TrialState.COMPLETE, 0.6, 3e-3, "adamw"),
                (TrialState.PRUNED, None, 5e-3, "sgd"), (TrialState.FAIL, None, 1e-2, "adamw"),
                (TrialState.COMPLETE, 0.4, 2e-4, "sgd")]
    study = optuna.create_study(direction="maximize")
    runs.configure()
    with runs.step_run("sweep", "sweep") as sweep_run:
        trial_runs = []
        for number, (state, value, lr, optimizer) in enumerate(outcomes):
            with runs.step_run("train", f"trial-{number}", nested=True):
                trial_runs.append(runs.active_run_id())
            study.add_trial(create_trial(state=state, value=value, params={"lr": lr, "optimizer": optimizer},
                                         distributions=distributions, user_attrs={RUN_ID: trial_runs[-1]},
                                         intermediate_values={1: 0.1} if state == TrialState.PRUNED else None))
        outcome = log_best(SweepConfig(), study, ran=len(outcomes))
    run = MlflowClient().get_run(sweep_run.info.run_id)
    assert outcome.best.number == 1 and outcome.best_run_id == trial_runs[1]
    params, metrics = run.data.params, run.data.metrics
    assert (params["best_trial"], params["best_lr"], params["best_optimizer"]) == ("1", "0.003", "adamw")
    assert metrics["best_val_kappa"] == max(value for _, value, _, _ in outcomes if value is not None)
    assert (metrics["trials_complete"], metrics["trials_pruned"], metrics["trials_failed"]) == (3, 1, 1)
    assert run.data.tags[tags.BEST_RUN] == trial_runs[1]
    note = run.data.tags[tags.NOTE]
    assert "best trial **1**, `val_kappa` 0.6000, of 5 (3 complete, 1 pruned, 1 failed)" in note
    assert "| **1** | COMPLETE | 0.6000 | 0.003 | adamw |" in note and "| 2 | PRUNED after epoch 1 |  | 0.005 | sgd |" in note
    assert all(run_id[:8] in note for run_id in trial_runs)


STUDY = "resumed"


@pytest.fixture(scope="module")
def resumed_sweep(processed_dir, tmp_path_factory):
    """A sweep of 1 trial, continued to 2; a sweep killed mid-trial; the sweep again (nothing to run); and
    the study with another metric."""
    root = tmp_path_factory.mktemp("sweep")
    uri, storage = tracking_store(root), f"sqlite:///{root / 'optuna.db'}"
    train = tiny_train(processed_dir, root)
    args = ["--storage", storage, "--study_name", STUDY, "--space", str(SPACE), "--data_dir", train.data_dir,
            "--image_size", "32", "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
            "--bootstrap_resamples", "0", "--checkpoint_artifact", "false", "--checkpoint_dir", train.checkpoint_dir]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweeps")
        monkeypatch.chdir(root)
        monkeypatch.setattr(sweep_step, "GRACE_SECONDS", 1)  # the killed trial's heartbeat is stale within seconds
        codes = [sweep_cli.main([*args, "--trials", "1"]), sweep_cli.main([*args, "--trials", "2"])]
        client = MlflowClient(uri)
        killed_run = plant_a_killed_trial(client, storage)
        time.sleep(2.5)
        codes.append(sweep_cli.main([*args, "--trials", "2"]))
        codes.append(sweep_cli.main([*args, "--trials", "2", "--metric", "val_accuracy"]))
        study = optuna.load_study(study_name=STUDY, storage=storage)
        yield codes, client, study, killed_run
    mlflow.set_tracking_uri(None)


def plant_a_killed_trial(client: MlflowClient, storage_url: str) -> str:
    """What a sweep killed mid-trial leaves: a RUNNING trial whose heartbeat stopped, and its train run RUNNING."""
    storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=1)
    trial = optuna.load_study(study_name=STUDY, storage=storage).ask()
    experiment_id = client.get_experiment_by_name("sweeps").experiment_id
    run_id = client.create_run(experiment_id, run_name=f"trial-{trial.number}", tags={tags.STEP: "train"}).info.run_id
    trial.set_user_attr(RUN_ID, run_id)
    storage.record_heartbeat(trial._trial_id)
    return run_id


def sweep_runs(client: MlflowClient) -> list:
    experiment_id = client.get_experiment_by_name("sweeps").experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`{tags.STEP}` = 'sweep'",
                              order_by=["attributes.start_time ASC"])


def nested_runs(client: MlflowClient, parent) -> list:
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`{tags.PARENT_RUN}` = '{parent.info.run_id}'")


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_continued_sweep_runs_only_the_missing_trials(resumed_sweep):
    codes, client, study, _ = resumed_sweep
    assert codes[:3] == [0, 0, 0]
    first, second, third, _ = sweep_runs(client)
    assert [len(nested_runs(client, run)) for run in (first, second, third)] == [1, 1, 0]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    for trial in study.trials[:2]:
        run = client.get_run(trial.user_attrs[RUN_ID])
        assert run.info.status == "FINISHED" and run.data.tags[tags.TRIAL] == str(trial.number)


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_killed_sweeps_trial_is_failed_with_its_run(resumed_sweep):
    _, client, study, killed_run = resumed_sweep
    assert study.trials[2].user_attrs[RUN_ID] == killed_run
    run = client.get_run(killed_run)
    assert run.info.status == "FAILED" and run.data.tags[tags.TRIAL_STATE] == "FAIL"


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_continued_study_draws_values_of_its_own(resumed_sweep):
    """Not the first sweep's first draws again, as a sampler seeded alike would give."""
    _, _, study, _ = resumed_sweep
    assert study.trials[1].params != study.trials[0].params


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_continued_sweep_sums_up_the_whole_study(resumed_sweep):
    _, client, study, _ = resumed_sweep
    last = sweep_runs(client)[2]
    scored = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = study.best_trial
    assert last.data.metrics["best_val_kappa"] == max(t.value for t in scored) == best.value
    assert {k: v for k, v in last.data.params.items() if k.startswith("best_")} == {
        "best_trial": str(best.number), **{f"best_{k}": runs.param_text(v) for k, v in best.params.items()}}
    assert last.data.tags[tags.BEST_RUN] == best.user_attrs[RUN_ID]
    assert last.data.metrics["trials_complete"] == 2 and last.data.metrics["trials_failed"] == 1
    assert {a.path for a in client.list_artifacts(last.info.run_id)} == {"config.yaml", SPACE.name}
    note = last.data.tags[tags.NOTE]
    assert all(f"| {t.number} | {t.state.name} |" in note.replace("**", "") for t in study.trials)
    assert all(t.user_attrs[RUN_ID][:8] in note for t in study.trials)


@pytest.mark.slow  # over the quick loop's budget (pyproject.toml)
def test_a_study_refuses_another_metric(resumed_sweep):
    codes, client, _, _ = resumed_sweep
    assert codes[3] == 2
    refused = sweep_runs(client)[3]
    assert refused.info.status == "FAILED"
    assert refused.data.tags[tags.ERROR].startswith(f"study '{STUDY}' in sqlite:///")
    assert "began with metric 'val_kappa', not 'val_accuracy'" in refused.data.tags[tags.ERROR]


@pytest.mark.slow  # two sweep processes, a PostgreSQL study and a real tracking server
def test_two_sweeps_of_one_study_share_its_trials(processed_dir, postgres, mlflow_server, tmp_path):
    """Two `sweep` workers started together on one Optuna study in PostgreSQL (as on two machines)
    run its trials between them: each trial once, the study's total as asked, no more."""
    from tests.conftest import subprocess_env
    from tests.postgres import create_database

    storage = create_database(postgres, "optuna_two_workers")
    train = tiny_train(processed_dir, tmp_path)
    args = ["--storage", storage, "--study_name", "shared", "--space", str(SPACE), "--trials", "3",
            "--data_dir", train.data_dir, "--image_size", "32", "--epochs", "1", "--batch_size", "8",
            "--num_workers", "0", "--bootstrap_resamples", "0", "--checkpoint_artifact", "false"]
    env = subprocess_env(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME="two-workers")
    workers = []
    for worker in ("a", "b"):
        (tmp_path / worker).mkdir()
        log = open(tmp_path / worker / "sweep.log", "w")
        workers.append((subprocess.Popen([sys.executable, "-m", "pipeline.cli.sweep", *args, "--checkpoint_dir",
                                          str(tmp_path / worker / "checkpoints")],
                                         cwd=tmp_path / worker, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in workers:
        assert process.wait(timeout=600) == 0, (tmp_path / "a" / "sweep.log").read_text()[-3000:]
        log.close()
    study = optuna.load_study(study_name="shared", storage=storage)
    counted = [t for t in study.trials if not t.user_attrs.get(sweep_step.SURPLUS)]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * 3
    client = MlflowClient(mlflow_server)
    runs_ = client.search_runs([client.get_experiment_by_name("two-workers").experiment_id])
    sweeps = [r for r in runs_ if r.data.tags.get(tags.STEP) == "sweep"]
    trials = [r for r in runs_ if r.data.tags.get(tags.STEP) == "train"]
    assert len(sweeps) == 2 and all(r.info.status == "FINISHED" for r in sweeps)
    assert sorted(int(r.data.tags[tags.TRIAL]) for r in trials) == sorted(t.number for t in counted)  # each once
    assert sorted(t.user_attrs[RUN_ID] for t in counted) == sorted(r.info.run_id for r in trials)
    per_worker = [sum(r.data.tags["mlflow.parentRunId"] == s.info.run_id for r in trials) for s in sweeps]
    assert sorted(per_worker) != [0, 3] and sum(per_worker) == 3  # shared between them
