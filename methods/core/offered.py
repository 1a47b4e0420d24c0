"""The channel groups a method is offered: found in the dependency graph (groups.py), then checked by removal
(verify.py). Its own module so that neither of those imports the other."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from .groups import GroupSet, find_groups, settle
from .verify import unremovable


def channel_groups(model: nn.Module, example: torch.Tensor, scope: str = "all", name: str = "model",
                   graph: tp.DependencyGraph | None = None, verify: bool = True) -> GroupSet:
    """The prunable channel groups of `model` at `scope` ("internal": inside blocks; "all": streams too).

    With `verify` (the default; removal itself needs only the ids), every group offered passed the removal
    check (methods/core/verify.py): groups whose removal breaks a construct or differs from their gate are
    excluded, naming it. A model with no group at `scope` is refused (PruningError): every method would prune
    nothing and report success.
    """
    found, streams = find_groups(model, example, scope, name, graph)
    if verify and found.groups:
        bad = unremovable(model, example, found, name)
        found = GroupSet([g for g in found.groups if g.id not in bad], {**found.excluded, **bad}, scope, found.graph)
    return settle(found, streams, name, loud=verify)
