# `make demo` and `make test` do all set-up: a virtual environment in $(VENV) with the
# package and its test dependencies. CI pins a CPU build of torch: make test TORCH=torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint quick-test bench bench-quick docs docs-noplot clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/skdcd demo

test: $(VENV)/.installed
	$(BIN)/ruff check skdcd tests benchmarks examples docs
	$(BIN)/python -m pytest tests skdcd $(PYTEST_ARGS)

quick-test: $(VENV)/.installed
	$(BIN)/python -m pytest tests skdcd -m "not slow" $(PYTEST_ARGS)

# the benchmark suite: about 3.7 hours on 2 cores (each section's seconds are in
# benchmarks/RESULTS.md); quick: a three-minute smoke run, which make test also runs
$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks run

bench-quick: $(VENV)/.bench
	$(BIN)/python -m benchmarks run --quick

# the documentation site in docs/_build/html; -W: any warning fails the build. docs runs every
# gallery example (about a minute each on 2 cores); docs-noplot skips them (no figures).
# SPHINXOPTS passes more options; SKDCD_DOCS_INTERSPHINX=1 enables links to other projects' docs.
SPHINXOPTS ?=
$(VENV)/.docs: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $@

docs: $(VENV)/.docs
	$(BIN)/sphinx-build -W --keep-going -b html $(SPHINXOPTS) docs docs/_build/html

docs-noplot: $(VENV)/.docs
	$(BIN)/sphinx-build -W --keep-going -b html -D plot_gallery=0 $(SPHINXOPTS) docs docs/_build/html

lint: $(VENV)/.installed
	$(BIN)/ruff check skdcd tests benchmarks examples docs
	$(BIN)/ruff format --check skdcd tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache skdcd_demo.png
	rm -rf docs/_build docs/generated docs/auto_examples docs/gen_modules
