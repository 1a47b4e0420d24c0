"""bench.checks: benchmarks of the harness itself, each writing a results folder. Speed (`perf`: training loops,
DECORE's gated step, pruned models in every deploy form), every CUDA path in one run (`gpucheck`) and every timm
CNN family pruned once (`timm_matrix`).

May import: every package of bench but the command line, sweeps, methods, models.
"""
