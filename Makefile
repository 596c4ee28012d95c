# `make demo` and `make test` do all set-up: a virtual environment in $(VENV) with the
# package and its test dependencies. CI pins a CPU build of torch: make test TORCH=torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint quick-test bench bench-quick clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/skdcd demo

test: $(VENV)/.installed
	$(BIN)/ruff check skdcd tests benchmarks
	$(BIN)/python -m pytest tests skdcd $(PYTEST_ARGS)

quick-test: $(VENV)/.installed
	$(BIN)/python -m pytest tests skdcd -m "not slow" $(PYTEST_ARGS)

# the benchmark suite: about N hours on 2 cores (see benchmarks/RESULTS.md); quick: a smoke run
$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks run

bench-quick: $(VENV)/.bench
	$(BIN)/python -m benchmarks run --quick

lint: $(VENV)/.installed
	$(BIN)/ruff check skdcd tests benchmarks
	$(BIN)/ruff format --check skdcd tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache skdcd_demo.png
