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
(`allocation=global` ranks every group's distance sums together instead). Default scope `all`: the official
CIFAR code (`pruning_cifar10.py`) masks every convolution, residual streams included.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from .base import Context, register
from .scored import ScoredMethod, filter_scores


def fpgm_scores(model: nn.Module, groups) -> dict[str, torch.Tensor]:
    """Per group unit: sum over producing conv/linear layers of the filter's distances to the layer's others."""
    return filter_scores(model, groups, lambda w: torch.cdist(w.double(), w.double()).sum(1))


@register("fpgm")
class FPGM(ScoredMethod):
    default_scope: ClassVar[str] = "all"  # the official CIFAR code masks every conv, the blocks' last convs too
    extra_options: ClassVar[dict[str, str]] = {
        **ScoredMethod.extra_options,
        "allocation": "uniform (paper: every group loses `ratio` of its channels) or global (one distance threshold)",
    }

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return fpgm_scores(ctx.model, ctx.groups)
