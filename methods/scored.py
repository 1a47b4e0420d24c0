"""One-shot selection by per-channel scores: the shared machinery of L1-norm and random pruning.

Ratios come from exactly one of: a uniform `ratio`, a `flops_target` (the uniform ratio whose pruned
model lands within 1% of that fraction of the baseline's FLOPs, found by bisection on the real pruned
model), per-stage `stage_ratios` with `skip`ped conv layers, or a published `preset`.
Kept channels per group = int(units * (1 - ratio)), as Li et al. (at least one).

How one `ratio` (or the ratio a `flops_target` searches for) becomes per-group counts is the method's
`allocation`: "uniform" (every group loses `ratio` of its channels: Li et al., HRank, FPGM) or "global"
(one threshold on the scores across all groups removes `ratio` of all channels, every group keeping at
least one: network slimming, Taylor). Methods that offer both take the named option `allocation`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .base import Context, Knob, KnobError, Method, Result, keep_top, round_up
from .core import ChannelGroup, KeepPlan

FLOPS_TOLERANCE = 0.01  # relative
ALLOCATIONS = ("uniform", "global")
MAX_RATIO = 1.0 - 1e-6  # every group down to its last channel(s)

# Li et al. 2017 (../shared/reference/li2017.md): conv layers numbered from 1 (the stem), per-stage ratios,
# sensitive layers skipped; VGG-16-A prunes conv1 and conv8..13 by half. Block-internal channels only.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "li2017-A": {
        "cifar_resnet56": {"stage_ratios": (0.1, 0.1, 0.1), "skip": (16, 20, 38, 54)},
        "cifar_resnet110": {"stage_ratios": (0.5, 0.0, 0.0), "skip": (36,)},
        "cifar_vgg16_bn": {"layer_ratios": {1: 0.5, **{i: 0.5 for i in range(8, 14)}}},
    },
    "li2017-B": {
        "cifar_resnet56": {"stage_ratios": (0.6, 0.3, 0.1), "skip": (16, 18, 20, 34, 38, 54)},
        "cifar_resnet110": {"stage_ratios": (0.5, 0.4, 0.3), "skip": (36, 38, 74)},
    },
}
_STAGE = re.compile(r"^(?:layer(\d+)|stages\.(\d+)|layers\.(\d+))\.")


def stage_of(group_id: str) -> int:
    """Stage index of a group's root layer: layer1 -> 0 (CIFAR/timm ResNets), stages.2 -> 2; else 0."""
    m = _STAGE.match(group_id)
    if not m:
        return 0
    if m.group(1) is not None:
        return int(m.group(1)) - 1
    return int(m.group(2) or m.group(3))


def conv_numbers(model: nn.Module) -> dict[str, int]:
    """Li et al.'s numbering: the 1-based position of every Conv2d in module order (1 = the stem)."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {name: i + 1 for i, name in enumerate(convs)}


def _parse_floats(text: Any, what: str) -> tuple[float, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(float(v) for v in text)
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise KnobError(f"{what}={text!r} is not a comma-separated list of numbers, e.g. 0.6,0.3,0.1") from None


class ScoredMethod(Method):
    knobs: ClassVar[tuple[Knob, ...]] = (
        Knob("ratio", 0.0, 1.0, open_low=False, open_high=True, default=0.5,
             help="the fraction of channels removed from every group, in [0, 1)"),
        Knob("flops_target", 0.0, 1.0, open_low=True, help="the fraction of the baseline's FLOPs to keep, in (0, 1]"),
    )
    extra_options: ClassVar[dict[str, str]] = {
        "preset": "li2017-A or li2017-B (Li et al.'s configurations for ResNet-56/110 and VGG-16)",
        "stage_ratios": "comma-separated ratio per stage, e.g. 0.6,0.3,0.1",
        "skip": "comma-separated conv layer numbers (1 = stem) left whole",
    }
    default_scope: ClassVar[str] = "internal"
    example: ClassVar[dict[str, Any]] = {"ratio": 0.5}
    allocation: ClassVar[str] = "uniform"  # the paper's; "global" ranks every group's scores together

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def paper_options(self, model: str | None = None) -> dict[str, Any]:
        return {"allocation": self.allocation} if "allocation" in self.extra_options else {}

    def check_combination(self, knobs: Mapping[str, Any]) -> None:
        given = [k for k in ("ratio", "flops_target", "preset", "stage_ratios") if knobs.get(k) is not None]
        if len(given) != 1:
            raise KnobError(f"method {self.name!r} needs exactly one of ratio, flops_target, preset or stage_ratios; "
                            f"got {given or 'none'} (e.g. --knob ratio=0.5)")
        self._allocation(knobs)

    def _allocation(self, knobs: Mapping[str, Any]) -> str:
        value = str(knobs.get("allocation") or self.allocation)
        if value not in ALLOCATIONS:
            raise KnobError(f"allocation={value!r} is unknown: use {' or '.join(ALLOCATIONS)}")
        return value

    structural_knobs: ClassVar[tuple[str, ...]] = ("flops_target", "preset", "stage_ratios")

    def precheck(self, ctx: Context, **knobs: Any) -> None:
        # a preset or per-stage ratios must fit the architecture (an unknown preset is refused before training)
        if knobs.get("preset") is not None or knobs.get("stage_ratios") is not None:
            self._ratios(ctx, knobs)
        # the FLOPs of a plan depend on its channel counts only, never on the scores: zeros will do
        if knobs.get("flops_target") is not None:
            zeros = {g.id: torch.zeros(g.units) for g in ctx.groups}
            self._smallest(ctx, float(knobs["flops_target"]), *self._flops_curve(ctx, zeros))

    def smallest_flops_fraction(self, ctx: Context) -> float:
        """The smallest FLOPs fraction a uniform plan reaches at ctx's scope (the floor of flops_target)."""
        zeros = {g.id: torch.zeros(g.units) for g in ctx.groups}
        fraction, uniform = self._flops_curve(ctx, zeros)
        return fraction(uniform(MAX_RATIO))[0]

    def select(self, ctx: Context, **knobs: Any) -> Result:
        self.check_combination(knobs)
        scores = self.scores(ctx)
        return self.select_from(ctx, scores, knobs)

    def plan_shape(self, ctx: Context, **knobs: Any) -> KeepPlan:
        """A plan with the channel counts `select` gives for these knobs, without reading data or weights
        (every score equal): what FLOPs, params and latency depend on, for costing plans before a trial.
        With the global allocation a `ratio` or `flops_target` spreads by the scores: only per-group ratios
        (uniform allocation, `stage_ratios`, `preset`) have a score-free shape."""
        self.check_combination(knobs)
        if self._allocation(knobs) == "global" and knobs.get("preset") is None and knobs.get("stage_ratios") is None:
            raise KnobError(f"{self.name} with allocation global has no score-free plan for a ratio or flops_target")
        return self.select_from(ctx, {g.id: torch.zeros(g.units) for g in ctx.groups}, knobs).plan

    def select_from(self, ctx: Context, scores: Mapping[str, torch.Tensor], knobs: Mapping[str, Any]) -> Result:
        """The plan for given per-group scores (units,) and knobs: the budget half of `select`."""
        allocation = self._allocation(knobs)
        if knobs.get("flops_target") is not None:
            result = self._to_flops(ctx, scores, float(knobs["flops_target"]), allocation)
        elif allocation == "global" and knobs.get("ratio") is not None:
            counts = global_counts(ctx, scores, float(knobs["ratio"]))
            result = Result(ctx.plan(self._masks(ctx, scores, {}, counts)), info={"ratio": float(knobs["ratio"])})
        else:  # a uniform ratio, or per-group ratios from a preset or stage_ratios (whatever the allocation)
            ratios = self._ratios(ctx, knobs)
            result = Result(ctx.plan(self._masks(ctx, scores, ratios)), info={"ratios": ratios})
        if "allocation" in self.extra_options:
            result.info["allocation"] = allocation
        return result

    def _ratios(self, ctx: Context, knobs: Mapping[str, Any]) -> dict[str, float]:
        groups = list(ctx.groups)
        if knobs.get("ratio") is not None:
            return {g.id: float(knobs["ratio"]) for g in groups}
        if knobs.get("preset") is not None:
            table = PRESETS.get(str(knobs["preset"]))
            if table is None or ctx.model_name not in table:
                have = [f"{p} ({', '.join(t)})" for p, t in PRESETS.items()]
                raise KnobError(f"preset {knobs['preset']!r} is not defined for {ctx.model_name}: presets are {'; '.join(have)}")
            spec = table[ctx.model_name]
        else:
            spec = {"stage_ratios": _parse_floats(knobs["stage_ratios"], "stage_ratios"),
                    "skip": tuple(int(v) for v in _parse_floats(knobs.get("skip") or (), "skip"))}
        return self._spec_ratios(ctx, groups, spec)

    @staticmethod
    def _spec_ratios(ctx: Context, groups: list[ChannelGroup], spec: Mapping[str, Any]) -> dict[str, float]:
        numbers = conv_numbers(ctx.model)
        skip = set(spec.get("skip", ()))
        out = {}
        for g in groups:
            n = numbers.get(g.id)
            if "layer_ratios" in spec:
                ratio = spec["layer_ratios"].get(n, 0.0)
            else:
                stages = spec["stage_ratios"]
                if stage_of(g.id) >= len(stages):
                    raise KnobError(f"stage_ratios has {len(stages)} entries but group {g.id} is in stage {stage_of(g.id) + 1}")
                ratio = 0.0 if n in skip else stages[stage_of(g.id)]
            if not 0.0 <= ratio < 1.0:
                raise KnobError(f"ratio {ratio} for group {g.id} is outside [0, 1)")
            out[g.id] = ratio
        return out

    @staticmethod
    def _counts(ctx: Context, ratios: Mapping[str, float]) -> dict[str, int]:
        """Kept channels per group: int(units * (1 - ratio)) as Li et al., at least one, optionally rounded up."""
        return {g.id: round_up(max(1, int(g.units * (1.0 - ratios.get(g.id, 0.0)) + 1e-9)), ctx.round_to, g.units)
                for g in ctx.groups}

    @classmethod
    def _masks(cls, ctx: Context, scores: Mapping[str, torch.Tensor], ratios: Mapping[str, float],
               counts: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
        counts = counts or cls._counts(ctx, ratios)
        return {g.id: keep_top(scores[g.id], counts[g.id]) for g in ctx.groups}

    def _to_flops(self, ctx: Context, scores: Mapping[str, torch.Tensor], target: float,
                  allocation: str = "uniform") -> Result:
        """The plan (its ratio spread by `allocation`) closest to `target` (a fraction of the baseline's FLOPs)
        among those within 1% of it, preferring one at or below the target when such a plan exists: a
        partner matched to DECORE's FLOPs never gets more FLOPs than DECORE when it could have as many or fewer.

        Bisection on the ratio down to the step where the counts change (channel counts are whole numbers,
        so the FLOPs are a step function of it): the two neighbouring plans straddle the target. When neither
        is within the tolerance, the groups whose counts differ between them are moved one at a time (smallest
        FLOPs step first). Every plan counted is a candidate."""
        fraction, uniform = self._flops_curve(ctx, scores, allocation)
        tol = FLOPS_TOLERANCE * target
        candidates: list[tuple[float, Any, float]] = []  # (fraction, plan, ratio)
        counted: dict[tuple, float] = {}  # counts -> fraction: each distinct plan is counted once

        def at(r: float) -> float:
            counts = uniform(r)
            key = tuple(sorted(counts.items()))
            if key not in counted:
                f, plan = fraction(counts)
                counted[key] = f
                candidates.append((f, plan, r))
            return counted[key]
        lo, hi = 0.0, MAX_RATIO
        if at(lo) <= target:
            return _closest(candidates, target, tol, {"ratio": 0.0})  # nothing to remove
        f_hi, plan_hi = self._smallest(ctx, target, fraction, uniform)  # refuses a target below the floor
        counted[tuple(sorted(uniform(hi).items()))] = f_hi
        candidates.append((f_hi, plan_hi, hi))
        if f_hi <= target:  # invariant: f(lo) > target >= f(hi)
            while hi - lo > 1e-9:
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if at(mid) > target else (lo, mid)
        if any(abs(f - target) <= tol for f, _, _ in candidates):
            return _closest(candidates, target, tol, {})
        return self._straddle(ctx, uniform(lo), uniform(hi), fraction, target, tol, lo)

    def _flops_curve(self, ctx: Context, scores: Mapping[str, torch.Tensor], allocation: str = "uniform"):
        """fraction(counts) -> (pruned FLOPs / baseline FLOPs, plan), and uniform(ratio) -> counts (with the
        global allocation: the counts of one threshold across groups, nested as the ratio grows)."""
        if ctx.plan_cost is None:
            raise KnobError("flops_target needs the engine's plan_cost")
        base = ctx.plan_cost(ctx.plan({}))["flops"]

        def fraction(counts: Mapping[str, int]) -> tuple[float, Any]:
            plan = ctx.plan(self._masks(ctx, scores, {}, counts))
            return ctx.plan_cost(plan)["flops"] / base, plan

        def uniform(r: float) -> dict[str, int]:
            if allocation == "global":
                return global_counts(ctx, scores, r)
            return self._counts(ctx, {g.id: r for g in ctx.groups})
        return fraction, uniform

    @staticmethod
    def _smallest(ctx: Context, target: float, fraction, uniform) -> tuple[float, Any]:
        """The smallest reachable FLOPs fraction and its plan; a target below it is refused."""
        f_hi, plan_hi = fraction(uniform(MAX_RATIO))
        if f_hi > target * (1 + FLOPS_TOLERANCE):
            raise KnobError(f"flops_target {target:g} cannot be met at scope {ctx.groups.scope!r}: the smallest reachable "
                            f"is {f_hi:.3f} of the baseline's FLOPs; raise the target or use scope all")
        return f_hi, plan_hi

    @staticmethod
    def _straddle(ctx: Context, above: dict[str, int], below: dict[str, int], fraction, target: float, tol: float,
                  ratio: float) -> Result:
        counts = dict(above)
        f, plan = fraction(counts)
        candidates = [(f, plan, ratio)]
        for gid in sorted((g for g in above if above[g] != below[g]), key=lambda g: ctx.groups[g].units):
            trial = {**counts, gid: below[gid]}
            f_t, plan_t = fraction(trial)
            candidates.append((f_t, plan_t, ratio))
            if f_t < target - tol:
                continue  # this step overshoots: try a smaller one
            counts, f = trial, f_t
        if any(abs(c[0] - target) <= tol for c in candidates):
            return _closest(candidates, target, tol, {"adjusted_groups": True})
        best = min(candidates, key=lambda c: abs(c[0] - target))[0]
        raise KnobError(f"flops_target {target:g}: the closest reachable is {best:.4f} of the baseline's FLOPs "
                        "(channel counts are whole numbers); pick a target nearby")


def _closest(candidates: list[tuple[float, Any, float]], target: float, tol: float, info: dict[str, Any]) -> Result:
    """Among plans within `tol` of `target`: the closest at or below it, else the closest above; its Result."""
    inside = [c for c in candidates if abs(c[0] - target) <= tol] or candidates
    below = [c for c in inside if c[0] <= target]
    f, plan, ratio = min(below or inside, key=lambda c: abs(c[0] - target))
    return Result(plan, info={"ratio": ratio, "flops_fraction": f, **info})


def global_counts(ctx: Context, scores: Mapping[str, torch.Tensor], ratio: float) -> dict[str, int]:
    """Kept channels per group when one threshold across all groups removes `ratio` of all mask units.

    int(total * (1 - ratio)) units are kept, as Li et al. count; each group's best unit is never removed
    (a group keeps at least one), ties go to the lower group and index; then round_to rounds counts up.
    Counts are nested: a larger ratio removes a superset, so the FLOPs fall monotonically with it.
    """
    groups = list(ctx.groups)
    units = torch.tensor([g.units for g in groups])
    flat = torch.cat([scores[g.id].detach().double().cpu().flatten() for g in groups])
    owner = torch.repeat_interleave(torch.arange(len(groups)), units)
    starts = torch.cumsum(units, 0) - units
    best = torch.stack([scores[g.id].detach().double().cpu().argmax() for g in groups]) + starts
    flat[best] = float("inf")  # protected: every group keeps at least one unit
    kept_total = max(len(groups), int(int(units.sum()) * (1.0 - ratio) + 1e-9))
    n_remove = int(units.sum()) - kept_total
    removed = torch.bincount(owner[torch.argsort(flat, stable=True)[:n_remove]], minlength=len(groups))
    return {g.id: round_up(int(g.units - removed[i]), ctx.round_to, g.units) for i, g in enumerate(groups)}


def positive_int(knobs: Mapping[str, Any], name: str, default: int) -> int:
    """A named option that counts something (batches), at least 1."""
    value = knobs.get(name, default)
    try:
        n = float(value)
    except (TypeError, ValueError):
        n = float("nan")
    if not (n >= 1 and n == int(n)):
        raise KnobError(f"option {name}={value!r} must be a whole number of at least 1, e.g. {name}={default}")
    return int(n)


def training_batches(ctx: Context, n: int, who: str):
    """The first `n` batches (images, labels) of the engine's training loader (fewer if it has fewer)."""
    if ctx.train_loader is None:
        raise KnobError(f"{who} scores channels on training batches: the engine must pass train_loader "
                        "(the method sets reads_data)")
    for _, batch in zip(range(n), ctx.train_loader):  # range first: no batch is drawn past the n-th
        yield batch


def filter_scores(model: nn.Module, groups, per_layer) -> dict[str, torch.Tensor]:
    """Per group unit: the sum over its producing conv/linear layers of per_layer(filters), where filters
    are the layer's flattened weights of the group's channels (channels, fan-in) and per_layer returns one
    score per channel (L1: their norms; FPGM: their distances to the layer's other filters)."""
    modules = dict(model.named_modules())
    scores = {}
    for g in groups:
        s = torch.zeros(g.units, dtype=torch.float64)
        for p in g.producers:
            layer = modules[p.module]
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue  # norms and shortcuts have no filters
            s.index_add_(0, torch.tensor(p.units), per_layer(layer.weight.detach().flatten(1)[p.channels]).double().cpu())
        scores[g.id] = s
    return scores


class DataScoredMethod(ScoredMethod):
    """Scores measured on a few training batches without training (named option `batches`)."""
    reads_data: ClassVar[bool] = True
    batches: ClassVar[int] = 1  # the paper's number of batches

    def measure(self, ctx: Context, batches: int) -> tuple[dict[str, torch.Tensor], int]:
        """Per-group scores from `batches` training batches, and the number of images they held."""
        raise NotImplementedError

    def paper_options(self, model: str | None = None) -> dict[str, Any]:
        return {**super().paper_options(model), "batches": self.batches}

    def check_combination(self, knobs: Mapping[str, Any]) -> None:
        super().check_combination(knobs)
        positive_int(knobs, "batches", self.batches)

    def select(self, ctx: Context, **knobs: Any) -> Result:
        self.check_combination(knobs)
        scores, seen = self.measure(ctx, positive_int(knobs, "batches", self.batches))
        result = self.select_from(ctx, scores, knobs)
        result.info["images_scored"] = seen
        return result

    def scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return self.measure(ctx, self.batches)[0]
