# hello-transformers: `make run` sets up and runs the pipeline, `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Telemetry off (and offline for tests): each program below sets that itself from pipeline/core/env.py
# (flows/__init__.py, tests/conftest.py, bench/run_all.py), so nothing is exported here.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
MLFLOW_PORT ?= 5000
PREFECT_PORT ?= 4200
PORT ?= 5001
# params profile for `make run` (profiles/<name>.yaml, e.g. gpu, smoke); empty: params.yaml's defaults
PROFILE ?=
# stages at once for `make run` (empty: params.orchestration.parallel_stages)
JOBS ?=

.PHONY: help install postgres run lint test test-fast bench ui mlflow-server serve serve-model rollback reproduce clean-data
help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel (a looser spec would pull a CUDA build of several GB)
	$(PY) -m pip install --quiet torch==2.13.0 -c constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned dependencies

postgres: ## install PostgreSQL (Debian's postgresql package) for `make mlflow-server` and its test, if missing
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

run: $(STAMP) ## set up, run the whole pipeline (dvc repro) and print where results are; PROFILE=gpu|smoke, JOBS=N
	$(PY) -m flows.run_pipeline --profile '$(PROFILE)' $(if $(JOBS),--jobs $(JOBS))

lint: $(STAMP) ## ruff check, ruff format --check, lint-imports (architecture contracts); runs all three
	@rc=0; for cmd in "ruff check ." "ruff format --check ." "lint-imports"; do \
	  echo "+ $$cmd"; $(VENV)/bin/$$cmd || rc=1; \
	done; exit $$rc

test: lint ## set up, lint, then run the whole test suite
	$(PY) -m pytest

test-fast: $(STAMP) ## unit tests only (no lint, no training, no servers)
	$(PY) -m pytest -m "not integration and not slow"

bench: $(STAMP) ## run the benchmarks, write bench/results/*.json, print a summary
	$(PY) -m bench.run_all

ui: $(STAMP) ## MLflow UI on 127.0.0.1:$(MLFLOW_PORT) over the local store
	$(PY) -m flows.ui --port $(MLFLOW_PORT)

rollback: $(STAMP) ## undo the last champion promotion: make rollback TASK=emotion (or TASK=emotion-bert)
	@test -n "$(TASK)" || { echo "usage: make rollback TASK=<task, e.g. emotion | registered model, e.g. emotion-bert>"; exit 2; }
	$(PY) -m flows.compare rollback $(TASK)

mlflow-server: $(STAMP) postgres ## MLflow server on 127.0.0.1:$(MLFLOW_PORT): PostgreSQL store (MLFLOW_BACKEND_STORE_URI, else a temp cluster), proxied artifacts
	$(PY) -m flows.mlflow_server --port $(MLFLOW_PORT)

serve: $(STAMP) ## local Prefect server on 127.0.0.1:$(PREFECT_PORT) + the scheduled retrain deployment
	$(PY) -m flows.serve --port $(PREFECT_PORT)

serve-model: $(STAMP) ## serve models:/<task>@champion on 127.0.0.1:$(PORT): make serve-model TASK=emotion [PORT=5001]
	@test -n "$(TASK)" || { echo "usage: make serve-model TASK=<task, e.g. emotion> [PORT=5001]"; exit 2; }
	$(PY) -m flows.serve_model $(TASK) --port $(PORT)

reproduce: $(STAMP) ## rebuild a registered version from its lineage: make reproduce MODEL=emotion-rnn VERSION=3
	@test -n "$(MODEL)" || { echo "usage: make reproduce MODEL=<registered model, e.g. emotion-rnn> [VERSION=<n or alias; default champion>]"; exit 2; }
	$(PY) -m flows.reproduce $(MODEL) $(or $(VERSION),champion)

clean-data: ## remove stage outputs (data/, reports/) but keep the MLflow store
	rm -rf data reports
