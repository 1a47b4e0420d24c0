"""Deployable files of a pruned model: safetensors weights and an ONNX graph checked by onnxruntime.

A finished trial folder (and a search winner's folder) holds plan.json + model.pt. `export_folder` adds,
beside them:
- model.safetensors: the pruned model's state_dict in timm's file convention (no pickle anywhere);
  `load_exported(folder)` rebuilds the model from plan.json + model.safetensors alone.
- model.onnx: opset `OPSET`, batch dimension dynamic, input "input" (N, C, H, W) float32, output "logits".
  At export time onnxruntime runs it on a random batch and its outputs must equal PyTorch's within
  |onnx - torch| <= ATOL + RTOL * |torch| elementwise; otherwise the export fails with one line.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from methods.core import KeepPlan, PruningError, rebuild

from bench.core.errors import UserError
from bench.core.io import atomic_write, load_state_dict

OPSET = 18
RTOL, ATOL = 1e-4, 1e-4    # fp32 ONNX vs fp32 PyTorch; measured differences are ~1e-6 (tests/test_export.py)
CHECK_BATCH = 4
WEIGHTS_NAME, ONNX_NAME = "model.safetensors", "model.onnx"
FORMATS = ("onnx", "safetensors")


class ExportError(UserError):
    """An export that would not be faithful (ONNX outputs differ from PyTorch's) or cannot be written."""


# ---------------------------------------------------------------------------------------------- safetensors

def save_safetensors(path: str | Path, model: nn.Module) -> Path:
    """The state_dict as safetensors (contiguous CPU copies: safetensors refuses shared or strided storage)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def read_plan(folder: str | Path) -> KeepPlan:
    folder = Path(folder)
    try:
        return KeepPlan.from_json((folder / "plan.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{str(folder)!r} holds no plan.json: pass a finished trial folder "
                        "(RESULTS_DIR/<experiment>/trials/<method>-<hash>/)") from None
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{str(folder / 'plan.json')!r} is not a valid keep plan ({e}): rewrite it") from None


def load_exported(folder: str | Path) -> tuple[KeepPlan, nn.Module]:
    """plan.json + model.safetensors -> (plan, pruned model in eval mode); nothing is unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    plan = read_plan(folder)
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise UserError(f"{str(folder)!r} holds no {WEIGHTS_NAME}: run `python -m bench export {folder}` first")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{str(path)!r} is not a readable safetensors file ({e}): export it again") from None
    return plan, _rebuild(plan, state, folder)


def _rebuild(plan: KeepPlan, state: dict[str, torch.Tensor], folder: Path) -> nn.Module:
    try:
        return rebuild(plan, state).eval()
    except (RuntimeError, PruningError) as e:
        raise UserError(f"weights in {str(folder)!r} do not match its plan ({str(e).splitlines()[0][:160]})") from None


def load_trial_model(folder: str | Path) -> tuple[KeepPlan, nn.Module]:
    """A trial folder's model: from model.safetensors when present, else from model.pt (weights_only)."""
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_file():
        return load_exported(folder)
    plan = read_plan(folder)
    if not (folder / "model.pt").is_file():
        raise UserError(f"{str(folder)!r} holds neither model.pt nor {WEIGHTS_NAME}: is the trial finished?")
    return plan, _rebuild(plan, load_state_dict(folder / "model.pt"), folder)


# ---------------------------------------------------------------------------------------------- ONNX

def export_onnx(model: nn.Module, path: str | Path, input_size: Iterable[int], opset: int = OPSET,
                seed: int = 0) -> float:
    """Write `model` (eval mode, CPU, fp32) as ONNX, run it in onnxruntime on a random batch and compare.

    Returns the largest absolute difference; raises ExportError when it exceeds ATOL + RTOL * |torch|.
    """
    model = model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    x = torch.randn(CHECK_BATCH, *input_size, generator=torch.Generator().manual_seed(seed))
    path = Path(path)
    atomic_write(path, lambda tmp: _onnx_export(model, x, tmp, opset))
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path, x.numpy())
    diff = abs(got - expected)
    worst = float(diff.max())
    bad = diff > ATOL + RTOL * abs(expected)
    if bad.any():
        raise ExportError(f"{path}: onnxruntime output differs from PyTorch by up to {worst:.2e} "
                          f"({int(bad.sum())} of {bad.size} values beyond atol {ATOL:g} + rtol {RTOL:g})")
    return worst


def _onnx_export(model: nn.Module, x: torch.Tensor, path: str, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False,
                                        external_data=False)
        except Exception as e:  # the exporter raises many types; one line is what the user needs
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__} "
                              f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
        program.save(path)


class _quiet:
    """Silence chatty loggers (the exporter prints progress lines) for a block."""

    def __init__(self, *names: str) -> None:
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self) -> None:
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


def onnx_session(path: str | Path, threads: int | None = None, optimized: str | Path | None = None):
    """An onnxruntime CPU session with every graph optimisation on (BN folding, conv + activation fusion,
    the blocked NCHWc layout); with `optimized`, the optimised graph is written there (for `blocked_convs`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if optimized:
        opts.optimized_model_filepath = str(optimized)
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def blocked_convs(optimized: str | Path) -> tuple[int, int]:
    """(convs outside the blocked layout, all convs) of an optimised onnxruntime graph. On x86 CPUs onnxruntime
    runs a conv in its blocked NCHWc layout (channel blocks of 8 or 16, the SIMD width) when its channel counts
    allow; the others run the plain NCHW kernel with layout reorders around them, the runtime's cost of odd widths."""
    import onnx

    convs = [n for n in onnx.load(str(optimized)).graph.node if n.op_type in ("Conv", "FusedConv")]
    return sum(n.domain != "com.microsoft.nchwc" for n in convs), len(convs)


def run_onnx(path: str | Path, x, session=None):
    session = session or onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# ---------------------------------------------------------------------------------------------- folders

def export_model(folder: str | Path, plan: KeepPlan, model: nn.Module,
                 formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write the requested formats of `model` (the pruned model of `plan`) into `folder`."""
    folder = Path(folder)
    formats = tuple(formats)
    out: dict[str, Path] = {}
    if "safetensors" in formats:
        out["safetensors"] = save_safetensors(folder / WEIGHTS_NAME, model)
    if "onnx" in formats:
        export_onnx(model, folder / ONNX_NAME, plan.input_size)
        out["onnx"] = folder / ONNX_NAME
    return out


def export_folder(folder: str | Path, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Export a finished trial (or search winner) folder in place: model.safetensors and/or model.onnx.

    The budgeted search calls this on each winner's folder, so winners are deployable by default.
    """
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UserError(f"export format(s) {unknown or formats} unknown: use onnx, safetensors or both")
    plan, model = load_trial_model(folder)
    return export_model(folder, plan, model, formats)
