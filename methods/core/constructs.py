"""Where a failure lies: the construct (a block of its own, not a conv/norm/activation wrapper) around a layer."""
from __future__ import annotations

import torch.nn as nn


# conv/norm/activation wrappers: a failure inside one is the construct around it (torch.nn's own too)
WRAPPERS = frozenset({
    "ConvNormAct", "ConvNormActAa", "ConvBnAct", "ConvBn", "ConvNorm", "BatchNormAct2d", "SyncBatchNormAct",
    "GroupNormAct", "GroupNorm1Act", "LayerNormAct", "LayerNormAct2d", "GroupNorm1", "LayerNorm2d", "LayerNorm",
    "Residual", "Conv2dSame", "StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame",
    "CreateConv2d", "MixedConv2d", "CondConv2d", "BlurPool2d", "Identity", "ConvLayer2d", "ConvLayer1d", "Conv2d_BN",
    "BN_Linear", "ConvBnAct2d",
})


def construct_at(model: nn.Module, where: str) -> tuple[str, str]:
    """(class, path) of the innermost module on the way to `where` that is a construct of its own: not
    torch.nn's and not a conv/norm/activation wrapper (the block that uses the layer, not the layer)."""
    parts = where.split(".") if where else []
    for i in range(len(parts), 0, -1):
        path = ".".join(parts[:i])
        module = model.get_submodule(path)
        kind = type(module)
        if not kind.__module__.startswith("torch.") and kind.__name__ not in WRAPPERS:
            return kind.__name__, path
    return type(model).__name__, "the network"
