# The two commands of the README: `make demo` (setup + the whole study on synthetic data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Absolute, so every step (and `mlflow ui`) finds the same embedded store whatever its working directory.
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
DEMO_RAW ?= data/raw
DEMO_DATA ?= data/processed
# The demo's external set (experiments/external.yaml reads it from here).
DEMO_EXTERNAL := data/external/messidor2

.PHONY: install spark java browser postgres demo test ui server clean
# One target at a time, even under `make -j`: install and spark build the same venv.
.NOTPARALLEL:

# pyproject.toml is the one list of dependencies; the project installs editable, with pytest.
# setuptools prints a warning box on every editable install (a folder named like the package may
# shadow it: here that folder *is* the package); PIP_QUIET_EDITABLE silences that one warning.
PIP_QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
# pip byte-compiles what it installs in one process (116 s with it, 64 s without, back to back here);
# compileall does it on every core instead (32 s). Compiled it must be: where PYTHONDONTWRITEBYTECODE
# is set nothing caches it later, and each process would compile the packages it imports again
# (15 s vs 6.5 s to start train). A few files are for newer Pythons and do not compile: pip skipped
# them too (-qq, || true). The packages' own test suites (a fifth of the source) are never imported.
COMMA := ,
# $(call venv_with,EXTRAS): a venv here with the project installed editable, with its optional EXTRAS.
define venv_with
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_QUIET_EDITABLE) $(BIN)/python -m pip install --quiet --no-compile -e '.[$(1)]'
	$(BIN)/python -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib || true
endef

$(VENV)/.installed: pyproject.toml
	$(call venv_with,dev)
	touch $@

install: $(VENV)/.installed

# grade_archive runs on Spark: pyspark (the optional `spark` dependencies) and Java 17+ (Debian's JRE).
# One pip pass for both sets where there is no venv yet (`make test` on a fresh clone: a second pass
# would resolve every dependency again, ~6 s); otherwise it adds pyspark to the venv there is.
$(VENV)/.spark-installed: pyproject.toml
	$(call venv_with,dev$(COMMA)spark)
	touch $(VENV)/.installed $@

spark: $(VENV)/.spark-installed

java:
	@command -v java >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; }

demo: install
	$(BIN)/python -m pipeline.cli.generate --out $(DEMO_RAW) --train_patients 150 --test_patients 50 --size 512x384 --shares uniform --defects 0.1
	$(BIN)/python -m pipeline.cli.generate --layout messidor2 --out $(DEMO_EXTERNAL) --train_patients 40 --test_patients 10 --size 576x384 --seed 1
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . -e main --env-manager local --experiment-name retina-flow \
		-P config=experiments/external.yaml -P raw_dir=$(DEMO_RAW) -P data_dir=$(DEMO_DATA) -P skip_unavailable_weights=true
	@echo
	@echo "Results are in $(MLFLOW_TRACKING_URI) (artifacts under ./mlruns). Browse them with: make ui"

# The HTML report and the MLflow UI are tested in a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The tests' tracking servers run on a throwaway PostgreSQL cluster (Debian's server binaries).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# Three workers on 2 cores, each taking whole test files (module fixtures stay shared), the longest
# files first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order, where xdist
# would start the files with the most tests first). Much of a test's time is spent waiting for a
# process or a server to start, and every process runs torch on one thread (tests/conftest.py):
# the third worker fills those waits (524 s against 565 s for two, back to back here).
TEST_WORKERS ?= 3
# Where PYTHONDONTWRITEBYTECODE is set (as on our development machines) no process caches the bytecode
# of pipeline/ or of the test modules pytest rewrites, so each of the suite's ~100 processes would
# compile them again (~0.45 s and ~1.2 s of CPU): the suite's processes write it (to __pycache__
# folders git ignores; the install compiled the installed packages already).
test: spark java browser postgres
	PYTHONDONTWRITEBYTECODE= PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# MLflow's server jobs (GenAI scoring and prompt optimization; retina-flow uses none) cost each `mlflow
# server` or `mlflow ui` eight more processes (~15 s of CPU a start): off unless you set it to true.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false

# The MLflow UI on the embedded store.
ui: install
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the runs of each experiment, in Model training mode)"
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

# A tracking server for several users or machines: loopback only unless you choose otherwise.
# A lab's server keeps its runs in PostgreSQL: make server BACKEND_STORE_URI=postgresql://USER:PASSWORD@HOST:5432/mlflow
BACKEND_STORE_URI ?= sqlite:///$(CURDIR)/mlflow-server.db
ARTIFACTS_DESTINATION ?= $(CURDIR)/mlartifacts
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
SERVER_OPTIONS ?=  # e.g. --app-name basic-auth
server: install
	$(BIN)/mlflow server --host $(SERVER_HOST) --port $(SERVER_PORT) --backend-store-uri $(BACKEND_STORE_URI) \
		--artifacts-destination $(ARTIFACTS_DESTINATION) $(SERVER_OPTIONS)

clean:
	rm -rf data mlruns mlartifacts mlflow.db mlflow-server.db
