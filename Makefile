# Two commands on a fresh machine (only Python >= 3.10 needed):
#   make demo   - create .venv, install, run the whole pipeline on the embedded default
#   make test   - create .venv, install, run the test suite
# GPU users: `make setup TORCH_SPEC="torch==<version>"` with the CUDA build of their choice, or
# `make setup TORCH_SPEC= VENV_ARGS=--system-site-packages` to keep the torch they already have.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
VENV_ARGS ?=
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint format benchmark clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -r requirements-lock.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m attribution_analysis.demo

test: setup
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check attribution_analysis tests benchmarks
	$(BIN)/ruff format --check attribution_analysis tests benchmarks

format: setup
	$(BIN)/ruff format attribution_analysis tests benchmarks
	$(BIN)/ruff check --fix attribution_analysis tests benchmarks

benchmark: setup
	$(BIN)/python benchmarks/bench_attribution.py

clean:
	rm -rf $(VENV) output
