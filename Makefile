# Portcullis: every target works on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
# `make test` runs the suite in this many processes (pytest-xdist), each with its own databases and servers;
# the tests wait on servers more than they compute, so there are more than the cores (docs/development.md)
PYTEST_WORKERS ?= 3

.PHONY: serve test lint bench install dev-install schema clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
dev-install: $(VENV)/.dev-installed

serve: install
	PORTCULLIS_ENV=$${PORTCULLIS_ENV:-dev} $(BIN)/portcullis migrate
	@if [ "$${PORTCULLIS_ENV:-dev}" = "dev" ]; then PORTCULLIS_ENV=dev $(BIN)/portcullis seed-demo; fi
	PORTCULLIS_ENV=$${PORTCULLIS_ENV:-dev} $(BIN)/portcullis serve --host $(HOST) --port $(PORT)

test: dev-install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: dev-install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy authz identity store schema resolvers gateway bench examples

bench: dev-install
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } \
		|| echo "wrk is missing and cannot be installed without root: apt-get install wrk" >&2
	$(BIN)/python -m bench $(BENCH_ARGS)

schema: install
	$(BIN)/portcullis schema --without-upstreams > schema.graphql

clean:
	rm -rf $(VENV) portcullis.db portcullis.db-wal portcullis.db-shm
