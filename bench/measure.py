"""Model measurements: params, FLOPs (conv + linear multiply-accumulates, via fvcore), latency.

FLOPs follow the pruning literature: multiply-accumulates of convolution and linear layers (and
matrix products, for attention). BatchNorm, activations, pooling and residual adds are not counted.
"""
from __future__ import annotations

import statistics
import time
import warnings

import torch
import torch.nn as nn

# fvcore operator names that are multiply-accumulates of weights or activations
MAC_OPS = ("conv", "linear", "addmm", "matmul", "bmm", "einsum", "baddbmm")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _example(model: nn.Module, input_size: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    return torch.randn(batch, *input_size, device=device)


def count_flops(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> int:
    """Conv + linear MACs of one image, in eval mode (the model's mode is restored)."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, _example(model, input_size))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            by_op = analysis.by_operator()
    finally:
        model.train(was_training)
    return int(sum(v for k, v in by_op.items() if k in MAC_OPS))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32), batch_size: int = 1,
                    warmup: int = 10, repeats: int = 50, channels_last: bool = True) -> dict[str, float]:
    """Median (and p10/p90) wall time of one forward pass in ms, after warm-up, in inference mode."""
    was_training = model.training
    model.eval()
    x = _example(model, input_size, batch_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    device = x.device
    for _ in range(warmup):
        model(x)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    model.train(was_training)
    q = statistics.quantiles(times, n=10)
    return {"median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1], "batch_size": batch_size}


def profile_model(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> dict[str, int]:
    return {"params": count_params(model), "flops": count_flops(model, input_size)}
