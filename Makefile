# `make demo` and `make test` do all set-up: a virtual environment in $(VENV) with the
# package and its test dependencies. CI pins a CPU build of torch: make test TORCH=torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint quick-test clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/skdcd demo

test: $(VENV)/.installed
	$(BIN)/ruff check skdcd tests
	$(BIN)/python -m pytest tests skdcd $(PYTEST_ARGS)

quick-test: $(VENV)/.installed
	$(BIN)/python -m pytest tests skdcd -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check skdcd tests
	$(BIN)/ruff format --check skdcd tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache skdcd_demo.png
