# Targets work from a fresh clone: `make setup` first, or any target that
# needs the virtual environment creates it.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?=

.PHONY: setup demo test lint format bench loadtest clean

$(BIN)/recsys: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/recsys

demo: $(BIN)/recsys
	$(BIN)/python -m recsys_training.demo $(if $(DATA),--data $(DATA))

test: $(BIN)/recsys
	$(BIN)/python -m pytest

lint: $(BIN)/recsys
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy recsys api training

format: $(BIN)/recsys
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
