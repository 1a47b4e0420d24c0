"""torch-pruning support for the option-A CIFAR shortcut (`models.ShortcutA`).

The shortcut is a leaf for the dependency graph: its input channels belong to one stage's residual
stream and its output channels to the next one's, with no coupling between the two.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp

from models import ShortcutA


def _remap(idxs: Sequence[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keep mask over `size` positions and the new position of every kept one."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[list(map(int, idxs))] = False
    return keep, torch.cumsum(keep.long(), 0) - 1


class ShortcutAPruner(tp.pruner.BasePruningFunc):
    TARGET_MODULES = (ShortcutA,)

    def prune_out_channels(self, layer: ShortcutA, idxs: Sequence[int]) -> ShortcutA:
        keep, pos = _remap(idxs, layer.out_channels)
        pair = keep[layer.dst.cpu()].to(layer.dst.device)
        layer.src, layer.dst = layer.src[pair], pos.to(layer.dst.device)[layer.dst[pair]]
        layer.out_channels = int(keep.sum())
        return layer

    def prune_in_channels(self, layer: ShortcutA, idxs: Sequence[int]) -> ShortcutA:
        keep, pos = _remap(idxs, layer.in_channels)
        pair = keep[layer.src.cpu()].to(layer.src.device)
        layer.src, layer.dst = pos.to(layer.src.device)[layer.src[pair]], layer.dst[pair]
        layer.in_channels = int(keep.sum())
        return layer

    def get_out_channels(self, layer: ShortcutA) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ShortcutA) -> int:
        return layer.in_channels


CUSTOM_PRUNERS = {ShortcutA: ShortcutAPruner()}
