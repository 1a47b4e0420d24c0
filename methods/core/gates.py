"""Gates: multiply a group's channels by a keep mask at every gate point, so that 0 == removed.

Masks are per group: shape (units,) for the whole batch or (N, units) per sample. `set()` turns them
into one vector per gated module (expanding tied units, scattering partial coverage) once per step;
the forward hooks then do a single multiply each. For plain BatchNorm, Conv and Linear modules, whose
backward does not need their own output, the multiply is done in place (`INPLACE=True`): no new
activation tensor per gate, which is what makes the gated step cost little more than the plain one.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .groups import GatePoint, GroupSet, _out_size

# modules whose autograd backward saves their input, never their output: gating their output in place is
# exact. Exact types only: subclasses (timm's BatchNormAct2d runs an activation inside) are gated out of place.
_INPLACE_SAFE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
INPLACE = True


def _out_channels(module: nn.Module) -> int:
    size = _out_size(module)
    if not size:
        raise TypeError(f"cannot tell the output channels of {type(module).__name__}")
    return size


class _Point:
    """A gate point with its index tensors prepared once."""

    def __init__(self, gp: GatePoint, module: nn.Module, units: int, device: torch.device) -> None:
        self.size = gp.size or _out_channels(module)
        full = gp.channels == list(range(self.size))
        self.channels = None if full else torch.tensor(gp.channels, device=device)
        self.units = None if gp.units == list(range(units)) and full else torch.tensor(gp.units, device=device)
        self.dim = gp.channel_dim

    def expand(self, mask: torch.Tensor) -> torch.Tensor:
        """(…, units) mask -> (…, module channels) vector."""
        if self.units is not None:
            mask = mask[..., self.units]
        if self.channels is not None:
            vec = mask.new_ones(*mask.shape[:-1], self.size)
            vec[..., self.channels] = mask
            mask = vec
        return mask


class Gates:
    """Forward hooks that gate every group of `groups` on `model` (initially open: no multiply)."""

    def __init__(self, model: nn.Module, groups: GroupSet) -> None:
        self.groups = list(groups)
        modules = dict(model.named_modules())
        device = next(model.parameters()).device
        self._points: dict[str, list[tuple[str, _Point]]] = {}
        for g in self.groups:
            for gp in g.gate_points:
                self._points.setdefault(gp.module, []).append((g.id, _Point(gp, modules[gp.module], g.units, device)))
        self._vectors: dict[str, torch.Tensor | None] = dict.fromkeys(self._points)
        self._dims = {name: pts[0][1].dim for name, pts in self._points.items()}
        self._handles = [modules[name].register_forward_hook(self._hook(name, modules[name])) for name in self._points]

    def _hook(self, name: str, module: nn.Module):
        dim = self._dims[name]
        inplace = INPLACE and type(module) in _INPLACE_SAFE

        def hook(module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
            vec = self._vectors[name]
            if vec is None:
                return out
            ones = [1] * (out.dim() - 2)
            if dim == 1:    # (N, C, ...) outputs: (C,) or (N, C) -> broadcast over the spatial dims
                shape = (*vec.shape, *ones) if vec.dim() == 2 else (vec.shape[0], *ones)
            else:           # (N, ..., C) outputs
                shape = (vec.shape[0], *ones, vec.shape[1]) if vec.dim() == 2 else vec.shape
            vec = vec.to(out.dtype).view(shape)
            return out.mul_(vec) if inplace else out * vec
        return hook

    def set(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Set masks by group id; groups not named are open. Values: (units,) or (N, units), 0/1 or soft."""
        vectors: dict[str, torch.Tensor | None] = dict.fromkeys(self._points)
        for name, pts in self._points.items():
            for gid, point in pts:
                mask = masks.get(gid)
                if mask is None:
                    continue
                vec = point.expand(mask)
                prev = vectors[name]
                vectors[name] = vec if prev is None else prev * vec
        self._vectors = vectors

    def clear(self) -> None:
        self._vectors = dict.fromkeys(self._points)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Gates:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def gate_vs_removal(model: nn.Module, groups: GroupSet, masks: Mapping[str, torch.Tensor], pruned: nn.Module,
                    x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The core's contract on one batch: `model` gated by the keep `masks` against `pruned` (the same masks
    removed). Returns both outputs and their relative L2 difference, which must be ~0."""
    with Gates(model, groups) as gates, torch.no_grad():
        gates.set({k: torch.as_tensor(v).float() for k, v in masks.items()})
        gated = model(x)
    with torch.no_grad():
        out = pruned(x)
    return gated, out, float((gated - out).norm() / gated.norm())
