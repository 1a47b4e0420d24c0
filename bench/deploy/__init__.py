"""bench.deploy: a pruned model as it leaves the harness. Pruned files (`pruned`: plan + weights, rebuilt on
load), exports (`export`: ONNX checked against PyTorch, TorchScript), the deploy forms (`forms`: eager, BatchNorm
folded, onnxruntime), the results table's speed-up columns timed in them (`speed`) and the alignment chosen by
measurement (`align`).

May import: bench.core, bench.engine, methods, models.
"""
