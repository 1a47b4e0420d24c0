"""Channel groups from torch-pruning's dependency graph.

A group is a set of coupled channels that are kept or removed together: a block-internal conv's
outputs, a residual stream shared by all blocks of a stage, a depthwise chain. A group's id is the
name of its root layer (stable across rebuilds of the same architecture). Every group records its
*gate points*: the modules whose outputs carry its channels after normalisation, where multiplying
by 0 is exactly removing the channel (DESIGN.md section 4). Channels reached through a concatenation
keep their offsets (DenseNet, Inception); root channels that torch-pruning can only remove together (GhostNet's
primary and cheap halves) share one mask unit, like the conv groups of a grouped convolution.
"""
from __future__ import annotations

import functools
import math
import logging
import warnings
from dataclasses import dataclass, field
from unittest import mock

import torch
import torch.nn as nn
import torch_pruning as tp

from . import records as records_mod
from . import splits, timm_layers
from .errors import PruningError
from .shortcut import CUSTOM_PRUNERS

log = logging.getLogger(__name__)
SCOPES = ("internal", "all")
_NORMS = (nn.modules.batchnorm._BatchNorm,)
_CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass
class GatePoint:
    """Multiply `module`'s output channels `channels` by mask units `units` (the rest untouched)."""
    module: str
    channels: list[int]
    units: list[int]
    channel_dim: int  # 1 for conv/BN outputs (N, C, ...), -1 for linear outputs (N, ..., C)
    size: int = 0     # the module's output channels, where the module does not say (an activation module)


@dataclass
class ChannelGroup:
    id: str                   # root layer name
    name: str                 # what a person reads in a table
    kind: str                 # "internal" or "stream" (channels that pass through a residual add)
    channels: int             # channels of the root layer
    tie: int = 1              # conv groups the mask is repeated over (grouped convolutions)
    producers: list[GatePoint] = field(default_factory=list)    # every layer whose output channels are removed
    gate_points: list[GatePoint] = field(default_factory=list)  # the subset whose outputs are multiplied
    layers: list[str] = field(default_factory=list)      # every layer the group touches

    @property
    def units(self) -> int:
        """Length of the keep mask: one entry per independent channel."""
        return self.channels // self.tie


@dataclass
class GroupSet:
    """The channel groups of one model, in graph order, and the ones left out with their reasons."""
    groups: list[ChannelGroup]
    excluded: dict[str, str]
    scope: str
    graph: tp.DependencyGraph

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, gid: str) -> ChannelGroup:
        return self.by_id[gid]

    @functools.cached_property
    def by_id(self) -> dict[str, ChannelGroup]:
        return {g.id: g for g in self.groups}


def build_graph(model: nn.Module, example: torch.Tensor, name: str = "model") -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    records: dict = {}
    outputs: dict = {}
    try:
        with torch.enable_grad(), warnings.catch_warnings(), splits.patched():
            warnings.simplefilter("ignore")
            with records_mod.recording(records, outputs):
                dg = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                           customized_pruners={**CUSTOM_PRUNERS, **timm_layers.CUSTOM_PRUNERS})
            records_mod.attach(dg, records)
            dg.output_modules = outputs
            tp.dependency.index_mapping.update_index_mapping(dg)
            return dg
    except Exception as e:
        raise PruningError(f"cannot trace the dependency graph of {name} ({type(e).__name__}: {e}); "
                           "this model cannot be pruned structurally") from e
    finally:
        model.train(was_training)


def find_groups(model: nn.Module, example: torch.Tensor, scope: str = "all", name: str = "model",
                graph: tp.DependencyGraph | None = None) -> tuple[GroupSet, int]:
    """The channel groups of `model` at `scope` before the removal check, and how many stream groups the scope
    left out (for the refusal's message). `methods.core.channel_groups` is what methods call."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is unknown: use one of {', '.join(SCOPES)}")
    dg = graph or build_graph(model, example, name)
    names = {m: n for n, m in model.named_modules()}
    classifier = _classifier(model)
    groups, excluded, streams = [], {}, 0
    ignored = [classifier] if classifier is not None else []
    for tp_group in _all_groups(dg, ignored):
        root = tp_group[0].dep.target.module
        g, reason = _describe(dg, tp_group, names, root)
        if getattr(dg, "blocked", None):  # set while torch-pruning traversed this group (splits.py)
            reason, dg.blocked = reason or f"channels reach {next(iter(dg.blocked.values()))}", {}
        reason = reason or _empties_at_half(dg, g, root, names)
        if reason:
            excluded[g.id] = reason
        elif scope == "all" or g.kind == "internal":
            groups.append(g)
        else:
            streams += 1
    return GroupSet(groups, excluded, scope, dg), streams


def settle(found: GroupSet, streams: int, name: str, loud: bool = True) -> GroupSet:
    """`found` as offered: its exclusions logged (a warning when `loud`), refused (PruningError) when no group is
    left, since every method would prune nothing and report success."""
    if found.excluded:
        listing = "; ".join(f"{gid} ({why})" for gid, why in found.excluded.items())
        log.log(logging.WARNING if loud else logging.DEBUG,  # removal finds the groups again: said once
                "%s: %d channel groups cannot be gated exactly and are left unpruned: %s", name, len(found.excluded),
                listing)
    if not found.groups:
        raise PruningError(_nothing_to_prune(name, found.scope, streams, found.excluded))
    return found


def _empties_at_half(dg: tp.DependencyGraph, g: ChannelGroup, root: nn.Module, names: dict) -> str:
    """Why removing half the units of `g` (every second one, or either contiguous half) would empty a layer (a
    small map inside a selective-kernel or split-attention block, a small part of an unequal split), or ""."""
    if g.units < 2:
        return f"one mask unit ({g.channels} channels tied {g.tie} ways): nothing to remove at any ratio"
    half = g.units // 2  # every second unit, the first half, the second half (a split's parts are ranges)
    for drop in (lambda u: u % 2 == 1, lambda u: u < half, lambda u: u >= g.units - half):
        removed = [c for c in range(g.channels) if drop(c % g.units)]
        with splits.patched():
            pg = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, removed)
        if not dg.check_pruning_group(pg):
            return _emptied(dg, pg, names)
    return ""


def _emptied(dg: tp.DependencyGraph, pg, names: dict) -> str:
    for it in pg:
        module = it.dep.target.module
        pruner = dg.get_pruner_of_module(module)
        size = None
        if isinstance(module, nn.Module) and pruner is not None:
            out = dg.is_out_channel_pruning_fn(it.dep.handler)
            size = pruner.get_out_channels(module) if out else pruner.get_in_channels(module)
        if size and len({int(i) for i in it.idxs}) >= size:
            return f"too small to prune at a ratio: removing half its units can empty {names.get(module, module)}"
    return "too small to prune at a ratio: removing half its units can empty a layer (a small split part or map)"


def _nothing_to_prune(name: str, scope: str, streams: int, excluded: dict[str, str]) -> str:
    if streams:
        return (f"{name} has nothing to prune at scope {scope!r}: all {streams} of its prunable channel groups "
                "carry a residual stream; use scope all (--scope all)")
    if excluded:
        gid, why = next(iter(excluded.items()))
        return (f"{name} has nothing to prune: all {len(excluded)} channel groups are excluded (e.g. {gid}: {why}); "
                "choose another model")
    return f"{name} has no prunable conv or linear layer besides its classifier: choose another model"


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
        linears = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        return linears[-1] if linears else head
    leaves = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return leaves[-1] if leaves else None


def _is_join(dg: tp.DependencyGraph, op: tp.ops._ElementWiseOp) -> bool:
    """An element-wise op that adds two tensors: `a + b`, or an in-place `x += y` on a view (timm's GhostNet
    adds its shortcut onto a slice, which autograd records as CopySlices; an in-place product on a view
    would be counted too, which only makes the group a stream)."""
    grad_fn = str(op._grad_fn)
    return "Add" in grad_fn or ("CopySlices" in grad_fn and len(dg.module2node[op].inputs) > 1)


class _PathGroup(tp.dependency.group.Group):
    """torch-pruning's Group, also keeping every (layer, handler, channel, root channel) it merges away."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[tuple[object, object, list]] = []

    def add_and_merge(self, dep, idxs):
        self.paths.append((dep.target, dep.handler, idxs))
        super().add_and_merge(dep, idxs)


def _all_groups(dg: tp.DependencyGraph, ignored: list[nn.Module]) -> list:
    """dg.get_all_groups, with each group's traversal paths kept (`.paths`, see `coupled_channels`)."""
    with mock.patch.object(tp.dependency.graph, "Group", _PathGroup), splits.patched():
        return list(dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)))


def coupled_channels(tp_group, channels: int) -> list[list[int]]:
    """The root's channels that torch-pruning removes together: classes of size > 1 (sorted), else [].

    Two root channels are coupled when two paths of the dependency graph reach the same channel of a
    layer from them, e.g. GhostNet's cheap branch x2 = depthwise(x1), concatenated with x1 onto a residual
    stream: stream channels j and j + width/2 both lead to x1's channel j, so removing one removes both.
    torch-pruning's group keeps only the first path's root channel per layer channel; the paths come from
    its traversal before it merges them (`_all_groups`).
    """
    parent = list(range(channels))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    first: dict[tuple, int] = {}
    for target, handler, idxs in getattr(tp_group, "paths", ()):
        for hi in idxs:
            key = (id(target), handler, int(hi.idx))
            r = int(hi.root_idx)
            if key in first:
                parent[find(r)] = find(first[key])
            else:
                first[key] = r
    classes: dict[int, list[int]] = {}
    for c in range(channels):
        classes.setdefault(find(c), []).append(c)
    return sorted(c for c in classes.values() if len(c) > 1)


def _coupling_tie(classes: list[list[int]], channels: int) -> tuple[int, str]:
    """Coupled root channels as a tie (channel c and c + k * units share a mask unit), or why they are not one."""
    if not classes:
        return 1, ""
    tie = len(classes[0])
    units = channels // tie
    modular = channels % tie == 0 and len(classes) == units and all(
        cls == [cls[0] + k * units for k in range(tie)] for cls in classes)
    if modular:
        return tie, ""
    return 1, f"channels coupled unevenly through a concatenation (e.g. {classes[0][:4]} are removed together)"


def _describe(dg: tp.DependencyGraph, tp_group, names: dict, root: nn.Module) -> tuple[ChannelGroup, str]:
    """Turn a torch-pruning group into a ChannelGroup, or give the reason it cannot be gated exactly."""
    root_name = names[root]
    channels = dg.get_pruner_of_module(root).get_out_channels(root)
    producers: dict[nn.Module, tuple[list[int], list[int]]] = {}
    layers, reasons, conv_groups, residual, concat = [], [], [], False, False
    for item in tp_group:
        module, handler = item.dep.target.module, item.dep.handler
        if isinstance(module, tp.ops._ElementWiseOp):
            residual |= _is_join(dg, module)
        concat |= isinstance(module, tp.ops._ConcatOp)
        concat |= getattr(module, "shapes", None) is not None and splits._paths_first(*module.shapes)  # paths tie too
        name = names.get(module)
        if name is None:
            continue  # graph-only ops and unwrapped parameters (layer scale, tokens) follow their group
        layers.append(name)
        if isinstance(module, _CROSS_CHANNEL_NORMS):
            reasons.insert(0, f"normalised across channels by {type(module).__name__} {name}")
        elif "attention" in type(module).__name__.lower() or _inside_attention(name, dg.model):
            reasons.append(f"attention layer {name}")
        if isinstance(module, nn.Conv2d) and 1 < module.groups < module.out_channels:
            conv_groups.append(module.groups)
        if dg.is_out_channel_pruning_fn(handler):
            idx = [int(i) for i in item.idxs]
            root_idx = [int(i) for i in getattr(item, "root_idxs", item.idxs)]
            old = producers.get(module, ([], []))
            producers[module] = (old[0] + idx, old[1] + root_idx)
    reason = reasons[0] if reasons else ""
    tie = max(conv_groups, default=1)
    parts = _equal_parts(tp_group, channels)
    if parts:  # each part of an equal split, and each conv group inside a part, keeps the same channels
        periods = parts + [m.out_channels // m.groups for m in map(dg.model.get_submodule, layers)
                           if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels]
        tie = channels // math.gcd(*periods)
    elif tie > 1 and (any(tie % g for g in conv_groups) or channels % tie):
        reason = reason or f"grouped convolutions with incompatible group counts {sorted(set(conv_groups))}"
    if concat and not reason and parts:  # the split's tie must already remove every coupled class at once
        units = channels // tie
        uneven = [c for c in coupled_channels(tp_group, channels) if len({r % units for r in c}) > 1]
        reason = f"channels coupled across the parts of a split (e.g. {uneven[0][:4]})" if uneven else ""
    elif concat and not reason:  # paths that part and meet again at shifted offsets go through a concatenation
        coupled, why = _coupling_tie(coupled_channels(tp_group, channels), channels)
        if coupled > 1 and tie > 1 and coupled != tie:
            why = f"channels tied both by grouped convolutions ({tie}) and by a concatenation ({coupled})"
        reason, tie = why, max(tie, coupled)
    # a residual stream: an add that joins the outputs of several layers (a bias add alone does not count)
    joined = [m for m in producers if not isinstance(m, _NORMS)]
    kind = "stream" if residual and len(joined) > 1 else "internal"
    units = channels // tie
    maps = {m: GatePoint(names[m], idx, [r % units for r in root_idx], -1 if isinstance(m, nn.Linear) else 1)
            for m, (idx, root_idx) in producers.items()}
    gate_points = [] if reason else _gate_points(dg, maps, names)
    if not reason and not gate_points:
        reason = "a constant is added to its channels after the layers that make them, outside any module"
    name = root_name if kind == "internal" else f"{root_name} (stream of {len(producers)} layers)"
    group = ChannelGroup(root_name, name, kind, channels, tie, list(maps.values()), gate_points, layers)
    return group, reason


def _equal_parts(tp_group, channels: int) -> list[int]:
    """Part sizes of the splits into equal parts (`torch.split(x, int)`, `chunk`, equal explicit sizes) that
    this group's root channels go through one to one (a root inside one part is tied by the split's map)."""
    sizes = []
    for item in tp_group:
        op = item.dep.target.module
        if not getattr(op, "equal_parts", False) or len(op.split_sizes) < 2:
            continue
        idx = [int(i) for i in item.idxs]
        root = [int(i) for i in getattr(item, "root_idxs", item.idxs)]
        if idx != root or sum(op.split_sizes) != channels:
            continue  # a root inside one part: an int split's map ties the parts (splits.py); explicit sizes
            # follow any removal, and tying them only kept parts from emptying
        sizes.append(op.split_sizes[0])
    return sizes


def _inside_attention(name: str, model: nn.Module) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = model.get_submodule(".".join(parts[:i]))
        if "attention" in type(parent).__name__.lower() or isinstance(parent, nn.MultiheadAttention):
            return True
    return False


def _gate_points(dg, maps: dict[nn.Module, GatePoint], names: dict) -> list[GatePoint]:
    """Norm layers gate their own output; a conv/linear is gated where no norm of the group follows it.
    Where a constant is added after that point (HGNet's learnable affine `s * x + b`, MetaFormer's StarReLU),
    a zero would not stay zero: the gate moves to the module that returns the shifted channels."""
    norms = {m for m in maps if isinstance(m, _NORMS)}
    points = []
    for module, point in maps.items():
        if not isinstance(module, _NORMS):
            outs = dg.module2node[module].outputs
            if len(outs) == 1 and outs[0].module in norms:
                continue  # its normalisation is gated instead
        moved = _past_constants(dg, module)
        if moved is None:
            return []
        if moved is not module:
            point = GatePoint(names[moved], point.channels, point.units, point.channel_dim, _out_size(module))
        points.append(point)
    return points


def _out_size(module: nn.Module) -> int:
    for attr in ("out_channels", "num_features", "out_features", "channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return 0


def _past_constants(dg, module: nn.Module) -> nn.Module | None:
    """`module`, or the module whose output is the end of the element-wise chain after it when that chain adds
    a constant (a one-input add or subtract); None where no module returns that output."""
    node, last, shifted = dg.module2node[module], None, False
    while len(node.outputs) == 1:
        nxt = node.outputs[0]
        others = [i for i in nxt.inputs if i is not node and i.type != tp.ops.OPTYPE.PARAMETER]
        if not isinstance(nxt.module, tp.ops._ElementWiseOp) or others:
            break
        fn = nxt.grad_fn.name() if nxt.grad_fn is not None else ""
        shifted |= "Add" in fn or "Sub" in fn
        node = nxt
        if shifted:
            last = node
    if last is None:
        return module
    return getattr(dg, "output_modules", {}).get(last.grad_fn)


def count_units(groups: GroupSet) -> int:
    return sum(g.units for g in groups)


def describe(groups: GroupSet) -> str:
    kinds = {k: sum(g.kind == k for g in groups) for k in ("internal", "stream")}
    return (f"{len(groups)} groups ({kinds['internal']} internal, {kinds['stream']} streams), "
            f"{count_units(groups)} mask units, {len(groups.excluded)} excluded")
