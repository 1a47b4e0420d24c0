"""L1-norm filter pruning (Li, Kadav, Durdanovic, Samet, Graf, ICLR 2017).

A channel's score is the L1 norm of the filter weights that produce it, summed over the group's
producing conv/linear layers (and over the conv groups of a tied group); the smallest are removed,
one-shot. Default scope: block-internal channels, as Li et al. pruned.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import Context, register
from .scored import ScoredMethod, filter_scores


def l1_scores(model: nn.Module, groups) -> dict[str, torch.Tensor]:
    return filter_scores(model, groups, lambda w: w.abs().sum(1))


@register("l1")
class L1Norm(ScoredMethod):
    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return l1_scores(ctx.model, ctx.groups)
