"""FPGM (He, Liu, Wang, Hu, Yang, CVPR 2019): filter pruning via the geometric median.

Within a layer, the filters nearest the geometric median of all its filters are the most replaceable
(the others can represent them) and go first, whatever their norm. As the paper and its official code
(`get_filter_similar`, distance pruning only, i.e. `rate_norm` 1), a filter's score is the sum of its
Euclidean distances to every other filter of the layer, computed on the raw flattened weights with
`torch.cdist`; the smallest sums are removed. A group with several producing layers (a residual stream,
or a tied group) adds the sums of its layers, as L1 adds norms.

torch-pruning's `FPGMImportance` is not used: it takes distances between |w|^2 (element-wise squared
magnitudes, signs lost), not between the filters, and averages them with the consumers' input-channel
slices, which is not the paper's criterion.

Deviations: the paper (and its code) soft-prunes, zeroing the selected filters after every training epoch
and selecting again, and prunes pre-trained models the same way during fine-tuning; here the trained
baseline is pruned once and the shared fine-tune follows. The rate is uniform per layer, as the paper
(`allocation=global` ranks every group's distance sums together instead).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from .base import Context, register
from .scored import ScoredMethod


def fpgm_scores(model: nn.Module, groups) -> dict[str, torch.Tensor]:
    """Per group unit: sum over producing conv/linear layers of the filter's distances to the layer's others."""
    modules = dict(model.named_modules())
    scores = {}
    for g in groups:
        s = torch.zeros(g.units, dtype=torch.float64)
        for p in g.producers:
            layer = modules[p.module]
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue  # norms and shortcuts have no filters
            w = layer.weight.detach().double().cpu().flatten(1)[p.channels]
            s.index_add_(0, torch.tensor(p.units), torch.cdist(w, w).sum(1))
        scores[g.id] = s
    return scores


@register("fpgm")
class FPGM(ScoredMethod):
    extra_options: ClassVar[dict[str, str]] = {
        **ScoredMethod.extra_options,
        "allocation": "uniform (paper: every group loses `ratio` of its channels) or global (one distance threshold)",
    }

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return fpgm_scores(ctx.model, ctx.groups)
