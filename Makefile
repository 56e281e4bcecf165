# postwright: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install install-dev run test lint bench clean

$(BIN)/postwright: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

install: $(BIN)/postwright

$(VENV)/.dev: $(BIN)/postwright
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install-dev: $(VENV)/.dev

run: install
	$(BIN)/postwright serve

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests
	$(BIN)/mypy

$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) postwright-data
