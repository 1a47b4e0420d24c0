"""A pruned model on disk: plan.json + model.pt (a state_dict), rebuilt without unpickling modules."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from methods.core import KeepPlan, PruningError, rebuild

from .errors import UserError
from .io import atomic_write, load_state_dict, save_state_dict


def save_pruned(folder: str | Path, plan: KeepPlan, model: nn.Module) -> Path:
    """Write plan.json and model.pt, each atomically."""
    folder = Path(folder)
    atomic_write(folder / "plan.json", lambda tmp: Path(tmp).write_text(plan.to_json()))
    save_state_dict(folder / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
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
