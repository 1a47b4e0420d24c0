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
# e.g. TIMM_MATRIX_ARGS="--limit 60 --only cspnet,res2net"
TIMM_MATRIX_ARGS ?=
DEMO_DIR ?= demo-results

.PHONY: env test test-fast coverage baseline bench search worker report tables paper measure perf gpu-check timm-matrix clean-env help demo docs

help:
	@echo "targets (each builds .venv first when it is missing or pyproject.toml changed):"
	@echo "  make demo                     a two-minute tour on synthetic data (CPU): baseline, DECORE, L1, control, report, site -> DEMO_DIR"
	@echo "  make bench MODEL=resnet110 DATASET=cifar10   the main job: Optuna sweeps of METHODS under PROFILE, then the report"
	@echo "  make search BUDGET=flops:0.5  the most accurate pruned model per method under a budget (flops:60M, params:0.4, latency_ms:2.5)"
	@echo "  make worker STORAGE=postgresql://...   join a running sweep from another machine (needs an explicit PROFILE)"
	@echo "  make bench ... PROFILE=fast LAUNCHER=slurm WORKERS=8 SLURM=\"partition=gpu gpus_per_node=1 time=240\"   a SLURM job array (docs/clusters.md)"
	@echo "  make baseline                 train (or fetch from the cache) the unpruned MODEL on RECIPE"
	@echo "  make measure                  params, FLOPs and latency of MODEL"
	@echo "  make report / make tables     plots, tables, READMEs and the results site from stored results (no training)"
	@echo "  make paper                    DECORE's tables from every stored experiment beside the published rows -> RESULTS_DIR/paper/"
	@echo "  make perf                     speed benchmark of PERF_MODELS -> RESULTS_DIR/perf/"
	@echo "  make gpu-check                every CUDA path in one short run -> RESULTS_DIR/perf/gpu.md (reduced form on a CPU)"
	@echo "  make timm-matrix              every timm CNN family: groups + a random 50% trial on synthetic data -> RESULTS_DIR/timm-matrix/ (CPU, ~15 min)"
	@echo "  make docs                     the documentation site (mkdocs, strict) -> site/"
	@echo "  make test                     the test suite on every core (CPU only; builds docs/ strictly too)"
	@echo "  make test-fast                the tests not marked slow, for the edit-test loop (under 2 min here; make test runs all)"
	@echo "  make coverage                 the suite with line coverage of bench/, sweeps/, methods/, models/"
	@echo "  make env                      build .venv only;  make clean-env  remove it;  make help  this list"
	@echo "variables (current value):"
	@echo "  MODEL=$(MODEL) DATASET=$(DATASET) PROFILE=$(PROFILE) (auto|demo|test|smoke|cpu|micro|fast|paper|imagenet) METHODS=$(METHODS)"
	@echo "  TRIALS=$(TRIALS) (per method; empty: the profile's) SEEDS=$(SEEDS) WORKERS=$(WORKERS) LAUNCHER=$(LAUNCHER) (local|slurm) SLURM=$(SLURM) DEVICE=$(DEVICE) (auto|cpu|cuda|cuda:N)"
	@echo "  RECIPE=$(RECIPE) SEED=$(SEED) (make baseline)  BUDGET=$(BUDGET) SEARCH_ARGS=$(SEARCH_ARGS) (make search)"
	@echo "  STORAGE=<url> (Optuna storage; passed as BENCH_STORAGE) WANDB=$(WANDB) (auto|online|offline|off) COMPILE=$(COMPILE) (1: torch.compile)"
	@echo "  SWEEP_ARGS=$(SWEEP_ARGS) (more flags for python -m bench sweep, e.g. --control none, --pretrained)  TEST_ARGS=$(TEST_ARGS) (more flags for pytest in make test)"
	@echo "  DATA_DIR=$(DATA_DIR) RESULTS_DIR=$(RESULTS_DIR) DEMO_DIR=$(DEMO_DIR) PERF_MODELS=$(PERF_MODELS) PERF_ARGS=$(PERF_ARGS)"
	@echo "  TIMM_MATRIX_ARGS=$(TIMM_MATRIX_ARGS) (more flags for python -m bench.checks.timm_matrix: --limit SECONDS, --only FAMILIES, --list)"
	@echo "  PYTHON=$(PYTHON) (builds the venv) VENV=$(VENV)"
	@echo "every flag: $(VENV)/bin/python -m bench <command> --help; docs: docs/ (make docs)"

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# the suite on every core (pytest-xdist: one worker a core, each test's torch on its share of the cores; the tests
# that share one server or cluster run on one worker: --dist loadgroup and their xdist_group mark)
TEST_ARGS ?=
test: env
	$(PY) -m pytest -n auto --dist loadgroup tests $(TEST_ARGS)

# the edit-test loop: every test not marked slow (each test over about 5 s here carries the mark; make test runs them all)
test-fast: env
	$(PY) -m pytest -n auto --dist loadgroup -m "not slow" tests $(TEST_ARGS)

# which lines the suite runs: bench/, sweeps/, methods/, models/ -> the terminal and RESULTS_DIR/coverage.txt
coverage: env
	$(PY) -m pytest -n auto --dist loadgroup --cov=bench --cov=sweeps --cov=methods --cov=models --cov-report=term tests $(TEST_ARGS) | tee $(RESULTS_DIR)/coverage.txt; exit $${PIPESTATUS[0]}

baseline: env
	$(PY) -m bench baseline --model $(MODEL) --dataset $(DATASET) --recipe $(RECIPE) --seed $(SEED) --device $(DEVICE)

measure: env
	$(PY) -m bench measure --model $(MODEL) --device $(DEVICE)

SWEEP = $(PY) -m bench sweep --model $(MODEL) --dataset $(DATASET) --profile $(PROFILE) --methods $(METHODS) \
	--seeds $(SEEDS) --workers $(WORKERS) --device $(DEVICE) --wandb $(WANDB) \
	$(if $(TRIALS),--trials $(TRIALS)) $(if $(filter 1 yes true,$(COMPILE)),--compile) \
	$(SWEEP_ARGS)

# the sweep ends by writing its report (plots, tables, README) into RESULTS_DIR/<model>-<dataset>-<profile>-<hash>/
bench: env
	@case "$(LAUNCHER)" in local|slurm) ;; *) echo "LAUNCHER=$(LAUNCHER) is unknown: use local (the default) or slurm"; exit 2;; esac
	$(if $(filter slurm,$(LAUNCHER)),$(subst -m bench sweep ,-m bench launch ,$(SWEEP)) --slurm '$(SLURM)',$(SWEEP))

# the most accurate pruned model per method under BUDGET (flops:0.5, params:0.4, flops:60M, params:0.4M, latency_ms:2.5);
# winners, plan + weights and README.md go to RESULTS_DIR/<model>-<dataset>-<profile>-<hash>/search/<budget, e.g. flops-0.5>/
search: env
	@test -n "$(BUDGET)" || { echo "make search needs BUDGET=flops:0.5 (or params:0.4, flops:60M, params:0.4M, latency_ms:2.5)"; exit 2; }
	$(PY) -m bench search --model $(MODEL) --dataset $(DATASET) --profile $(PROFILE) --budget '$(BUDGET)' \
		--methods $(METHODS) --device $(DEVICE) --wandb $(WANDB) $(if $(TRIALS),--trials $(TRIALS)) \
		$(SEARCH_ARGS)

# the same sweep, joined from another machine through a shared storage (PostgreSQL, journal file)
worker: env
	@test -n "$(STORAGE)" || { echo "make worker needs STORAGE=postgresql://user@host/db (the study's storage)"; exit 2; }
	@test "$(PROFILE)" != auto || { echo "make worker needs the running sweep's PROFILE (e.g. PROFILE=fast): auto may pick another profile on another machine"; exit 2; }
	$(SWEEP)

# a benchmark, not a test: training loops, DECORE's gated step, pruned-model speed -> RESULTS_DIR/perf/
perf: env
	$(PY) -m bench perf --models $(PERF_MODELS) --device $(DEVICE) --compile $(PERF_ARGS)

# loader, bf16 + compile epochs, fp32 vs bf16 eval, gated step, torchrun (nccl), pruned latency, a short sweep;
# on a CPU-only machine the same checks in a reduced form (tiny sizes, synthetic data, gloo)
gpu-check: env
	$(PY) -m bench gpu-check --device $(DEVICE)

# one representative per timm CNN module, each in its own process under a time limit (one thread each)
timm-matrix: env
	OMP_NUM_THREADS=1 $(PY) -m bench.checks.timm_matrix --out $(RESULTS_DIR)/timm-matrix $(TIMM_MATRIX_ARGS)

report: env
	$(PY) -m bench report

tables: report

# DECORE's tables (CIFAR-10: VGG-16, ResNet-56/110, GoogLeNet, DenseNet-40; ImageNet ResNet-50) from every stored
# experiment, beside the published rows; no training -> RESULTS_DIR/paper/
paper: env
	$(PY) -m bench paper

# a tour in under two minutes on a 2-core CPU: the synthetic set, profile demo (one short epoch per phase), one
# DECORE and one L1 trial and the no-pruning control, the report and the results site; a rerun reads the cache
demo: env
	@start=$$(date +%s); \
	RESULTS_DIR=$(DEMO_DIR) $(PY) -m bench sweep --model resnet20 --dataset synthetic --profile demo \
		--methods decore,l1 --match none --wandb off --device $(DEVICE) && \
	RESULTS_DIR=$(DEMO_DIR) $(PY) -m bench.report.site $(DEMO_DIR) >/dev/null && \
	exp=$$(ls -d $(DEMO_DIR)/resnet20-synthetic-demo-*/ | head -1) && \
	echo "demo done in $$(( $$(date +%s) - start )) s. Where to look:" && \
	echo "  $${exp}README.md    the report: Pareto plot, table (key: docs/outputs.md), layers, agents" && \
	echo "  $${exp}index.html   the interactive page (open from disk); all experiments: $(DEMO_DIR)/index.html" && \
	echo "  $${exp}runs.csv     one row per baseline and trial" && \
	echo "next: make bench MODEL=resnet110 DATASET=cifar10 (PROFILE=auto picks what fits this machine)"

# the documentation site, built as the tests build it (broken links and anchors fail) -> site/
docs: env
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean-env:
	rm -rf $(VENV)
