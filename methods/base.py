"""The method interface and registry.

A method receives the trained baseline, its channel groups, the data, the training recipe and its
knob values, and returns a keep plan; the pruning core removes the rest. Everything a method may need
from the engine (training loop, FLOPs of a plan) arrives in the `Context`, so methods never import
`bench`. Adding a method is one file with `@register("name")` and one import line in methods/__init__.
"""
from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .core import GroupSet, KeepPlan


class KnobError(ValueError):
    """A knob value outside its declared range, or a knob the method does not have."""


@dataclass(frozen=True)
class Knob:
    """A method's tunable value, declared as data so a sweep can suggest it without knowing the method."""
    name: str
    low: float
    high: float
    log: bool = False
    default: float | None = None
    help: str = ""
    open_low: bool = False    # the bound itself is invalid (lambda = 0, ratio = 0)
    open_high: bool = False

    def check(self, value: Any) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise KnobError(f"knob {self.name}={value!r} is not a number: {self.help or 'pass a number'}") from None
        lo_ok = v > self.low if self.open_low else v >= self.low
        hi_ok = v < self.high if self.open_high else v <= self.high
        if not (math.isfinite(v) and lo_ok and hi_ok):
            lo, hi = ("(" if self.open_low else "["), (")" if self.open_high else "]")
            raise KnobError(f"knob {self.name}={value!r} is outside {lo}{self.low:g}, {self.high:g}{hi}: {self.help}")
        return v


@dataclass
class Context:
    """What a method gets from the engine for one trial."""
    model: nn.Module                  # the trained baseline (a copy the method may change), on `device`
    groups: GroupSet                  # channel groups of `model` at the trial's scope
    model_name: str                   # timm name
    model_args: dict[str, Any]
    input_size: tuple[int, int, int]
    device: torch.device
    seed: int = 0
    train_loader: Iterable | None = None
    test_loader: Iterable | None = None
    recipe: Any = None                # bench.engine.recipe.Recipe of the method's own training phase
    fit: Callable[..., list[dict[str, Any]]] | None = None        # bench.engine.train.fit
    plan_cost: Callable[[KeepPlan], dict[str, int]] | None = None  # plan -> {"params", "flops"} of the pruned model
    log: Callable[[dict[str, Any]], None] = lambda row: None       # per-epoch statistics sink
    round_to: int = 1                 # named option: kept channels per group rounded up to a multiple
    # many processes (torchrun): this process's rank, their number, and an in-place collective
    # all_reduce(tensors, op) with op "sum" or "mean" (a no-op in one process)
    rank: int = 0
    world_size: int = 1
    all_reduce: Callable[[Sequence[torch.Tensor | None], str], None] = lambda tensors, op="sum": None

    def plan(self, masks: Mapping[str, torch.Tensor]) -> KeepPlan:
        return KeepPlan.from_masks(self.groups, masks, self.model_name, model_args=dict(self.model_args),
                                   input_size=list(self.input_size))


@dataclass
class Result:
    """A method's decision and what it learned on the way (per-epoch statistics, chosen ratios...)."""
    plan: KeepPlan
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: subclasses set `name`, `knobs`, `default_scope` and implement `select`."""
    name: ClassVar[str] = ""
    knobs: ClassVar[tuple[Knob, ...]] = ()
    default_scope: ClassVar[str] = "all"
    match_scope: ClassVar[str | None] = None  # scope of its partners of a DECORE trial; None: DECORE's (protocol)
    trains: ClassVar[bool] = False      # True when select() trains the network (DECORE's joint phase)
    # True when select() reads training batches without training (HRank's feature maps, Taylor's gradients):
    # the engine passes train_loader (as for a method that trains) but counts no training images for it
    reads_data: ClassVar[bool] = False
    example: ClassVar[dict[str, Any]] = {}  # a knob setting that prunes something, for docs and contract tests

    def check_knobs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Validated knob values; unknown knob names are refused with the method's list."""
        known = {k.name: k for k in self.knobs}
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name in self.extra_options:
                out[name] = _number_or_text(value)
                continue
            if name not in known:
                names = sorted(known) + sorted(self.extra_options)
                close = difflib.get_close_matches(name, names, n=2)
                hint = f"did you mean {', '.join(close)}?" if close else f"its knobs are {', '.join(names)}"
                raise KnobError(f"method {self.name!r} has no knob {name!r}: {hint}")
            out[name] = known[name].check(value)
        self.check_combination(out)
        return out

    def check_combination(self, knobs: Mapping[str, Any]) -> None:
        """Refuse knob sets the method cannot run with (checked before anything trains)."""

    structural_knobs: ClassVar[tuple[str, ...]] = ()  # knobs `precheck` needs the architecture for

    def precheck(self, ctx: Context, **knobs: Any) -> None:
        """Refuse knob values the architecture cannot meet; `ctx.model` is untrained (weights do not matter),
        so an impossible value fails before the baseline trains. Called when a `structural_knobs` one is set."""

    extra_options: ClassVar[dict[str, str]] = {}  # non-numeric options: name -> help

    def paper_options(self, model: str | None = None) -> dict[str, Any]:
        """The paper's value of every named option that has one (for `model` where the paper sets it per
        architecture): a row whose option differs used a setting beyond the paper, and its label says so."""
        return {}

    def non_paper(self, knobs: Mapping[str, Any], scope: str | None = None, model: str | None = None) -> list[str]:
        """Phrases naming what a row used that its paper does not: options off their paper value, and a scope
        other than the method's default (e.g. ["allocation uniform", "scope all"]); [] for a paper setting."""
        paper = self.paper_options(model)
        out = [f"{name} {_text(knobs[name])}" for name in paper
               if name in knobs and knobs[name] is not None and not _same(knobs[name], paper[name])]
        if scope and scope != self.default_scope:
            out.append(f"scope {scope}")
        return out

    def select(self, ctx: Context, **knobs: Any) -> Result:
        raise NotImplementedError


def _same(value: Any, paper: Any) -> bool:
    """An option's value equals the paper's: flags as flags, numbers as numbers, the rest as text."""
    if isinstance(paper, bool):
        return (value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")) == paper
    try:
        return math.isclose(float(value), float(paper), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(value) == str(paper)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number_or_text(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, str) and value.strip() else value
    except ValueError:
        return value


METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: add a method to the registry under `name` (a duplicate is refused)."""
    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__qualname__}")
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


@functools.lru_cache(maxsize=None)
def code_version(name: str) -> str:
    """A hash of the source of a method's class and of the `methods` modules it inherits from (the interface
    in methods.base aside): part of every trial's identity, so a changed method trains again. Computed once
    per process (the code that runs is the code imported), so editing a file during a sweep changes nothing."""
    import hashlib
    import inspect
    import sys

    cls = get_method(name).__class__
    modules = sorted({c.__module__ for c in cls.__mro__ if c.__module__.startswith("methods.") and c.__module__ != __name__})
    h = hashlib.sha256()
    for mod in modules:
        h.update(inspect.getsource(sys.modules[mod]).encode())
    return h.hexdigest()[:10]


def get_method(name: str) -> Method:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(sorted(METHODS))}"
        raise KnobError(f"unknown method {name!r}: {hint}")
    return METHODS[name]()


def keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Boolean mask keeping the `n_keep` highest scores (ties broken by index, deterministic)."""
    n_keep = max(1, min(int(n_keep), scores.numel()))
    order = torch.argsort(scores, descending=True, stable=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:n_keep]] = True
    return mask


def round_up(n: int, multiple: int, limit: int) -> int:
    """n rounded up to a multiple (named option `round_to`), never above `limit`."""
    if multiple <= 1:
        return n
    return min(limit, max(multiple, -(-n // multiple) * multiple))
