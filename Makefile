# The two commands a fresh machine needs:
#   make run    set up .venv from nothing, then start the main job
#   make test   set up .venv from nothing, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 comes first so nothing pulls a CUDA build in its place.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the REST + WebSocket server on the bundled default model (models/default) at
# http://127.0.0.1:8000 (docs at /docs). HOST, PORT and any PMMTALK_* variable change it.
HOST ?= 127.0.0.1
PORT ?= 8000
run: setup
	$(BIN)/pmmtalk serve --host $(HOST) --port $(PORT)

test: setup
	$(BIN)/python -m pytest

# Includes the slow tests (paper-preset forward passes).
test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
