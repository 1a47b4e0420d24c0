"""Channel splits and slices: torch-pruning's handling, made exact for timm's CNNs.

A tensor's channels split into parts (`torch.split`, `chunk`, `split_with_sizes`) or sliced (`x[:, :c]`)
take different paths: CSP stages, Res2Net's scales, MixNet's mixed kernels, FasterNet's partial conv,
ReXNet's partial residual. torch-pruning traces these ops and maps channel indices through them, with
three gaps this module closes:

- a split's consumers are matched to its parts in the order the graph was traversed, not by which part each
  one reads (autograd's `output_nr`), and an int split's part count is taken from its consumers: the maps
  are re-made from the parts each consumer really reads (`_split_index_mapping`), with the sizes recorded
  at trace time;
- a concatenation whose input channels cannot be inferred (the space-to-depth stem of CSP-Darknet slices the
  image) crashes the graph build: such a concatenation is left unmapped, as torch-pruning does for other
  unknown sizes;
- the pruned module still splits by the sizes it was built with: records.py records the module that ran each
  split or slice and sets its sizes to the pruned values after removal. A split into equal parts (an int size
  or `chunk`) stays equal because its groups tie the parts (groups.py).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import index_mapping, shape_infer


class _Ranges:
    """Index map across a split into the parts one consumer reads (`ranges` of the split's input, in order)."""

    def __init__(self, ranges: list[tuple[int, int]], reverse: bool, tied: list[int] | None = None) -> None:
        self.ranges, self.reverse, self.tied = ranges, reverse, tied

    def __call__(self, idxs):
        out, base = [], 0
        for lo, hi in self.ranges:
            for i in idxs:
                if self.reverse and base <= i.idx < base + hi - lo and self.tied:  # the same channel of every part
                    out.extend(tp._helpers._HybridIndex(idx=i.idx - base + o, root_idx=i.root_idx) for o in self.tied)
                elif self.reverse and base <= i.idx < base + hi - lo:
                    out.append(tp._helpers._HybridIndex(idx=i.idx - base + lo, root_idx=i.root_idx))
                elif not self.reverse and lo <= i.idx < hi:
                    out.append(tp._helpers._HybridIndex(idx=i.idx - lo + base, root_idx=i.root_idx))
            base += hi - lo
        return out


def _split_index_mapping(graph: tp.DependencyGraph, node) -> None:
    """torch-pruning's split map, with each consumer mapped to the parts it reads (autograd's output_nr)."""
    sizes = getattr(node.module, "split_sizes", None)
    if node.type != tp.ops.OPTYPE.SPLIT or sizes is None or getattr(node.grad_fn, "_saved_dim", 1) != 1:
        return
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    node.module.offsets = offsets
    # an int split or chunk must stay equal: a channel removed from one part is removed from every part, so
    # whichever part a group starts from, the parts are tied (torch.split by an attribute: CSP, Res2Net)
    tied = offsets[:-1] if getattr(node.module, "int_split", False) and len(set(sizes)) == 1 else None
    for out in dict.fromkeys(node.outputs):  # unique consumers, in order
        nrs = [nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is node.grad_fn]
        ranges = [(offsets[nr], offsets[nr + 1]) for nr in sorted(set(nrs)) if nr < len(sizes)]
        if not ranges:
            continue
        fwd, back = _edges(node, out)
        for dep in fwd:
            _put(dep, 0, _Ranges(ranges, reverse=False))
        for dep in back:
            _put(dep, 2, _Ranges(ranges, reverse=True, tied=tied))


class _Blocked:
    """No channel on one side of this edge is a channel on the other: a one-channel operand broadcast over every
    channel (`ctx * gates[:, l:l + 1]`), or a reshape that regroups channels some other way. Channels of a group
    that reach it (through the `into` side, or either side when `into` is None) are noted in the graph's
    `blocked` (node -> construct), and groups.py excludes that group: removing them is not removing channels."""

    def __init__(self, graph: tp.DependencyGraph, node, construct: str, flags: bool = True) -> None:
        self.graph, self.node, self.construct, self.flags = graph, node, construct, flags

    def __call__(self, idxs):
        if idxs and self.flags:
            blocked = getattr(self.graph, "blocked", None)
            if blocked is None:
                blocked = self.graph.blocked = {}
            blocked[id(self.node)] = self.construct
        return []


def _broadcast_index_mapping(graph: tp.DependencyGraph, node) -> None:
    what = "a channel broadcast over all channels (x * g[:, i:i + 1])"
    for src in getattr(node.module, "narrow", ()):
        into, back = _edges(src, node)
        for dep in back:  # the full-width side does not reach the narrow one
            _put(dep, 0, _Blocked(graph, node, what, flags=False))
        for dep in into:  # the narrow side's channels scale every channel: not removable
            _put(dep, 2, _Blocked(graph, node, what))


def _write_index_mapping(graph: tp.DependencyGraph, node) -> None:
    """`y[:, s:e] += x` (CopySlices): channel i of x is channel s + i of y; y's own channels map one to one."""
    bounds = getattr(node.module, "bounds", None)
    if bounds is None or len(node.inputs) < 2:
        return
    src = node.inputs[1]
    rng = _WriteRange(node.module)
    into, back = _edges(src, node)
    for dep in back:
        _put(dep, 0, rng.reverse)
    for dep in into:
        _put(dep, 2, rng.forward)


class _WriteRange:
    """x's channel <-> y's channel of a write into a channel range of y, read from the op's current bounds."""

    def __init__(self, op) -> None:
        self.op = op

    def forward(self, idxs):
        return [tp._helpers._HybridIndex(idx=i.idx + self.op.bounds[0], root_idx=i.root_idx) for i in idxs]

    def reverse(self, idxs):
        lo, hi = self.op.bounds
        return [tp._helpers._HybridIndex(idx=i.idx - lo, root_idx=i.root_idx) for i in idxs if lo <= i.idx < hi]


def track_removal(pg) -> None:
    """Move the bounds of every channel-range write in pruning group `pg` by the y channels it removes
    (call before pg.prune(); torch-pruning's element-wise pruner keeps no state)."""
    removed: dict[int, tuple] = {}
    for item in pg:
        op = item.dep.target.module
        if getattr(op, "bounds", None) is not None:
            removed.setdefault(id(op), (op, set()))[1].update(int(i) for i in item.idxs)
    for op, idxs in removed.values():
        op.bounds = [b - sum(i < b for i in idxs) for b in op.bounds]


_TP_MAPS = (index_mapping._SplitIndexMapping, index_mapping._SliceIndexMapping, index_mapping._FlattenIndexMapping)


def _put(dep, slot: int, fn) -> None:
    """Set one of an edge's index maps. The maps of an edge run in slot order: on a producer -> consumer edge,
    0 the producer's side (which part of a split, which range of a slice), 1 a concatenation's offset
    (torch-pruning's), 2 the consumer's other maps (a reshape, a range write, a broadcast); on a consumer ->
    producer edge, 0 the consumer's other maps, 1 the concatenation's, 2 the producer's side. torch-pruning
    puts both sides in slot 0, so its maps left there by the first build are dropped."""
    while len(dep.index_mapping) < 3:
        dep.index_mapping.append(None)
    if slot != 0 and isinstance(dep.index_mapping[0], _TP_MAPS):
        dep.index_mapping[0] = None
    dep.index_mapping[slot] = fn


def _edges(a, b):
    """The dependencies a -> b (stored on a) and b -> a (stored on b)."""
    return [d for d in a.dependencies if d.target is b], [d for d in b.dependencies if d.target is a]


def _traced_concat_mapping(node) -> None:
    offsets = [0]
    for c in node.module.concat_sizes:
        offsets.append(offsets[-1] + c)
    node.module.offsets = offsets
    Map = index_mapping._ConcatIndexMapping
    for deps, reverse in ((node.dependencies, True), (None, False)):
        done: set[int] = set()
        for i, src in enumerate(node.inputs):
            for dep in (deps if deps is not None else src.dependencies):
                if id(dep) not in done and dep.target is (src if reverse else node):
                    dep.index_mapping[1] = Map(offset=offsets[i: i + 2], reverse=reverse)
                    done.add(id(dep))
                    break


def _channels(shape: tuple) -> int:
    return shape[1] if len(shape) >= 2 else shape[0]


class _Tile:
    """(N, k * C, ...) viewed as (N, k, C, ...) (selective-kernel and split-attention paths): input channel
    j * C + c is channel c of path j; every path's channel c is one channel downstream."""

    def __init__(self, per_path: int, paths: int, reverse: bool) -> None:
        self.per_path, self.paths, self.reverse = per_path, paths, reverse

    def __call__(self, idxs):
        H = tp._helpers._HybridIndex
        if self.reverse:
            pairs = {(int(i.idx) + j * self.per_path, int(i.root_idx)) for i in idxs for j in range(self.paths)}
        else:
            pairs = {(int(i.idx) % self.per_path, int(i.root_idx)) for i in idxs}
        return [H(idx=a, root_idx=b) for a, b in sorted(pairs)]


def _beside_product(node) -> bool:
    """An untraced view next to a matrix product of two activations (q k^T, attn v); a product with one
    input is a linear layer's weight product (F.linear on an (N, ..., C) input), which keeps the channels."""
    for nb in node.inputs + node.outputs:
        name = nb.grad_fn.name() if nb.grad_fn is not None else ""
        activations = [i for i in nb.inputs if i.inputs or isinstance(i.module, nn.Module) and i.type != tp.ops.OPTYPE.ELEMENTWISE]
        if ("mm" in name.lower() or "MatMul" in name) and len(activations) > 1:  # a weight's transpose has no inputs
            return True
    return False


def _paths_first(src: tuple, dst: tuple) -> bool:
    return len(src) >= 2 and len(dst) == len(src) + 1 and dst[0] == src[0] and dst[1] * dst[2] == src[1]


def _reshape_index_mapping(graph: tp.DependencyGraph, node) -> None:
    """A traced reshape that keeps the channel count maps one to one (a layer scale viewed as (1, C, 1, 1));
    one that splits the channels into paths first (N, k, C, ...) ties each path's channel c; others are
    blocked, as is a reshape made inside another op (torch-pruning infers those sizes from neighbours, which
    can pick the wrong neighbour, and its guesses compound across a network: minutes per group)."""
    shapes = getattr(node.module, "shapes", None)
    if node.type != tp.ops.OPTYPE.RESHAPE:
        return
    if shapes is None and not _beside_product(node):  # F.linear's own views around its weight product
        maps = (None, None)
    elif shapes is None:  # a view inside a product of two activations (attention): torch-pruning would guess
        what = f"a reshape inside a matrix product ({node.grad_fn.name() if node.grad_fn is not None else 'unknown'})"
        maps = (_Blocked(graph, node, what), _Blocked(graph, node, what))
    elif _channels(shapes[0]) == _channels(shapes[1]):
        maps = (None, None)
    elif _paths_first(*shapes):
        dst = shapes[1]
        maps = (_Tile(dst[2], dst[1], reverse=False), _Tile(dst[2], dst[1], reverse=True))
    else:
        what = f"a reshape/view of {list(shapes[0])} to {list(shapes[1])} that regroups the channels"
        maps = (_Blocked(graph, node, what), _Blocked(graph, node, what))
    for nb in node.inputs:
        into, back = _edges(nb, node)
        for dep in into:
            _put(dep, 2, maps[0])
        for dep in back:
            _put(dep, 0, maps[1])
    for nb in node.outputs:  # the first build mapped this side with torch-pruning's guess: undo it
        for dep in sum(_edges(node, nb), []):
            if isinstance(dep.index_mapping[0], _TP_MAPS):
                dep.index_mapping[0] = None


def _update_index_mapping(graph: tp.DependencyGraph) -> None:
    _original_update(graph)
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.ELEMENTWISE:
            _write_index_mapping(graph, node)
            _broadcast_index_mapping(graph, node)


def _slice_index_mapping(graph: tp.DependencyGraph, node) -> None:
    """torch-pruning's slice map, moved to the slice's far side: the slice op itself sees its input's channel
    indices, so its pruner (which counts removals below `start` and inside the range) moves both bounds, and
    only its consumers see the sliced range. torch-pruning maps on the near side, so a slice never learns of
    removals below its start and reads range indices as input indices."""
    grad_fn = node.grad_fn
    if node.type != tp.ops.OPTYPE.SLICE or getattr(grad_fn, "_saved_dim", 1) != 1:
        return
    op = node.module
    for nb in node.inputs:  # torch-pruning's map on this side is dropped
        for dep in sum(_edges(nb, node), []):
            if isinstance(dep.index_mapping[0], _TP_MAPS):
                dep.index_mapping[0] = None
    for out in node.outputs:
        fwd, back = _edges(node, out)
        for dep in fwd:
            _put(dep, 0, _SliceMap(op, reverse=False))
        for dep in back:
            _put(dep, 2, _SliceMap(op, reverse=True))


class _SliceMap:
    """Input channel <-> sliced channel of a slice op, read from its current bounds."""

    def __init__(self, op, reverse: bool) -> None:
        self.op, self.reverse = op, reverse

    def __call__(self, idxs):
        start, end, step = self.op.start, self.op.end, self.op.step
        if self.reverse:
            return [tp._helpers._HybridIndex(idx=i.idx * step + start, root_idx=i.root_idx) for i in idxs]
        return [tp._helpers._HybridIndex(idx=(i.idx - start) // step, root_idx=i.root_idx) for i in idxs
                if start <= i.idx < end and (i.idx - start) % step == 0]


_concat_index_mapping = index_mapping.update_concat_index_mapping
_original_update = index_mapping.update_index_mapping


def _safe_concat_index_mapping(graph: tp.DependencyGraph, node) -> None:
    """torch-pruning's concat map, skipped (unmapped) where an input's channels cannot be inferred; a
    concatenation whose sizes were traced is mapped by them (torch-pruning also compares them with the
    channels a consumer reads, which a slice of the result fails: DPN's blocks slice their input)."""
    if node.type == tp.ops.OPTYPE.CONCAT and getattr(node.module, "traced", False):
        return _traced_concat_mapping(node)
    if node.type == tp.ops.OPTYPE.CONCAT and node.module.concat_sizes is None:
        chs = [shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]
        if any(c is None for c in chs):
            return
    _concat_index_mapping(graph, node)


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """torch-pruning's index maps with this module's split and concat maps."""
    with mock.patch.object(index_mapping, "update_split_index_mapping", _split_index_mapping), \
            mock.patch.object(index_mapping, "update_concat_index_mapping", _safe_concat_index_mapping), \
            mock.patch.object(index_mapping, "update_slice_index_mapping", _slice_index_mapping), \
            mock.patch.object(index_mapping, "update_reshape_index_mapping", _reshape_index_mapping), \
            mock.patch.object(index_mapping, "update_index_mapping", _update_index_mapping):
        yield


