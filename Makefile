# driftloop: `make up` starts the service with its demo; `make test` runs the test suite.
# Needs only Python 3.11, git and make: uv is installed into .driftloop/tools if missing.

SHELL := /bin/bash
.DEFAULT_GOAL := help

STATE   := .driftloop
TOOLS   := $(STATE)/tools
VENV    := .venv
PYTHON  ?= python3.11
UV_VERSION := 0.13.8
UV      := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
BIN     := $(VENV)/bin

# Quiet and offline in every process make starts (see README, "Telemetry").
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0
export DVC_NO_ANALYTICS := 1
export EVIDENTLY_DISABLE_TELEMETRY := 1
export ITERATIVE_DO_NOT_TRACK := 1
export ORT_DISABLE_TELEMETRY := 1
# uv: use the machine's Python 3.11, keep its cache with the project, never touch $HOME.
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_CACHE_DIR := $(CURDIR)/$(STATE)/cache/uv
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
# Trust the platform's certificate store (as pip and git do), not only uv's bundled roots:
# behind a TLS-inspecting proxy the install works without SSL_CERT_FILE in the environment.
export UV_SYSTEM_CERTS := 1
# `python` is the project's interpreter for what make starts (the work pool's engine command is
# `python -m prefect.engine`, which a stock process worker runs from the PATH).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install server-deps up up-server down test test-fast typecheck pytest lint format batch drift bench bench-ray bench-events bench-storm bench-serving deploy worker feast clean distclean

help: ## list the targets
	@grep -E '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --no-cache-dir uv==$(UV_VERSION)

$(BIN)/driftloop: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked
	@touch $@

install: $(BIN)/driftloop ## create .venv from uv.lock

up: install ## start Prefect, MLflow, a worker and the demo (foreground; Ctrl-C stops all)
	$(BIN)/driftloop up

# Debian packages the server profile and its tests need, installed only where missing:
# PostgreSQL and Redis (started by `driftloop up` as supervised components) and
# docker-compose, which validates compose.yaml offline (tests/test_compose.py).
SERVER_DEBS := postgresql redis-server docker-compose
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
server-deps: ## install PostgreSQL, Redis and docker-compose from Debian packages if missing
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

up-server: install server-deps ## the same service on PostgreSQL-backed Prefect and MLflow and a Redis online store
	DRIFTLOOP_PROFILE=server $(BIN)/driftloop up

down: install ## stop anything a killed `make up` left running
	$(BIN)/driftloop down

test: install server-deps ## lint, type-check and run the whole test suite (tests/test_deployments.py checks prefect.yaml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadscope --no-loadscope-reorder

test-fast: install ## the inner loop: lint and the unit tier (no Prefect server, no whole stack)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -m "not integration and not slow" $(ARGS)

typecheck: install ## mypy over the core, blocks, tasks and flows
	$(BIN)/mypy

pytest: install ## run only the tests (ARGS="-k name" to select)
	$(BIN)/pytest $(ARGS)

lint: install ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## format and fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

batch: install ## add a batch to the demo data registry (ARGS="--rows 2000 --shift monthly_charges=1")
	$(BIN)/driftloop add-batch $(ARGS)

drift: install ## add a clearly drifted batch to the demo data registry
	$(BIN)/driftloop add-batch --drift $(ARGS)

bench: install ## training benchmark: cold vs warm flow, flow vs plain script (bench/training_bench.py)
	$(BIN)/python bench/training_bench.py $(ARGS)

bench-ray: install ## Ray benchmark: trials sequential vs on the RayTaskRunner (bench/ray_bench.py)
	$(BIN)/python bench/ray_bench.py $(ARGS)

bench-events: install ## event latency: emit -> flow run created / Running / first task; make drift -> champion
	$(BIN)/python bench/event_bench.py $(ARGS)

bench-storm: install server-deps ## event storm and idle memory: embedded (SQLite) vs server profile (PostgreSQL, Redis)
	$(BIN)/python bench/storm_bench.py $(ARGS)

bench-serving: install ## serving: p50/p99/throughput through HTTP vs mlflow models serve; failed requests during a hot swap
	$(BIN)/python bench/serving_bench.py $(ARGS)

deploy: install ## deploy prefect.yaml and the notification automations to PREFECT_API_URL
	$(BIN)/prefect --no-prompt deploy --all
	$(BIN)/driftloop automations

worker: install ## run driftloop's worker on the driftloop work pool (PREFECT_API_URL)
	$(BIN)/driftloop worker --pool driftloop-process

feast: install ## run a feast CLI command in feature_repo (ARGS="feature-views list")
	cd feature_repo && ../$(BIN)/feast $(ARGS)

clean: ## stop everything and delete all state (keeps .venv and the uv cache)
	-$(BIN)/driftloop down
	find $(STATE) -mindepth 1 -maxdepth 1 ! -name cache ! -name tools -exec rm -rf {} +

distclean: clean ## also delete .venv and the tool cache
	rm -rf $(VENV) $(STATE)
