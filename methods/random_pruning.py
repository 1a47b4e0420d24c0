"""Random pruning: the same selection as L1-norm with seeded random scores (a sanity baseline)."""
from __future__ import annotations

import torch

from .base import Context, register
from .scored import ScoredMethod


@register("random")
class RandomPruning(ScoredMethod):
    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(ctx.seed)
        return {g.id: torch.rand(g.units, generator=gen, dtype=torch.float64) for g in ctx.groups}
