"""The no-pruning control: the unpruned baseline trained on for the same budget as every method.

Under the equal budget a pruned model's accuracy mixes two effects: what pruning cost and what the extra
training after the baseline gave. This method keeps every channel, so its row (`control`) is the second
effect alone: a reader compares each method against it, not only against the baseline.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import Context, Method, Result, register


@register("control")
class Control(Method):
    knobs = ()
    default_scope: ClassVar[str] = "all"
    example: ClassVar[dict[str, Any]] = {}

    def select(self, ctx: Context, **knobs: Any) -> Result:
        return Result(ctx.plan({g.id: torch.ones(g.units, dtype=torch.bool) for g in ctx.groups}),
                      info={"control": "no pruning"})
