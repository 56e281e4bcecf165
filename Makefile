# postwright: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# setup.py compiles the modules pyproject.toml lists with mypyc, in place (next to their
# .py files). Dependencies are installed without compiling (POSTWRIGHT_PURE=1); .built
# compiles, and again whenever a source changes, so the extension modules never lag behind
# the .py files they stand for.
SOURCES := $(shell find src -name '*.py')

.PHONY: install install-dev run test lint bench clean

$(VENV)/.deps: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	POSTWRIGHT_PURE=1 $(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.deps
	POSTWRIGHT_PURE=1 $(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.bench: $(VENV)/.dev
	POSTWRIGHT_PURE=1 $(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

$(VENV)/.built: $(VENV)/.deps pyproject.toml setup.py $(SOURCES)
	$(BIN)/pip install -q 'mypy>=2.4' 'setuptools>=68'
	$(BIN)/python setup.py -q build_ext --inplace
	touch $@

install: $(VENV)/.deps $(VENV)/.built

install-dev: $(VENV)/.dev $(VENV)/.built

run: install
	$(BIN)/postwright serve

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests setup.py
	$(BIN)/mypy

bench: $(VENV)/.bench $(VENV)/.built
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) postwright-data build
	find src -name '*.so' -delete
