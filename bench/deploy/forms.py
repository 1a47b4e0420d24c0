"""Deployment forms of a model for latency: BatchNorm folded (eager PyTorch) and onnxruntime.

- `fold_bn`: torch.fx.experimental.optimization.fuse, PyTorch's own conv+BN (and linear+BN) folding for
  inference. It traces with torch.fx: the CIFAR ResNets (ShortcutA's scatter traces fine) and VGG fold
  completely; a model fx cannot trace is refused with one line.
- `Runner`: one callable per (form, model) taking a batch size, so `make perf` and `make gpu-check` time
  every form the same way (inference mode, warm-up, median of repeats, CUDA sync around each call).
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bench.core.errors import UserError


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every BatchNorm that follows a conv (or linear) folded into it."""
    from torch.fx.experimental.optimization import fuse

    copy_ = copy.deepcopy(model).eval()
    try:
        return fuse(copy_, inplace=True)
    except Exception as e:  # fx raises many types on untraceable control flow
        raise UserError(f"cannot fold BatchNorm of {type(model).__name__}: torch.fx cannot trace it "
                        f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time of fn() in ms, after warm-up, synchronising CUDA around every call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class TorchRunner:
    """Eager PyTorch in inference mode on a fixed random batch per batch size (memory format chosen once)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...], device: torch.device,
                 channels_last: bool = True) -> None:
        self.device, self.input_size, self.channels_last = device, tuple(input_size), channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device).to(memory_format=fmt).eval()
        self._inputs: dict[int, torch.Tensor] = {}

    def _x(self, batch: int) -> torch.Tensor:
        if batch not in self._inputs:
            x = torch.randn(batch, *self.input_size, device=self.device)
            self._inputs[batch] = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return self._inputs[batch]

    def latency_ms(self, batch: int, warmup: int = 2, repeats: int = 10) -> float:
        x = self._x(batch)
        with torch.inference_mode():
            return time_ms(lambda: self.model(x), self.device, warmup, repeats)


class OnnxRunner:
    """The model exported to ONNX (checked against PyTorch at export) in an onnxruntime CPU session;
    `unblocked` of its `convs` run outside onnxruntime's blocked layout (bench.deploy.export.blocked_convs)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...], threads: int | None = None,
                 folder: str | Path | None = None) -> None:
        from bench.deploy.export import blocked_convs, export_onnx, onnx_session

        self.input_size = tuple(input_size)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            path = Path(tmp) / "model.onnx"
            self.max_abs_diff = export_onnx(copy.deepcopy(model).cpu(), path, self.input_size)
            self.session = onnx_session(path, threads or torch.get_num_threads(), Path(tmp) / "optimized.onnx")
            self.unblocked, self.convs = blocked_convs(Path(tmp) / "optimized.onnx")
        self.name = self.session.get_inputs()[0].name
        self._inputs: dict[int, np.ndarray] = {}

    def latency_ms(self, batch: int, warmup: int = 2, repeats: int = 10) -> float:
        if batch not in self._inputs:
            self._inputs[batch] = np.random.default_rng(0).standard_normal((batch, *self.input_size), np.float32)
        feed = {self.name: self._inputs[batch]}
        return time_ms(lambda: self.session.run(None, feed), torch.device("cpu"), warmup, repeats)


def faster_channels_last(model: nn.Module, input_size: tuple[int, ...], device: torch.device, batch: int,
                         repeats: int = 3) -> bool:
    """Whether channels_last beats the contiguous layout for this (folded) model at `batch`, measured."""
    ms = {cl: TorchRunner(copy.deepcopy(model), input_size, device, cl).latency_ms(batch, 1, repeats)
          for cl in (False, True)}
    return ms[True] < ms[False]


FORMS = ("eager", "folded", "onnxruntime")


class OnnxModule(nn.Module):
    """An onnxruntime session (the model's ONNX export, `threads` threads) called like a module, so the trials'
    interleaved timing (`bench.engine.measure.speedup`) times it as it times PyTorch forms."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...], threads: int = 1) -> None:
        super().__init__()
        self.runner = OnnxRunner(model, input_size, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.runner.name: x.detach().cpu().contiguous().numpy()}
        return torch.from_numpy(self.runner.session.run(None, feed)[0])


def in_form(model: nn.Module, form: str, input_size: tuple[int, ...]) -> nn.Module:
    """`model` (eval, CPU) as deployed in `form`: eager and folded in channels_last, onnxruntime on one thread."""
    if form not in FORMS:
        raise UserError(f"deploy form {form!r} is unknown: use one of {', '.join(FORMS)}")
    model = model.cpu().eval()
    if form == "onnxruntime":
        return OnnxModule(model, input_size)
    return (fold_bn(model) if form == "folded" else model).to(memory_format=torch.channels_last)
