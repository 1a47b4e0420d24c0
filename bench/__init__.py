"""decore-bench: the harness around methods/ (pruning methods) and models/ (CIFAR networks, timm).

The flow, one package each: data and a trained baseline (`bench.engine`) -> a pruned model leaving the harness
(`bench.deploy`) -> a trial and its row (`bench.trial`) -> sweeps of trials (`sweeps`) -> tables, figures and the
site from stored rows (`bench.report`); `bench.checks` benchmarks the harness itself and `bench.cli` is the
command line. `bench.core` holds what all of them stand on.

LAYERS declares who may import whom: a module may import its own layer and the layers below it, never one
above (tests/test_layers.py reads every import, the lazy ones in functions too, and fails on one that goes
up, and on any circle between modules).
"""
import warnings

# lowest first; a name stands for that module and everything under it, the longest name that matches decides
LAYERS: tuple[tuple[str, ...], ...] = (
    ("methods", "models"),                      # pruning methods and networks: nothing of bench or sweeps
    ("bench.core",),                            # errors, io, env, faults, the engine's version
    ("bench.engine",),                          # data, recipes, training, torchrun, measurement, baselines, W&B
    ("bench.deploy",),                          # pruned files, export, deploy forms, alignment
    ("bench.trial",),                           # the trial, the scratch controls, the results table, retime
    ("sweeps.profile", "sweeps.config", "sweeps.plan"),  # what a sweep is and what it will cost, before it runs
    ("bench.report",),                          # tables, figures, paper tables and the site from stored rows
    ("sweeps",),                                # running sweeps: studies, storage, search, SLURM, status
    ("bench.checks",),                          # make perf, make gpu-check, make timm-matrix
    ("bench.cli", "bench.__main__", "bench"),   # the command line
)

# fvcore's import path triggers torch's jit-script deprecation notice; it is not ours to fix
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
