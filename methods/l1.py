"""L1-norm filter pruning (Li, Kadav, Durdanovic, Samet, Graf, ICLR 2017).

A channel's score is the L1 norm of the filter weights that produce it, summed over the group's
producing conv/linear layers (and over the conv groups of a tied group); the smallest are removed,
one-shot. Default scope: block-internal channels, as Li et al. pruned.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import Context, register
from .scored import ScoredMethod


def l1_scores(model: nn.Module, groups) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    scores = {}
    for g in groups:
        s = torch.zeros(g.units, dtype=torch.float64)
        for p in g.producers:
            layer = modules[p.module]
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue  # norms and shortcuts have no filters
            norms = layer.weight.detach().abs().flatten(1).sum(1).double().cpu()
            s.index_add_(0, torch.tensor(p.units), norms[p.channels])
        scores[g.id] = s
    return scores


@register("l1")
class L1Norm(ScoredMethod):
    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return l1_scores(ctx.model, ctx.groups)
