# The two commands in the README are `make demo` and `make test`; everything else serves them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-cluster lint testbed down crds clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,prefetch,runtime]'
	touch $(STAMP)

testbed: $(STAMP)
	$(BIN)/inferator dev build

demo: testbed
	$(BIN)/inferator dev demo

down: $(STAMP)
	$(BIN)/inferator dev down

crds: $(STAMP)
	$(BIN)/inferator crds

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test-cluster: testbed
	$(BIN)/pytest tests/cluster -q

test: testbed lint
	$(BIN)/pytest tests -q

clean:
	rm -rf $(VENV) .dev
