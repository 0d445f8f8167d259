# Entry points: `make run` (the pipeline), `make ui` (MLflow UI), `make test` (fast tests),
# `make test-slow` (full-data tests). Each creates .venv and installs the project first.
VENV ?= .venv
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 5000
BIN := $(abspath $(VENV))/bin
# DVC runs each stage's `python -m ...` through the shell with our PATH: put the venv first.
export PATH := $(BIN):$(PATH)

.PHONY: install run ui test test-slow params clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

run: install  ## download -> preprocess -> train -> evaluate, each only if its inputs changed
	dvc repro

ui: install  ## MLflow UI over the project's store, on 127.0.0.1 unless HOST says otherwise
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns --host $(HOST) --port $(PORT)

test: install  ## fast tests (small subsets)
	pytest

test-slow: install  ## full-data tests: the default pipeline end to end
	pytest -m slow

params: install  ## rewrite params.yaml from conf/ (what `dvc exp run` does)
	python -m pipeline.config

clean:  ## pipeline outputs and caches; keeps mlflow.db and mlruns/
	rm -rf data/raw data/processed models/model.keras models/mlflow_run.json .cache outputs multirun
