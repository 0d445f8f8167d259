# Entry points: `make run` (the pipeline), `make ui` (MLflow UI), `make test` (unit + integration tests),
# `make test-unit` (seconds), `make test-e2e` (DVC's commands end to end), `make test-services` (servers,
# clusters), `make test-slow` (full data),
# `make lint`. Each creates .venv and installs the project first, so none needs an activated environment.
VENV ?= .venv
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 5000
BIN := $(abspath $(VENV))/bin
# DVC runs each stage's `python -m ...` through the shell with our PATH: put the venv first.
export PATH := $(BIN):$(PATH)

SERVE_PORT ?= 5001
# make serve's uvicorn workers: one (MLflow's default) is the faster on 2 cores (docs/serving.md, Speed)
SERVE_WORKERS ?= 1
# make server: where its state lives, and AUTH=1 for MLflow's basic-auth app. The database and the artifact
# destination come from $MLFLOW_BACKEND_STORE_URI and $MLFLOW_ARTIFACTS_DESTINATION (see README).
SERVER_STATE ?= .cache/server
AUTH ?=
# passed on to `mlflow server`, e.g. SERVER_ARGS="--allowed-hosts mlflow.example.com"
SERVER_ARGS ?=
SWEEP ?= optimizer=sgd,rmsprop,adam
# make test: pytest-xdist worker processes, each taking whole test files (a module's fixture runs once). Two
# suit 2 cores: much of the suite is single-threaded process start-up (imports), which two workers overlap.
# --no-loadscope-reorder: files in collection order, the long integration scenarios first and the unit tests
# last to fill the gaps (xdist's default orders by number of tests, which left a 60 s file to run alone last).
TEST_WORKERS ?= 2

.PHONY: install install-dev smoke exps report docs run ui sweep predict serve server server-stop test test-unit test-e2e test-faults test-services test-slow test-all lint format params clean

# make install: what the pipeline runs on (TensorFlow's CPU wheel: EXTRAS=gpu for the CUDA one); make install-dev
# adds the tests, lint, docs and every optional extra; `make server` adds the team server's. docs/install.md
# gives each set's footprint.
EXTRAS ?= cpu

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The installer: uv (`uv pip install`: pip's interface, its own resolver, and a cache it links files from), which
# pip puts in the .venv first. A fresh .venv's install took well under half of pip's time (docs/performance.md,
# "The first run"; docs/install.md). uv reads its own configuration (uv.toml, UV_INDEX_URL...), not pip's:
# where only pip's (pip.conf: indexes, find-links, constraints) reaches your packages, uv fails and pip installs
# instead, or INSTALLER=pip goes straight to pip.
INSTALLER ?= uv
pip_install = $(BIN)/python -m pip install --quiet
ifeq ($(INSTALLER),uv)
installer := "uv>=0.5,<1"
# --compile-bytecode: pip's default, and uv's only on request. Without it, each new process compiles what it
# imports wherever PYTHONDONTWRITEBYTECODE is set (as on this project's machines).
install_set = $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(1) \
	|| { echo "make: uv could not install this set; pip will (INSTALLER=pip goes straight to pip)" >&2; \
	     $(pip_install) $(1); }
else
installer :=
install_set = $(pip_install) $(1)
endif

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(pip_install) --upgrade pip $(installer)
	$(call install_set,-e ".[$(EXTRAS)]")
	touch $@

# an extra on top of the pipeline's install: .installed-dev, .installed-server...
$(VENV)/.installed-%: $(VENV)/.installed
	$(call install_set,-e ".[$*]")
	touch $@

run: install  ## download -> preprocess -> train -> evaluate, each only if its inputs changed
	dvc repro

ui: install  ## MLflow UI over the store in params.yaml (tracking.uri), on 127.0.0.1 unless HOST says otherwise
	python -m pipeline.tracking ui --host $(HOST) --port $(PORT)

sweep: install  ## a Hydra sweep (SWEEP="optimizer=sgd,rmsprop,adam"), each job gated by the registry
	python -m pipeline.run -m $(SWEEP)

predict: install  ## the champion on your images: make predict IMAGES="photo.jpg scan.png"
	python -m pipeline.predict $(IMAGES)

serve: install  ## REST API of the champion (MLflow's scoring server) on 127.0.0.1:$(SERVE_PORT) unless HOST says otherwise
	python -m pipeline.tracking serve --host $(HOST) --port $(SERVE_PORT) --workers $(SERVE_WORKERS)

server: $(VENV)/.installed-server  ## the team's MLflow tracking server on PostgreSQL, proxied artifacts (AUTH=1: basic-auth) on $(HOST):$(PORT)
	python -m pipeline.server start --state-dir $(SERVER_STATE) --host $(HOST) --port $(PORT) $(if $(filter 1 true yes,$(AUTH)),--auth) $(SERVER_ARGS)

server-stop: $(VENV)/.installed-server  ## stop what `make server` started: the server and its PostgreSQL cluster
	python -m pipeline.server stop --state-dir $(SERVER_STATE)

test: install-dev  ## unit + integration tests (small real subsets of MNIST), the quick suite, in $(TEST_WORKERS) processes (DVC's commands: make test-e2e)
	pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-e2e: install-dev  ## DVC's own commands end to end in copies of the project (dvc repro, dvc exp run, its queue, a new stage)
	pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "e2e and not services and not slow and not faults"

test-faults: install-dev  ## the fault tier (real read-only mounts, a full tmpfs, swapped models, hostile images, signals): tests/faults and test_faults.py
	pytest -n $(TEST_WORKERS) --dist loadfile -m "faults and not services and not slow"

test-services: install-dev  ## tests that start servers, clusters or devices: the team set-up, Ray, MirroredStrategy
	pytest -m "services and not slow"

test-unit: install-dev  ## unit tests: synthetic arrays, in-process, seconds
	pytest tests/unit -n $(TEST_WORKERS) --dist loadfile

test-slow: install-dev  ## full-data tests: the default pipeline end to end, serving, the UI
	pytest -m slow

test-all: test test-e2e test-faults test-services test-slow  ## everything CI runs

lint: install-dev  ## ruff (lint and format check) and mypy, as CI runs them
	ruff check .
	ruff format --check .
	mypy

format: install-dev  ## apply ruff's formatting and safe fixes
	ruff format .
	ruff check --fix .

smoke: install  ## a smoke run: 640 images through download, preprocess, train, evaluate and the gate, into a throw-away store (.cache/smoke)
	python -m pipeline.run train=debug tracking.uri=sqlite:///$(abspath .cache/smoke)/mlflow.db hydra.run.dir=.cache/smoke/run

exps: install  ## the DVC experiments in a table that fits 120 columns: the params that differ and the key metrics
	dvc exp show --only-changed --drop 'Created|State|Executor|test_samples|run_id|train_run_id|experiment_id|model_id|data/|models/|pipeline/|reports/|optimizer\.(?!name$$|learning_rate$$)' \
	  --precision 4 --no-pager $(if $(shell test -t 1 && echo tty),,--md) $(EXPS_ARGS)

report: install  ## the workspace's experiment against BASE's (make report BASE=main): reports/change.md and change.png
	python -m pipeline.report --base $(or $(BASE),$(error BASE is unset: make report BASE=<git revision>))

docs: install-dev  ## the docs site (mkdocs-material) on http://$(HOST):8000
	NO_MKDOCS_2_WARNING=1 mkdocs serve -a $(HOST):8000

params: install  ## rewrite params.yaml from conf/ (what `dvc exp run` does)
	python -m pipeline.config

clean: install  ## every output in params.yaml's paths (data, models, reports, caches) and Hydra's folders; keeps the MLflow store
	python -m pipeline.config clean
