"""The tags retina-flow sets on runs: one home for their names."""

STEP = "retina_flow.step"  # which entry point a run is: preprocess, train, evaluate, ...
ERROR = "retina_flow.error"  # a failed step's user-facing message
MODEL_URI = "retina_flow.model_uri"  # a train run's logged model
SOURCE_RUN = "retina_flow.model_run_id"  # on evaluate: the train run of the model it evaluated
DATASET = "retina_flow.dataset"  # on a study's evaluate of an external set: the set's name
RESUMED_RUN = "retina_flow.resumed_run_id"  # on a resume's launcher run: the run it continued
SKIPPED_PREFIX = "retina_flow.skipped."  # on a study run: + configuration label -> why it was not run
OPTUNA_STUDY = "retina_flow.optuna_study"  # on a sweep run and its trials' train runs: the Optuna study's name
TRIAL = "retina_flow.trial"  # on a sweep trial's train run: the Optuna trial number
TRIAL_STATE = "retina_flow.trial_state"  # on a sweep trial's train run: COMPLETE, PRUNED or FAIL, as Optuna has it
BEST_RUN = "retina_flow.best_run_id"  # on a sweep run: the best trial's train run
CHAMPION_RUN = "retina_flow.champion_run_id"
CHAMPION_VERSION = "retina_flow.champion_version"
DEVICE = "retina_flow.device"
WORLD_SIZE = "retina_flow.world_size"
PRECISION = "retina_flow.precision"
CONFIGURATION = "retina_flow.configuration"
EXPERIMENT_KIND = "mlflow.experimentKind"  # on experiments: which view the MLflow UI opens
NOTE = "mlflow.note.content"  # the run description the MLflow UI shows (markdown)
PARENT_RUN = "mlflow.parentRunId"
# On a registered version made by ``export``: its format (onnx), quantization (none | int8) and the
# model URI of the torch grader it was exported from.
FORMAT = "retina_flow.format"
QUANTIZE = "retina_flow.quantize"
EXPORTED_FROM = "retina_flow.exported_from"
REGISTERED_VERSION = "retina_flow.registered_version"  # on an export run: the version it registered
