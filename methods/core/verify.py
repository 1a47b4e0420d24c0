"""The removal check: a group offered to the methods must be removable, and removing it must equal gating it.

Tracing finds a network's channel groups, but a construct can consume channels in a way the trace does not see
(a split-attention block reshaping its channels into radix parts, a self-attention block slicing heads off a
stream, a gated block splitting along the last dimension). Such a group cannot be pruned at a ratio, as the
classifier cannot: it is excluded, with the construct that stopped it named, and the rest of the network is
pruned. `channel_groups` runs this check once per architecture in a process (cached), on a CPU copy with
perturbed norms so that a wrong gate shows:

1. a seeded random half of every group's units is removed from the copy (`apply_plan`), which must run;
2. the same half, gated on the unpruned copy, must give the pruned copy's output (relative error < TOLERANCE).

When the check fails, the groups at fault are found by halving the candidate set (a few removals each, not one
per group) and excluded; the rest is checked again, so what stays offered passes as a whole.
"""
from __future__ import annotations

import copy
import hashlib

import torch
import torch.nn as nn
from .constructs import construct_at

TOLERANCE = 1e-4  # gate vs removal, relative
ROUNDS = 3        # culprit searches before every group still failing is excluded
_cache: dict[str, dict[str, str]] = {}


def perturb_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics and affine terms (and layer scales), so a wrong gate shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights/biases, layer scales, conv/linear biases
                scale = torch.rand(p.shape, generator=g) + 0.5
                p.copy_(scale if not name.endswith("bias") else (scale - 1) * 0.2)
    return model.eval()


def unremovable(model: nn.Module, example: torch.Tensor, groups, name: str) -> dict[str, str]:
    """Group id -> why it cannot be removed exactly (the construct named), for the groups of `groups`."""
    key = _key(model, example, groups, name)
    if key not in _cache:
        _cache[key] = _search(_Probe(model, example, groups, name), [g.id for g in groups])
    return dict(_cache[key])


def _key(model: nn.Module, example: torch.Tensor, groups, name: str) -> str:
    h = hashlib.sha256(f"{name}|{type(model).__qualname__}|{tuple(example.shape[1:])}|{groups.scope}".encode())
    for n, p in model.state_dict().items():
        h.update(f"{n}:{tuple(p.shape)}".encode())
    h.update("|".join(g.id for g in groups).encode())
    return h.hexdigest()


def _search(probe: _Probe, ids: list[str]) -> dict[str, str]:
    """The groups at fault. When some fail only together (no group alone, nor any half), or faults remain after
    ROUNDS searches, every group still failing is excluded: what stays offered passes as a whole."""
    bad: dict[str, str] = {}
    for round_ in range(ROUNDS + 1):
        left = [i for i in ids if i not in bad]
        why = probe(left) if left else ""
        if not why:
            return bad
        found = _culprits(probe, left) if round_ < ROUNDS else {}
        if not found:
            return bad | dict.fromkeys(left, why)
        bad.update(found)
    return bad


def _culprits(probe: _Probe, ids: list[str]) -> dict[str, str]:
    """Groups whose removal fails on its own, by halving: a set that passes holds none."""
    why = probe(ids) if ids else ""
    if not why:
        return {}
    if len(ids) == 1:
        return {ids[0]: why}
    mid = len(ids) // 2
    return _culprits(probe, ids[:mid]) | _culprits(probe, ids[mid:])


class _Probe:
    """Removes a seeded random half of the named groups from a CPU copy and compares it with the gated copy:
    "" when it runs and agrees, else why not (the construct named)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, groups, name: str) -> None:
        self.base = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
        for m in self.base.modules():  # a gated model's hooks would apply its masks
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        perturb_norms(self.base)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(2, *example.shape[1:], generator=g)
        self.groups, self.name = groups, name
        self.keep = {grp.id: sorted(torch.randperm(grp.units, generator=g)[: grp.units - grp.units // 2].tolist())
                     for grp in groups}
        self._seen: dict[tuple[str, ...], str] = {}

    def __call__(self, ids: list[str]) -> str:
        key = tuple(ids)
        if key not in self._seen:
            self._seen[key] = self._check(ids)
        return self._seen[key]

    def _check(self, ids: list[str]) -> str:
        from .gates import gate_vs_removal
        from .errors import PruningError
        from .surgery import KeepPlan, prune_model

        by_id = self.groups.by_id
        plan = KeepPlan(self.name, {i: self.keep[i] for i in ids}, {i: by_id[i].units for i in ids}, self.groups.scope,
                        input_size=list(self.x.shape[1:]))
        try:
            pruned = prune_model(self.base, plan)
        except PruningError as e:
            if hasattr(e, "construct"):
                return f"removing it breaks {e.construct}: {e.detail}"
            return str(e).removeprefix(f"{self.name}: ")
        masks = {i: torch.isin(torch.arange(by_id[i].units), torch.tensor(self.keep[i])).float() for i in ids}
        try:
            err = gate_vs_removal(self.base, self.groups, masks, pruned, self.x)[2]
        except RuntimeError as e:
            return f"gating it fails ({str(e).splitlines()[0][:120]})"
        if err < TOLERANCE:
            return ""
        kind, path = construct_at(self.base, ids[0]) if len(ids) == 1 else ("", "the network")
        where = f" in {kind} ({path})" if path != "the network" else ""
        return f"its gate differs from its removal{where}: relative error {err:.1e} (tolerance {TOLERANCE:.0e})"
