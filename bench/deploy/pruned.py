"""A pruned model on disk: plan.json + model.pt (a state_dict), rebuilt without unpickling modules.

With `export=True` (what a budgeted search's winners get) the deployable files are written beside them:
model.safetensors and model.onnx (see bench.deploy.export).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from methods.core import KeepPlan, PruningError, rebuild

from bench.core.errors import UserError
from bench.core.io import atomic_write, load_state_dict, save_state_dict


def save_pruned(folder: str | Path, plan: KeepPlan, model: nn.Module, export: bool = False) -> Path:
    """Write plan.json and model.pt, each atomically; with `export`, also model.safetensors and model.onnx.

    A failed ONNX check is logged, not raised: the plan and weights are saved either way, and
    `python -m bench export FOLDER` repeats the export with its one-line error.
    """
    folder = Path(folder)
    atomic_write(folder / "plan.json", lambda tmp: Path(tmp).write_text(plan.to_json()))
    save_state_dict(folder / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if export:
        from bench.deploy.export import ExportError, export_model

        try:
            export_model(folder, plan, model)
        except ExportError as e:
            logging.getLogger(__name__).warning("%s: not exported (%s)", folder, e)
    return folder


def load_pruned(folder: str | Path) -> tuple[KeepPlan, nn.Module]:
    """Rebuild a pruned model saved by `save_pruned` (weights loaded with weights_only=True)."""
    folder = Path(folder)
    try:
        plan = KeepPlan.from_json((folder / "plan.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{str(folder)!r} holds no plan.json: pass a folder written by save_pruned") from None
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{str(folder / 'plan.json')!r} is not a valid keep plan ({e}): rewrite it") from None
    state = load_state_dict(folder / "model.pt")
    try:
        return plan, rebuild(plan, state)
    except (RuntimeError, PruningError) as e:
        raise UserError(f"pruned model in {str(folder)!r} does not match its plan ({str(e).splitlines()[0][:160]})") from None
