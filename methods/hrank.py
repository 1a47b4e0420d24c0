"""HRank (Lin, Ji, Wang, Zhang, Zhang, Tian, Shao, CVPR 2020): filters whose feature maps have low rank go first.

A channel's score is the average matrix rank of its feature maps (H x W, one per image) over a few
training batches (option `batches`; paper: 5 batches of 128 images, the official `--limit 5`); the
lowest-ranked channels are removed. Ranks come from `torch.linalg.matrix_rank` (SVD, the default
tolerance max(H, W) * eps * largest singular value, as the official code's `torch.matrix_rank`), batched
over images and channels, in eval mode and without gradients: the network does not change.

Which feature map: the one the next layers read, i.e. the input of every conv/linear layer that consumes
the group's channels (torch-pruning's in-channel dependencies). For a block-internal channel that is
relu(bn(conv(x))), exactly where the official code hooks its ReLU. For a residual stream the consumers
are the next blocks' first convs (and a downsampling conv), which read the stream after the block's add
and ReLU (the official code's `relu2` hook): the stream's score is the rank averaged over every block
output it is read at. Maps with spatial extent are used whenever a group has them; a group read only as
vectors (after global pooling, a hidden linear layer) is scored on those, as 1 x 1 maps (rank 1 if the
value is non-zero). Tied channels (grouped convs) average over their copies.

Deviation: the paper prunes layer by layer with fine-tuning between layers; here the ranks of the trained
baseline decide every layer at once and the shared fine-tune follows (one-shot, the same training budget
as every other method). The ratio is uniform per group: the paper's ResNet-56/110 results use hand-set
per-layer rates (the official `--compress_rate` lists), which are not preset here (`stage_ratios` sets one
rate per stage); `allocation=global` ranks all groups' scores together instead. A row at a uniform rate is
therefore not the paper's ResNet-56/110 configuration.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from .base import Context, register
from .scored import DataScoredMethod, ScoredMethod, training_batches

BATCHES = 5  # the official rank_generation.py: --limit 5 batches of 128


def consumers(ctx: Context) -> dict[str, list[tuple[str, list[int], list[int]]]]:
    """Per group: (conv/linear module name, its input channel indices, the group units they carry)."""
    dg, names = ctx.groups.graph, {m: n for n, m in ctx.model.named_modules()}
    out: dict[str, list[tuple[str, list[int], list[int]]]] = {}
    for g in ctx.groups:
        root = ctx.model.get_submodule(g.id)
        tp_group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(g.channels)))
        found: dict[str, tuple[list[int], list[int]]] = {}
        for item in tp_group:
            module, handler = item.dep.target.module, item.dep.handler
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and dg.is_in_channel_pruning_fn(handler):
                idx, units = found.setdefault(names[module], ([], []))
                idx.extend(int(i) for i in item.idxs)
                units.extend(int(r) % g.units for r in getattr(item, "root_idxs", item.idxs))
        out[g.id] = [(name, idx, units) for name, (idx, units) in found.items()]
    return out


def channel_maps(x: torch.Tensor, linear: bool) -> torch.Tensor:
    """(N, C, ...) conv input or (N, ..., C) linear input -> (N, C, a, b) matrices, one per image and channel."""
    if linear:
        x = x.movedim(-1, 1)
    if x.dim() == 2:
        return x[:, :, None, None]
    if x.dim() == 3:
        return x[..., None]
    return x.flatten(3) if x.dim() > 4 else x


def average_ranks(ctx: Context, batches: int) -> tuple[dict[str, torch.Tensor], int]:
    """Mean rank of every group unit's feature maps over `batches` training batches, and the images seen."""
    modules = dict(ctx.model.named_modules())
    by_group = consumers(ctx)
    spatial = {gid: [c for c in cs if not isinstance(modules[c[0]], nn.Linear)] for gid, cs in by_group.items()}
    chosen = {gid: spatial[gid] or by_group[gid] for gid in by_group}  # maps with extent when the group has them
    sums = {g.id: torch.zeros(g.units, device=ctx.device, dtype=torch.float64) for g in ctx.groups}
    counts = {g.id: torch.zeros(g.units, device=ctx.device, dtype=torch.float64) for g in ctx.groups}
    per_module: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for gid, cs in chosen.items():
        for name, idx, units in cs:
            per_module.setdefault(name, []).append((gid, torch.tensor(idx, device=ctx.device),
                                                    torch.tensor(units, device=ctx.device)))

    def hook(name: str):
        linear = isinstance(modules[name], nn.Linear)

        def pre(module: nn.Module, args: tuple) -> None:
            maps = channel_maps(args[0].detach(), linear)
            for gid, idx, units in per_module[name]:
                ranks = torch.linalg.matrix_rank(maps[:, idx].float()).double()   # (N, k)
                sums[gid].index_add_(0, units, ranks.sum(0))
                counts[gid].index_add_(0, units, torch.full_like(ranks[0], ranks.shape[0]))
        return pre

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in per_module]
    was_training, seen = ctx.model.training, 0
    ctx.model.eval()
    try:
        with torch.no_grad():
            for x, _ in training_batches(ctx, batches, "hrank"):
                ctx.model(x)
                seen += len(x)
    finally:
        for h in handles:
            h.remove()
        ctx.model.train(was_training)
    ctx.all_reduce(list(sums.values()) + list(counts.values()), "sum")  # every rank: the ranks of all images
    return {gid: (sums[gid] / counts[gid].clamp(min=1)).cpu() for gid in sums}, seen


@register("hrank")
class HRank(DataScoredMethod):
    batches: ClassVar[int] = BATCHES
    default_scope: ClassVar[str] = "all"  # the official code prunes every conv, blocks' last convs included
    extra_options: ClassVar[dict[str, str]] = {
        **ScoredMethod.extra_options,
        "batches": f"training batches whose feature-map ranks are averaged (paper: {BATCHES} of 128)",
        "allocation": "uniform (paper: every group loses `ratio` of its channels) or global (one rank threshold)",
    }

    def measure(self, ctx: Context, batches: int) -> tuple[dict[str, torch.Tensor], int]:
        return average_ranks(ctx, batches)
