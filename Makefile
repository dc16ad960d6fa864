# Switchboard developer entry points. `make run` and `make test` work on a fresh clone:
# they create the virtualenv, install the project, bring up NATS/Redis/PostgreSQL and
# apply migrations before doing anything else.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BOOTSTRAP_PYTHON ?= $(shell command -v python3.11 || command -v python3)
PYTEST_ARGS ?=
# Parallel pytest workers (pytest-xdist); PYTEST_WORKERS=0 runs the tests serially in one process.
PYTEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadgroup
RUN_ARGS ?=
NATS_ARGS ?=

LOCK := deploy/docker/requirements.lock

.PHONY: help setup infra run run-demo test test-auth faults lint lock nats-config bench bench-compare clean

help: ## list targets
	@echo "Switchboard make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo "Variables: PYTEST_ARGS='-k foo' PYTEST_WORKERS=0 (test), RUN_ARGS='...' (run), SB_*_URL (infra)"

setup: $(STAMP) ## create .venv and install the SDK and the project (with [dev] extras), editable

# Re-installs only when a pyproject.toml or the lock changes (or the venv is missing). The lock's
# pins are constraints: the tests run the runtime versions the image ships. The agent SDK
# (./sdk, its own distribution) is installed beside the server, which depends on it.
$(STAMP): pyproject.toml sdk/pyproject.toml $(LOCK)
	@if [ ! -x $(PY) ]; then \
	  test -n "$(BOOTSTRAP_PYTHON)" || { echo "python3.11/python3 not found" >&2; exit 1; }; \
	  echo "setup: creating $(VENV) with $(BOOTSTRAP_PYTHON)"; \
	  $(BOOTSTRAP_PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --disable-pip-version-check -e ./sdk -e '.[dev]' -c $(LOCK)
	@touch $@

infra: setup ## start NATS/Redis/PostgreSQL if needed, create the database, migrate
	@PYTHON=$(PY) bash deploy/local/infra.sh

run: infra ## start all services, apply config, run the demo, serve until Ctrl-C
	$(PY) deploy/local/run.py $(RUN_ARGS)

run-demo: infra ## like run, but exit after the demo (for scripts)
	$(PY) deploy/local/run.py --exit-after-demo $(RUN_ARGS)

test: infra ## run the test suite (PYTEST_ARGS=... to pass options)
	$(PY) -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

faults: setup ## the full fault suite on its own NATS/Redis/PostgreSQL; writes docs/reliability.md
	$(PY) -m tests.faults.suite --report docs/reliability.md

test-auth: infra ## the test suite with NATS authentication on: every process as its role
	SB_TEST_NATS_AUTH=1 $(PY) -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: setup ## ruff lint + format check
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: setup ## run the benchmark (BENCH_ARGS=... to pass options, e.g. --duration 5)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-compare: setup ## run the benchmark against LiteLLM for comparison
	$(PY) bench/run.py --compare-litellm $(BENCH_ARGS)

lock: setup ## re-resolve the runtime dependencies into deploy/docker/requirements.lock
	$(PY) deploy/docker/lock.py

nats-config: setup ## print the NATS users and permissions (NATS_ARGS='--env prod --agent NAME')
	@$(PY) deploy/nats/generate.py $(NATS_ARGS)

clean: ## remove caches and build artefacts (keeps .venv)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
