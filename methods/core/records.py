"""What ran each channel split or slice, recorded while tracing, and kept true after removal (see splits.py).

The pruned module still splits by the sizes it was built with (`self.width`, `self.splits`, `self.expand_chs // 2`,
`x[:, :self.in_channels]`): the module that ran each split or slice is recorded while the graph is traced
(`recording`, attached to the graph by `attach`), and after removal its integer attributes that held a part size,
the total or a slice bound are set to the pruned values (`sync_attributes`)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode


_SPLITS = {"split", "chunk", "split_with_sizes", "tensor_split", "unsafe_split"}


_CATS = {"cat", "concat", "concatenate"}


_RESHAPES = {"reshape", "view", "flatten", "unflatten"}


_BINARY = {"mul", "__mul__", "__rmul__", "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "div", "__truediv__"}


_INT_BOUND = 2 ** 62  # a slice without an end (`x[:, c:]`) records INT64_MAX


class _Recorder(TorchFunctionMode):
    """Records the module that ran each channel split or slice, and the part sizes (N, C, ...) tensors got."""

    def __init__(self, stack: list[nn.Module], records: dict) -> None:
        super().__init__()
        self.stack, self.records = stack, records
        self.views: dict[int, tuple] = {}  # channel slices taken in this forward (tensor, start, end), by id

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if self.stack and name in _CATS and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            tensors = args[0] if args else kwargs["tensors"]
            if getattr(out.grad_fn, "_saved_dim", None) == 1 and all(t.requires_grad for t in tensors):
                self.records.setdefault(out.grad_fn, (self.stack[-1], "cat", [int(t.shape[1]) for t in tensors]))
        elif name in _RESHAPES and isinstance(out, torch.Tensor) and out.grad_fn is not None and args \
                and isinstance(args[0], torch.Tensor):
            self.records.setdefault(out.grad_fn, (self.stack[-1] if self.stack else None, "reshape",
                                                  (tuple(args[0].shape), tuple(out.shape))))
        elif name in _BINARY and isinstance(out, torch.Tensor) and out.grad_fn is not None and out.dim() >= 2:
            narrow = [a.grad_fn for a in args[:2] if isinstance(a, torch.Tensor) and a.grad_fn is not None
                      and a.dim() >= 2 and a.shape[1] == 1 and out.shape[1] > 1]
            if narrow:
                self.records.setdefault(out.grad_fn, (self.stack[-1] if self.stack else None, "broadcast", narrow))
        elif self.stack and _inplace(name) and args and isinstance(args[0], torch.Tensor):
            self._record_slice_write(name, args)
        elif self.stack and (name in _SPLITS or name == "__getitem__"):
            parts = out if isinstance(out, (tuple, list)) else (out,)
            first = parts[0] if parts else None
            fn = getattr(first, "grad_fn", None)
            is_part = fn is not None and (name in _SPLITS or type(fn).__name__ == "SliceBackward0")  # not x[:, 0]
            if isinstance(first, torch.Tensor) and is_part and getattr(fn, "_saved_dim", None) == 1:
                sizes = [int(p.shape[1]) for p in parts] if name in _SPLITS else None
                self.records.setdefault(first.grad_fn, (self.stack[-1], "split" if sizes else "slice", sizes))
                if name == "__getitem__":
                    self.views[id(first)] = (first, first.grad_fn._saved_start, first.grad_fn._saved_end)
        return out

    def _record_slice_write(self, name: str, args) -> None:
        """`y[:, s:e] += x` (and `y[:, s:e] = x`): the CopySlices node that writes x into channels s:e of y."""
        if name == "__setitem__":
            target, bounds = args[0], _channel_slice(args[1])
        else:
            view = self.views.get(id(args[0]))
            target, bounds = (args[0]._base, view[1:]) if view is not None and view[0] is args[0] else (None, None)
        fn = getattr(target, "grad_fn", None)
        if bounds is not None and fn is not None and type(fn).__name__ == "CopySlices":
            self.records.setdefault(fn, (self.stack[-1], "write", bounds))


def _inplace(name: str) -> bool:
    return name == "__setitem__" or (name.endswith("_") and not name.startswith("_")) or name.startswith("__i")


def _channel_slice(index) -> tuple[int, int] | None:
    """(start, end) of an index that slices dim 1 only with step 1 (`[:, s:e]`, `[:, s:e, ...]`), else None."""
    if not isinstance(index, tuple) or len(index) < 2 or index[0] != slice(None):
        return None
    ch = index[1]
    if not isinstance(ch, slice) or ch.step not in (None, 1) or any(i not in (slice(None), Ellipsis) for i in index[2:]):
        return None
    return (ch.start or 0, _INT_BOUND * 2 if ch.stop is None else ch.stop)


@contextlib.contextmanager
def recording(records: dict, outputs: dict | None = None) -> Iterator[None]:
    """While active, every channel split/slice run inside a module is recorded into `records` (by grad_fn),
    and `outputs` maps each module output's grad_fn to the innermost module that returned it."""
    stack: list[nn.Module] = []
    outputs = {} if outputs is None else outputs

    def leave(module: nn.Module, args, out) -> None:
        if stack and stack[-1] is module:
            stack.pop()
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            outputs.setdefault(out.grad_fn, module)
    pre = nn.modules.module.register_module_forward_pre_hook(lambda m, a: stack.append(m))
    post = nn.modules.module.register_module_forward_hook(leave)
    try:
        with _Recorder(stack, records):
            yield
    finally:
        pre.remove()
        post.remove()


def attach(dg: tp.DependencyGraph, records: dict) -> None:
    """Give each traced op of `dg` what `recording` saw: owners and sizes of splits, slices and writes, the
    sizes a concatenation joined, a reshape's shapes, a broadcast's one-channel operands."""
    T = tp.ops.OPTYPE
    for node in dg.module2node.values():
        owner, kind, data = records.get(node.grad_fn, (None, None, None))
        op = node.module
        if (kind, node.type) == ("reshape", T.RESHAPE):
            op.shapes = data
        elif (kind, node.type) == ("broadcast", T.ELEMENTWISE):
            op.narrow = [n for n in node.inputs if n.grad_fn in data]
        elif (kind, node.type) == ("write", T.ELEMENTWISE):
            op.owner, op.bounds, op.original = owner, list(data), tuple(data)
        elif (kind, node.type) == ("cat", T.CONCAT) and len(data) == len(node.inputs):
            op.concat_sizes, op.traced = list(data), True  # shape inference gives up on long paths
        elif (kind, node.type) == ("split", T.SPLIT):
            op.owner, op.split_sizes, op.original = owner, list(data), list(data)
            # torch.split(x, int) / chunk, or explicit sizes that are all equal (MixNet's pointwise halves): the
            # parts are tied, so no removal empties one
            op.int_split = "_saved_split_size" in dir(node.grad_fn)
            op.equal_parts = op.int_split or len(set(data)) == 1
        elif (kind, node.type) == ("slice", T.SLICE):
            op.owner, op.original = owner, (op.start, op.end)


def _retarget(owner: nn.Module, rules: dict[int, int], lists: dict[tuple, list[int]]) -> None:
    for attr, value in list(vars(owner).items()):
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value in rules:
            setattr(owner, attr, rules[value])
        elif isinstance(value, (tuple, list)) and tuple(value) in lists:
            setattr(owner, attr, type(value)(lists[tuple(value)]))


def sync_attributes(dg: tp.DependencyGraph) -> list[str]:
    """Set the sizes a pruned module splits or slices by (see the module docstring); returns what changed."""
    changed = []
    for node in dg.module2node.values():
        op = node.module
        owner, original = getattr(op, "owner", None), getattr(op, "original", None)
        if owner is None:
            continue
        if node.type == tp.ops.OPTYPE.SPLIT:
            new = list(op.split_sizes)
            if new == original:
                continue
            if op.int_split and len(set(new[:-1])) > 1:
                raise tp_error(owner, dg, f"split into equal parts {original} was pruned unevenly to {new}")
            rules = {sum(original): sum(new)}
            for old, now in zip(original, new):
                rules.setdefault(old, now)
            _retarget(owner, rules, {tuple(original): new})
            op.original = new
            changed.append(f"{dg._module2name.get(owner, type(owner).__name__)}: split {original} -> {new}")
        elif getattr(op, "bounds", None) is not None:
            if tuple(op.bounds) != original:
                rules = {b: n for b, n in zip(original, op.bounds) if 0 < b < _INT_BOUND and b != n}
                _retarget(owner, rules, {})
                changed.append(f"{dg._module2name.get(owner, type(owner).__name__)}: write {original} -> {tuple(op.bounds)}")
                op.original = tuple(op.bounds)
        elif (op.start, op.end) != original:
            rules = {b: n for b, n in zip(original, (op.start, op.end)) if 0 < b < _INT_BOUND and b != n}
            _retarget(owner, rules, {})
            op.original = (op.start, op.end)
            changed.append(f"{dg._module2name.get(owner, type(owner).__name__)}: slice {original} -> {(op.start, op.end)}")
    return changed


def tp_error(owner: nn.Module, dg: tp.DependencyGraph, what: str) -> Exception:
    from .errors import PruningError

    return PruningError(f"{dg._module2name.get(owner, type(owner).__name__)} ({type(owner).__name__}): {what}")
