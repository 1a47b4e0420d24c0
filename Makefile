# decore-bench. Every target depends on the environment target, which (re)builds .venv when it is
# missing or pyproject.toml changed, so a fresh machine needs nothing but `make bench` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

MODEL ?= resnet56
DATASET ?= cifar10
RECIPE ?= cifar-standard
SEED ?= 0
DEVICE ?= auto
DATA_DIR ?= data
RESULTS_DIR ?= results
export DATA_DIR RESULTS_DIR

.PHONY: env test test-fast baseline bench measure clean-env help

help:
	@echo "make test                      run the test suite"
	@echo "make baseline MODEL=resnet20 DATASET=cifar10 RECIPE=cpu-tiny   train/cache a baseline"
	@echo "make measure MODEL=resnet110   params, FLOPs, latency of a model"
	@echo "make bench MODEL=resnet110 DATASET=cifar10   the benchmark (see README for its state)"

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

test: env
	$(PY) -m pytest tests

baseline: env
	$(PY) -m bench baseline --model $(MODEL) --dataset $(DATASET) --recipe $(RECIPE) --seed $(SEED) --device $(DEVICE)

measure: env
	$(PY) -m bench measure --model $(MODEL) --device $(DEVICE)

# The Optuna sweep lands with the sweep issue; until then `make bench` trains and caches the baseline
# that every trial of the sweep starts from.
bench: baseline

clean-env:
	rm -rf $(VENV)
