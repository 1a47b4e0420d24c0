"""Taylor (Molchanov, Mallya, Tyree, Frosio, Kautz, CVPR 2019): first-order Taylor importance of a gate.

The paper's best variant ("gate after BN", Taylor FO; method 22 of the official code): a gate z = 1
multiplies each channel after its normalisation, and a channel's importance on a minibatch is
    I = (z * dL/dz)^2 = (sum over images and positions of a * dL/da)^2,
a = the channel's normalised output, L = the minibatch's mean cross-entropy (for a conv followed by BN this
equals (gamma * dL/dgamma + beta * dL/dbeta)^2). I is averaged over minibatches (option `batches`; the
official configs average over 30, `"frequency": 30`) and the channels with the smallest average are
removed, ranked globally across layers without per-layer normalisation (`allocation` global, as the paper;
`allocation=uniform` takes the same share from every group). The gates are this harness's exact gates:
one z per channel of a group, on every producer of a residual stream, so the stream's importance is that
of removing the channel from the whole stream. Its gradient sums over the stream's gate points, so, as the
official code does for its ResNets (`criteria_for_layer /= mult`, mult = the blocks sharing the skip gate),
a stream's criterion is divided by its number of gate points (option `stream_norm`, default true; false
ranks streams by the raw square, which all but never prunes one). The batches run in training mode (batch statistics), as
the paper computes the criterion during training; the weights are not updated and the normalisation
statistics are restored afterwards.

torch-pruning's `TaylorImportance` / `GroupTaylorImportance` are not used: they score weights
(|w * dL/dw| summed over a filter and the consumers' input slices), not the gate after BN, and their
BatchNorm branch only matches GroupNorm.

Deviation: the paper prunes iteratively (100 neurons every 30 minibatches, fine-tuning in between, with a
momentum of 0.9 on the criterion across steps); here one pruning step from the trained baseline decides
everything and the shared fine-tune follows. Under torchrun each minibatch's gate gradients are averaged
across ranks before squaring, which equals the one-process gradient of the whole batch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .base import Context, KnobError, Result, register
from .core import Gates
from .scored import DataScoredMethod, ScoredMethod, training_batches

BATCHES = 30  # the official configs: "frequency": 30 minibatches per pruning step


def gate_gradients(ctx: Context, x: torch.Tensor, y: torch.Tensor, gates: Gates,
                   loss_fn: nn.Module) -> list[torch.Tensor]:
    """dL/dz at z = 1 for every group (in ctx.groups order), on one minibatch."""
    zs = [torch.ones(g.units, device=ctx.device, requires_grad=True) for g in ctx.groups]
    gates.set({g.id: z for g, z in zip(ctx.groups, zs)})
    loss = loss_fn(ctx.model(x), y)
    grads = torch.autograd.grad(loss, zs, allow_unused=True)
    return [torch.zeros_like(z) if gr is None else gr for z, gr in zip(zs, grads)]


def taylor_scores(ctx: Context, batches: int) -> tuple[dict[str, torch.Tensor], int]:
    """Mean over `batches` training minibatches of (dL/dz)^2 per group unit, and the images seen."""
    model = ctx.model
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(getattr(ctx.recipe, "label_smoothing", 0.0) or 0.0))
    buffers = [b.detach().clone() for b in model.buffers()]  # batch-statistics mode updates running stats
    sums = [torch.zeros(g.units, device=ctx.device, dtype=torch.float64) for g in ctx.groups]
    was_training, n, seen = model.training, 0, 0
    model.train()
    try:
        with Gates(model, ctx.groups) as gates, torch.enable_grad():
            for x, y in training_batches(ctx, batches, "taylor"):
                grads = gate_gradients(ctx, x, y, gates, loss_fn)
                ctx.all_reduce(grads, "mean")  # the gradient of the whole batch across ranks
                for s, g in zip(sums, grads):
                    s += g.double() ** 2
                n, seen = n + 1, seen + len(x)
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        model.train(was_training)
    return {g.id: (s / max(n, 1)).cpu() for g, s in zip(ctx.groups, sums)}, seen


def per_gate_point(ctx: Context, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each group's criterion divided by its number of gate points (1 for a channel inside a block; a residual
    stream: one per block output and shortcut that carries it), as the official code divides shared skip gates."""
    return {g.id: scores[g.id] / max(len(g.gate_points), 1) for g in ctx.groups}


def _flag(knobs: Mapping[str, Any], name: str, default: bool) -> bool:
    value = knobs.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in ("1", "true", "yes", "on", "0", "0.0", "1.0", "false", "no", "off"):
        raise KnobError(f"taylor option {name}={value!r} is not a boolean: use true or false")
    return text in ("1", "1.0", "true", "yes", "on")


@register("taylor")
class Taylor(DataScoredMethod):
    batches: ClassVar[int] = BATCHES
    default_scope: ClassVar[str] = "all"      # the paper prunes skip connections too
    allocation: ClassVar[str] = "global"      # the paper ranks neurons across the whole network
    extra_options: ClassVar[dict[str, str]] = {
        **ScoredMethod.extra_options,
        "batches": f"training minibatches the criterion is averaged over (paper's code: {BATCHES})",
        "allocation": "global (paper: one threshold across layers) or uniform (every group loses `ratio`)",
        "stream_norm": "true (official code: a residual stream's criterion divided by its gate points) or false",
    }
    stream_norm: bool = True

    def paper_options(self, model: str | None = None) -> dict[str, Any]:
        return {**super().paper_options(model), "stream_norm": True}

    def check_combination(self, knobs: Mapping[str, Any]) -> None:
        super().check_combination(knobs)
        _flag(knobs, "stream_norm", True)

    def select(self, ctx: Context, **knobs: Any) -> Result:
        self.stream_norm = _flag(knobs, "stream_norm", True)
        result = super().select(ctx, **knobs)
        result.info["stream_norm"] = self.stream_norm
        return result

    def measure(self, ctx: Context, batches: int) -> tuple[dict[str, torch.Tensor], int]:
        scores, seen = taylor_scores(ctx, batches)
        return (per_gate_point(ctx, scores) if self.stream_norm else scores), seen
