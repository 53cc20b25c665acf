# gpupool: `make run` starts the server on this machine; `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint typecheck clean help

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run ## Create the environment and start the server on 127.0.0.1 (SQLite, this machine as the node pool)
	@echo "gpupool is installed in $(VENV): in another terminal, run 'source $(VENV)/bin/activate' to put"
	@echo "'gpupool' on your PATH (or call $(BIN)/gpupool), then try: gpupool submit examples/hello.yaml"
	$(BIN)/gpupool up

lint: $(VENV)/.installed-test ## ruff and the purity contract of the core
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test ## mypy on the pure core
	$(BIN)/mypy

test: lint typecheck ## Create the environment with test extras and run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
