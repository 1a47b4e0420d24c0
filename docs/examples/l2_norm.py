"""L2-norm filter pruning: the example of docs/methods.md ("Adding a method").

A channel's score is the L2 norm of the filter weights that produce it (summed over a group's producers); the
smallest are removed, one-shot, exactly as `l1` does with the L1 norm. `ScoredMethod` brings the knobs `ratio`,
`flops_target`, `stage_ratios`, `preset`, `skip` and `--round-to`, so a scoring rule is all a new one-shot method
writes. Its allocation is uniform; a method that offers the `allocation` option lists it in `extra_options` (as
`methods/fpgm.py` and `methods/hrank.py` do). To add it to the harness, save this file as `methods/l2_norm.py`,
add `l2_norm` to the import line of `methods/__init__.py` and give it a search space in the profiles
(`sweeps/profiles/*.json`). tests/test_docs.py imports this very file, registers it and sweeps it on the synthetic
set.
"""
from __future__ import annotations

import torch

from methods.base import Context, register
from methods.scored import ScoredMethod, filter_scores


@register("l2_norm")
class L2Norm(ScoredMethod):
    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        # w: one producer's weights, one row per output channel -> the row's L2 norm
        return filter_scores(ctx.model, ctx.groups, lambda w: w.pow(2).sum(1).sqrt())
