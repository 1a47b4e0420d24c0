"""timm layers whose channels torch-pruning does not know how to remove.

- `BlurPool2d` (TResNet's anti-aliased downsampling) runs a depthwise `F.conv2d` with a filter buffer of one
  row per channel: a leaf whose input and output channels are one and the same (`BlurPoolPruner`).
- Weight-standardised convolutions (`StdConv2d`, `ScaledStdConv2d` and their `Same` variants: NFNet,
  BiT ResNet-V2) standardise each filter over its input channels at every forward, so removing an input
  channel changes every other weight of that filter. Before removal they are folded (`fold_standardised`)
  into plain convolutions holding the weights they compute, which is exact; a pruned model keeps the folded
  convolutions (and fine-tunes them as plain convolutions).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from timm.layers import BlurPool2d, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from timm.layers.padding import pad_same

STANDARDISED = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)


class BlurPoolPruner(tp.pruner.BasePruningFunc):
    TARGET_MODULES = (BlurPool2d,)

    def prune_out_channels(self, layer: BlurPool2d, idxs: Sequence[int]) -> BlurPool2d:
        if layer.channels is None:  # a shared filter expanded to the input's channels: nothing to remove
            return layer
        keep = torch.ones(layer.channels, dtype=torch.bool)
        keep[list(map(int, idxs))] = False
        layer.filt = layer.filt[keep.to(layer.filt.device)]
        layer.channels = int(keep.sum())
        return layer

    prune_in_channels = prune_out_channels  # one set of channels: removing an input removes that output

    def get_out_channels(self, layer: BlurPool2d) -> int | None:
        return layer.channels

    get_in_channels = get_out_channels


CUSTOM_PRUNERS = {BlurPool2d: BlurPoolPruner()}


class FoldedConv2d(nn.Conv2d):
    """A weight-standardised convolution with its standardised weight stored (padding as the original)."""
    same_pad: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.weight, self.bias)


def _standardised_weight(conv: nn.Conv2d) -> torch.Tensor:
    gain = getattr(conv, "gain", None)
    scale = None if gain is None else (gain * conv.scale).view(-1)
    w = conv.weight
    return F.batch_norm(w.reshape(1, conv.out_channels, -1), None, None, weight=scale, training=True,
                        momentum=0., eps=conv.eps).reshape_as(w)


def fold_standardised(model: nn.Module) -> list[str]:
    """Replace, in place, every weight-standardised convolution by a FoldedConv2d computing the same output."""
    folded = []
    for name, conv in list(model.named_modules()):
        if not isinstance(conv, STANDARDISED):
            continue
        new = FoldedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device,
                           dtype=conv.weight.dtype)
        new.same_pad = bool(getattr(conv, "same_pad", False))
        with torch.no_grad():
            new.weight.copy_(_standardised_weight(conv))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new.train(conv.training))
        folded.append(name)
    return folded
