"""Network slimming (Liu, Li, Shen, Huang, Yan, Zhang, ICCV 2017): L1-sparse BatchNorm scales, then prune.

Sparsity phase: the network trains with cross-entropy + s * sum |gamma| over every BatchNorm scale
(the official code adds s * sign(gamma) to the scales' gradients after backward: the same gradient).
Paper: s = 1e-4 for VGG on CIFAR, 1e-5 for ResNet and DenseNet; the named option `sparsity` defaults to
the paper's value for the architecture (`paper_sparsity`: 1e-4 for a VGG, else 1e-5). The phase starts from the trained baseline and runs the engine's training step through
`ctx.fit` with the recipe of a method's own training phase (the one DECORE's joint phase uses), so its
images count in the trial's training budget exactly as DECORE's (`trains = True`).

Selection: the channels with the smallest |gamma| are removed, with one global threshold across layers
(the paper's percentile of all scales; `allocation` global, `ratio` = the share of all channels removed;
`allocation=uniform` takes the same share from every group). A group's score is torch-pruning's
`BNScaleImportance` without normalisation: |gamma| averaged over the group's BatchNorm layers (one for
an internal channel, one per block for a residual stream), so streams and single layers compare on one
scale. A group without BatchNorm is removed last (score +inf).

Option `penalise`: all (paper: every BatchNorm) or groups (only the BatchNorms of the groups at the
trial's scope). Deviations: the paper trains with sparsity from scratch (160 epochs on CIFAR) and
fine-tunes afterwards; here the sparsity phase is the method's training recipe after the baseline, then
the shared fine-tune. Whether the phase made the network sparse is measured, not assumed: the result
records the share of penalised scales with |gamma| < 1e-2 before the phase (`base_bn_sparse_pct`) and
when pruning (`bn_sparse_pct`). The paper's s moves gamma by about s x the sum of the phase's learning
rates (x 10 with momentum 0.9): over a short phase (smoke: 78 steps at lr 0.01) that is ~1e-5 and nothing
becomes sparse, which the two columns show; a short profile that wants a sparse network sets `sparsity`
higher, and its labels say so (the value is not the paper's).

Default scope internal (the paper's ResNet prunes inside the blocks); a row at another scope (a matched
partner of DECORE at scope all) is labelled with its scope as not the paper's. Matched partners run at
slimming's own scope (`match_scope`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch_pruning as tp

from .base import Context, KnobError, Result, register
from .scored import ScoredMethod

SPARSITY = {"vgg": 1e-4, "other": 1e-5}  # the paper's s on CIFAR: VGG; ResNet and DenseNet
SPARSE_BELOW = 1e-2  # |gamma| under this counts as sparse (bn_sparse_pct)
_BN = nn.modules.batchnorm._BatchNorm


def paper_sparsity(model: str | None) -> float:
    """The paper's s for an architecture: 1e-4 for VGG, 1e-5 for ResNet and DenseNet (and anything else)."""
    return SPARSITY["vgg"] if model and "vgg" in model.lower() else SPARSITY["other"]


def sparse_pct(scales: list[nn.Parameter]) -> float:
    """% of the scales with |gamma| < SPARSE_BELOW."""
    with torch.no_grad():
        flat = torch.cat([w.detach().abs().flatten() for w in scales]) if scales else torch.zeros(0)
        return 100.0 * float((flat < SPARSE_BELOW).float().mean()) if flat.numel() else 0.0


class SparsityStep:
    """Cross-entropy + s * sum |gamma| (the step `fit` runs); accumulates statistics on the device."""

    def __init__(self, scales: list[nn.Parameter], s: float, label_smoothing: float, device: torch.device) -> None:
        self.scales, self.s = scales, s
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.stats = torch.zeros(2, device=device)  # [samples, ce sum]

    def penalty(self) -> torch.Tensor:
        return torch.stack([w.abs().sum() for w in self.scales]).sum()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        ce = self.ce(logits, y)
        self.stats += torch.stack([ce.new_tensor(float(len(y))), ce.detach() * len(y)])
        return ce + self.s * self.penalty(), logits

    def read(self, all_reduce) -> dict[str, float]:
        all_reduce([self.stats], "sum")
        n, ce = self.stats.tolist()
        self.stats.zero_()
        with torch.no_grad():
            count = sum(w.numel() for w in self.scales)
            return {"ce_loss": ce / max(n, 1.0), "images": n, "bn_scale_l1_mean": float(self.penalty()) / max(count, 1)}


def bn_scale_scores(ctx: Context) -> dict[str, torch.Tensor]:
    """Per group unit: mean |gamma| over the group's BatchNorm layers (torch-pruning's BNScaleImportance)."""
    dg, imp = ctx.groups.graph, tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)
    scores = {}
    for g in ctx.groups:
        root = ctx.model.get_submodule(g.id)
        per_channel = imp(dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels,
                                               list(range(g.channels))))
        if per_channel is None:
            scores[g.id] = torch.full((g.units,), math.inf, dtype=torch.float64)
            continue
        folded = per_channel.detach().double().cpu().view(g.tie, g.units).mean(0)  # tied copies: channel % units
        scores[g.id] = folded
    return scores


def penalised_scales(ctx: Context, which: str) -> list[nn.Parameter]:
    if which == "all":
        mods = [m for m in ctx.model.modules() if isinstance(m, _BN)]
    else:
        modules = dict(ctx.model.named_modules())
        names = {p.module for g in ctx.groups for p in g.producers if isinstance(modules[p.module], _BN)}
        mods = [modules[n] for n in sorted(names)]
    return [m.weight for m in mods if m.affine]


@register("slim")
class NetworkSlimming(ScoredMethod):
    trains: ClassVar[bool] = True
    default_scope: ClassVar[str] = "internal"  # the paper's ResNet prunes inside the blocks (channel selection)
    match_scope: ClassVar[str | None] = "internal"  # matched partners run here, not at DECORE's scope
    allocation: ClassVar[str] = "global"       # the paper: one percentile threshold over all scales
    extra_options: ClassVar[dict[str, str]] = {
        **ScoredMethod.extra_options,
        "sparsity": f"s, the L1 penalty on BatchNorm scales during the sparsity phase (paper: {SPARSITY['vgg']:g} "
                    f"for VGG on CIFAR, {SPARSITY['other']:g} for ResNet and DenseNet; default: the architecture's)",
        "penalise": "all (paper: every BatchNorm scale) or groups (only those of the groups at the trial's scope)",
        "allocation": "global (paper: one threshold on |gamma| across layers) or uniform (every group loses `ratio`)",
    }

    def paper_options(self, model: str | None = None) -> dict[str, Any]:
        return {**super().paper_options(model), "sparsity": paper_sparsity(model), "penalise": "all"}

    def check_combination(self, knobs: Mapping[str, Any]) -> None:
        super().check_combination(knobs)
        _options(knobs)

    def select(self, ctx: Context, **knobs: Any) -> Result:
        self.check_combination(knobs)
        s, which = _options(knobs, ctx.model_name)
        if ctx.fit is None or ctx.train_loader is None or ctx.recipe is None:
            raise KnobError("slim trains with a sparsity penalty: the engine must pass fit, train_loader and recipe")
        scales = penalised_scales(ctx, which)
        before = sparse_pct(scales)
        step = SparsityStep(scales, s, float(getattr(ctx.recipe, "label_smoothing", 0.0) or 0.0), ctx.device)
        history: list[dict[str, Any]] = []

        def on_epoch(row: dict[str, Any]) -> None:
            row.update(step.read(ctx.all_reduce))
            history.append(row)
            ctx.log(row)

        ctx.fit(ctx.model, ctx.train_loader, None, ctx.recipe, ctx.device, step=step, on_epoch=on_epoch,
                desc=f"slim s={s:g} ")
        result = self.select_from(ctx, self.scores(ctx), knobs)
        result.history = history
        result.info.update(sparsity=s, penalise=which, trained_images=int(sum(r["train_images"] for r in history)),
                           base_bn_sparse_pct=before, bn_sparse_pct=sparse_pct(scales))
        return result

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return bn_scale_scores(ctx)


def _options(knobs: Mapping[str, Any], model: str | None = None) -> tuple[float, str]:
    try:
        s = float(knobs.get("sparsity", paper_sparsity(model)))
    except (TypeError, ValueError):
        s = float("nan")
    if not (math.isfinite(s) and s >= 0):
        raise KnobError(f"slim option sparsity={knobs.get('sparsity')!r} must be a number >= 0, e.g. sparsity=1e-4")
    which = str(knobs.get("penalise", "all"))
    if which not in ("all", "groups"):
        raise KnobError(f"slim option penalise={which!r} is unknown: use all or groups")
    return s, which
