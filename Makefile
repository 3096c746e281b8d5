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
	$(BIN)/python -m recsys_training.demo $(if $(DATA),--data $(DATA)) $(if $(REPLAY),--replay) $(DEMO_ARGS)

test: $(BIN)/recsys
	$(BIN)/python -m pytest

lint: $(BIN)/recsys
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy recsys api training

# Latency, throughput and memory of the API at the served catalog (or a build
# fitted on DATA, a prepared dataset) and at a synthetic 1M-item catalog.
bench: $(BIN)/recsys
	$(BIN)/recsys bench latency $(if $(DATA),--dataset $(DATA))

# Locust, headless, 60 s of mixed shop traffic against a local server.
loadtest: $(BIN)/recsys
	$(BIN)/python loadtest/run.py $(if $(DATA),--dataset $(DATA))

format: $(BIN)/recsys
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
