# keyrelay developer commands. Every target creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test pytest lint fmt bench migrate serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# PORT=9000 make demo (or make demo PORT=9000) listens on another port; KEYRELAY_PORT works as well.
demo: $(STAMP)
	$(BIN)/keyrelay demo $(if $(PORT),--port $(PORT))

test: lint pytest

# Tests run in PYTEST_WORKERS processes (pytest-xdist): half of one process's time is spent waiting on the
# servers, subprocesses and databases the tests start. More workers need more PostgreSQL connections.
PYTEST_WORKERS ?= 2

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=25

lint: $(STAMP)
	$(BIN)/ruff format --check keyrelay tests
	$(BIN)/ruff check keyrelay tests
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format keyrelay tests
	$(BIN)/ruff check --fix keyrelay tests

migrate: $(STAMP)
	$(BIN)/keyrelay migrate

serve: $(STAMP)
	$(BIN)/keyrelay serve

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) keyrelay.egg-info .pytest_cache .mypy_cache .ruff_cache
