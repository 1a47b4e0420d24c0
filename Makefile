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
PROFILE ?= auto
METHODS ?= decore,l1,random
TRIALS ?=
SEEDS ?= 1
WORKERS ?= 1
STORAGE ?=
# LAUNCHER=slurm: `make bench` submits WORKERS array tasks with submitit and returns (docs/clusters.md);
# SLURM holds the jobs' options, e.g. SLURM="partition=gpu gpus_per_node=1 time=240" (time in minutes, required)
LAUNCHER ?= local
SLURM ?=
# the storage URL reaches the CLI through the environment, not the command line: make echoes commands and
# `ps` shows them, and a PostgreSQL URL may carry a password
export BENCH_STORAGE := $(STORAGE)
WANDB ?= auto
COMPILE ?=
SWEEP_ARGS ?=
BUDGET ?=
SEARCH_ARGS ?=
DATA_DIR ?= data
RESULTS_DIR ?= results
export DATA_DIR RESULTS_DIR

PERF_MODELS ?= resnet20,resnet56,resnet110
PERF_ARGS ?=

.PHONY: env test baseline bench search worker report tables paper measure perf gpu-check clean-env help

help:
	@echo "make test                      run the test suite"
	@echo "make baseline MODEL=resnet20 DATASET=cifar10 RECIPE=cpu-tiny   train/cache a baseline"
	@echo "make measure MODEL=resnet110   params, FLOPs, latency of a model"
	@echo "make bench MODEL=resnet110 DATASET=cifar10 [PROFILE=auto|smoke|cpu|fast|paper] [METHODS=decore,l1,random] [TRIALS=8] [SEEDS=1]"
	@echo "make search MODEL=resnet56 DATASET=cifar10 BUDGET=flops:0.5 [PROFILE=fast] [METHODS=...] [TRIALS=8]   best model per method under a budget"
	@echo "make worker STORAGE=postgresql://... MODEL=... DATASET=...   join a running sweep from another machine"
	@echo "make bench ... PROFILE=fast LAUNCHER=slurm WORKERS=8 SLURM=\"partition=gpu gpus_per_node=1 time=240\"   a SLURM job array (docs/clusters.md)"
	@echo "make report / make tables    plots and tables from stored results (no training)"
	@echo "make perf [PERF_MODELS=resnet20,resnet56,resnet110]   speed benchmark -> RESULTS_DIR/perf/"
	@echo "make gpu-check                 every CUDA path in one short run (<10 min) -> RESULTS_DIR/perf/gpu.md"

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

SWEEP = $(PY) -m bench sweep --model $(MODEL) --dataset $(DATASET) --profile $(PROFILE) --methods $(METHODS) \
	--seeds $(SEEDS) --workers $(WORKERS) --device $(DEVICE) --wandb $(WANDB) \
	$(if $(TRIALS),--trials $(TRIALS)) $(if $(filter 1 yes true,$(COMPILE)),--compile) \
	$(SWEEP_ARGS)

# the sweep ends by writing its report (plots, tables, README) into RESULTS_DIR/<model>-<dataset>-<profile>/
bench: env
	@case "$(LAUNCHER)" in local|slurm) ;; *) echo "LAUNCHER=$(LAUNCHER) is unknown: use local (the default) or slurm"; exit 2;; esac
	$(if $(filter slurm,$(LAUNCHER)),$(subst -m bench sweep ,-m bench launch ,$(SWEEP)) --slurm '$(SLURM)',$(SWEEP))

# the most accurate pruned model per method under BUDGET (flops:0.5, params:0.4, flops:60M, params:0.4M, latency_ms:2.5);
# winners, plan + weights and README.md go to RESULTS_DIR/<model>-<dataset>-<profile>/search/<budget>/
search: env
	@test -n "$(BUDGET)" || { echo "make search needs BUDGET=flops:0.5 (or params:0.4, flops:60M, params:0.4M, latency_ms:2.5)"; exit 2; }
	$(PY) -m bench search --model $(MODEL) --dataset $(DATASET) --profile $(if $(filter auto,$(PROFILE)),fast,$(PROFILE)) --budget '$(BUDGET)' \
		--methods $(METHODS) --device $(DEVICE) --wandb $(WANDB) $(if $(TRIALS),--trials $(TRIALS)) \
		$(SEARCH_ARGS)

# the same sweep, joined from another machine through a shared storage (PostgreSQL, journal file)
worker: env
	@test -n "$(STORAGE)" || { echo "make worker needs STORAGE=postgresql://user@host/db (the study's storage)"; exit 2; }
	@test "$(PROFILE)" != auto || { echo "make worker needs the running sweep's PROFILE (e.g. PROFILE=fast): auto may pick another profile on another machine"; exit 2; }
	$(SWEEP)

# a benchmark, not a test: training loops, DECORE's gated step, pruned-model speed -> RESULTS_DIR/perf/
perf: env
	$(PY) -m bench perf --models $(PERF_MODELS) --device $(DEVICE) $(PERF_ARGS)

# loader, bf16 + compile epochs, fp32 vs bf16 eval, gated step, torchrun (nccl), pruned latency, a short sweep;
# on a CPU-only machine the same checks in a reduced form (tiny sizes, synthetic data, gloo)
gpu-check: env
	$(PY) -m bench gpu-check --device $(DEVICE)

report: env
	$(PY) -m bench report

tables: report

# DECORE's tables (CIFAR-10: VGG-16, ResNet-56/110, GoogLeNet, DenseNet-40; ImageNet ResNet-50) from every stored
# experiment, beside the published rows; no training -> RESULTS_DIR/paper/
paper: env
	$(PY) -m bench paper

clean-env:
	rm -rf $(VENV)
