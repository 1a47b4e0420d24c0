"""bench.checks: benchmarks of the harness itself, each writing a results folder. Speed (`perf`: training loops,
DECORE's gated step, pruned models in every deploy form; `timing`: how it times; `perf_report`: perf.md and the
comparison of two runs; `perf_summary`: a perf folder's README), every CUDA path in one run (`gpucheck`), every timm CNN family pruned once
(`timm_matrix`), and their subcommands (`commands`).

May import: every package of bench but the command line, sweeps, methods, models.
"""
