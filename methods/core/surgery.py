"""Physical removal: a keep plan (group id -> kept units) turns a model into a smaller dense one.

A plan is JSON (model name, constructor args, input size, scope, kept units per group). A pruned model
is rebuilt from the base architecture, the plan and a state_dict (bench.deploy.pruned stores the pair).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from . import splits, timm_layers
from .constructs import construct_at
from .records import sync_attributes
from .errors import PruningError
from .groups import ChannelGroup, GroupSet, find_groups, settle

PLAN_FORMAT = 1


@dataclass
class KeepPlan:
    model: str                            # timm name
    keep: dict[str, list[int]]            # group id -> sorted kept unit indices
    units: dict[str, int]                 # group id -> mask length, to validate against the architecture
    scope: str = "all"
    model_args: dict[str, Any] = field(default_factory=dict)
    input_size: list[int] = field(default_factory=lambda: [3, 32, 32])
    format: int = PLAN_FORMAT

    def __post_init__(self) -> None:
        for gid, kept in self.keep.items():
            if not kept:
                raise ValueError(f"plan for {self.model} removes every channel of group {gid!r}: keep at least one")
            if min(kept) < 0 or max(kept) >= self.units[gid] or len(set(kept)) != len(kept):
                raise ValueError(f"plan for {self.model}: kept units {kept} of group {gid!r} are not distinct "
                                 f"indices in [0, {self.units[gid]})")

    @classmethod
    def from_masks(cls, groups: GroupSet, masks: Mapping[str, torch.Tensor], model: str, **kw: Any) -> KeepPlan:
        """From boolean keep masks (units,) per group id; groups without a mask are kept whole."""
        by_id = groups.by_id
        keep = {gid: torch.as_tensor(m).bool().nonzero().flatten().tolist() for gid, m in masks.items()}
        return cls(model, keep, {gid: by_id[gid].units for gid in keep}, groups.scope, **kw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KeepPlan:
        data = json.loads(text)
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"plan format {data.get('format')!r} is not {PLAN_FORMAT}")
        return cls(**data)


def removed_channels(group: ChannelGroup, kept_units: list[int]) -> list[int]:
    """Root-layer channels to remove: those whose unit (channel % units, for tied groups) is not kept."""
    kept = set(kept_units)
    return [c for c in range(group.channels) if c % group.units not in kept]


def apply_plan(model: nn.Module, plan: KeepPlan, example: torch.Tensor | None = None) -> nn.Module:
    """Remove, in place, every channel the plan does not keep. Returns the model."""
    example = torch.randn(1, *plan.input_size) if example is None else example
    timm_layers.fold_standardised(model)  # exact, and removing their input channels needs it
    groups = settle(*find_groups(model, example, plan.scope, name=plan.model), plan.model, loud=False)
    by_id, modules = groups.by_id, dict(model.named_modules())
    dg = groups.graph
    for gid, kept in plan.keep.items():
        group = by_id.get(gid)
        if group is None:
            raise PruningError(f"plan names group {gid!r}, which {plan.model} at scope {plan.scope!r} does not have")
        if group.units != plan.units[gid]:
            raise PruningError(f"group {gid!r} of {plan.model} has {group.units} units, the plan {plan.units[gid]}")
        removed = removed_channels(group, kept)
        if not removed:
            continue
        root = modules[gid]
        with splits.patched():
            pg = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, removed)
        if not dg.check_pruning_group(pg):
            raise PruningError(f"pruning group {gid!r} of {plan.model} would empty a layer")
        splits.track_removal(pg)
        try:
            pg.prune()
        except Exception as e:
            raise PruningError(f"cannot prune group {gid!r} of {plan.model} ({type(e).__name__}: {e})") from e
    sync_attributes(dg)
    _check_runs(model, example, plan.model)
    return model


def _check_runs(model: nn.Module, example: torch.Tensor, name: str) -> None:
    """The pruned network must run: a construct whose sizes the removal could not follow is named, not hidden."""
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def leave(m, a, o):
        if stack and stack[-1] == names.get(m):
            stack.pop()
    pre = nn.modules.module.register_module_forward_pre_hook(lambda m, a: stack.append(names.get(m)))
    post = nn.modules.module.register_module_forward_hook(leave)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    except RuntimeError as e:
        where = stack[-1] if stack and stack[-1] else ""
        layer = f"{where} ({type(model.get_submodule(where)).__name__})" if where else "the network"
        kind, path = construct_at(model, where)
        detail = str(e).splitlines()[0][:120]
        err = PruningError(f"{name}: after removal {layer} no longer fits its input ({detail}): {kind} ({path}) is "
                           "a construct this harness cannot prune")
        err.construct, err.detail = f"{kind} ({path})", detail
        raise err from e
    finally:
        pre.remove()
        post.remove()
        model.train(was_training)


def prune_model(model: nn.Module, plan: KeepPlan) -> nn.Module:
    """A pruned copy of `model` (on CPU, eval mode); `model` itself is untouched."""
    was_training = model.training
    pruned = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    for m in pruned.modules():  # copied gate hooks would apply the unpruned model's masks
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    apply_plan(pruned, plan)
    return pruned.train(was_training)


def rebuild(plan: KeepPlan, state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The pruned architecture from the base model + plan, with `state_dict` loaded when given."""
    import models  # the zoo registers the CIFAR models in timm

    model = models.create(plan.model, **plan.model_args).eval()
    apply_plan(model, plan)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
