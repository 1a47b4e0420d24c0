"""What `make search` is given: its config, its budget (`flops:0.5`, `params:0.4M`, `latency_ms:2.5`) parsed, what a
model or a results row costs against it, and the setup every method's objective shares."""
from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.core.errors import UserError
from bench.engine.baseline import Baseline
from bench.engine.measure import count_flops, count_params, measure_latency, speedup

from .config import SweepConfig
from .profile import Profile



BUDGET_KINDS = {"flops": "FLOPs (conv+linear MACs)", "params": "parameters", "latency_ms": "batch-1 latency (ms) on this device"}


_NUMBER = re.compile(r"^([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)([kmg]?)$", re.IGNORECASE)


_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class Budget:
    kind: str           # flops, params, latency_ms
    value: float
    fraction: bool      # value is a fraction of the baseline's
    text: str

    @property
    def slug(self) -> str:
        return self.text.replace(":", "-")

    def limit(self, base: dict[str, float]) -> float:
        return self.value * base[self.kind] if self.fraction else self.value

    def describe(self, base: dict[str, float]) -> str:
        rel = f" ({self.value:g} of the baseline's {fmt(self.kind, base[self.kind])})" if self.fraction else ""
        return f"{self.kind} <= {fmt(self.kind, self.limit(base))}{rel}"


def parse_budget(text: str) -> Budget:
    """flops:0.5 / params:0.4 (fractions of the baseline), flops:60M / params:0.4M (absolute), latency_ms:2.5."""
    example = "e.g. flops:0.5, flops:60M, params:0.4M or latency_ms:2.5"
    kind, sep, raw = str(text).strip().partition(":")
    if not sep or not raw.strip():
        raise UserError(f"budget {text!r} is not KIND:VALUE: write {example}")
    kind, raw = kind.strip().lower(), raw.strip()
    if kind not in BUDGET_KINDS:
        close = difflib.get_close_matches(kind, list(BUDGET_KINDS), n=1)
        hint = f"did you mean {close[0]}?" if close else f"use one of {', '.join(BUDGET_KINDS)}"
        raise UserError(f"budget kind {kind!r} is unknown: {hint}")
    m = _NUMBER.match(raw)
    if not m:
        raise UserError(f"budget value {raw!r} is not a number (optionally with K, M or G): {example}")
    number, suffix = float(m.group(1)), m.group(2).lower()
    if not (math.isfinite(number) and number > 0):
        raise UserError(f"budget {text!r} must be positive: {example}")
    if kind == "latency_ms":
        if suffix:
            raise UserError(f"budget {text!r}: latency is in milliseconds, without a K/M/G suffix (e.g. latency_ms:2.5)")
        return Budget(kind, number, False, f"{kind}:{raw}")
    fraction = not suffix and number <= 1.0
    return Budget(kind, number * _SUFFIX[suffix], fraction, f"{kind}:{raw}")


def fmt(kind: str, value: float) -> str:
    return f"{value:.3f} ms" if kind == "latency_ms" else f"{value / 1e6:.3f}M"


def measure_cost(kind: str, model: nn.Module, input_size: tuple[int, ...], device: torch.device,
                 base: nn.Module | None = None) -> float:
    """The budgeted quantity of a (pruned) model: FLOPs and params are exact; latency is measured on `device`,
    on CPU as the results table's latency: interleaved with the unpruned `base` on a fixed thread count."""
    if kind == "flops":
        return float(count_flops(model, input_size))
    if kind == "params":
        return float(count_params(model))
    if device.type == "cuda":
        return measure_latency(copy.deepcopy(model).to(device), input_size, batch_size=1, repeats=30)["median_ms"]
    return speedup(model, model if base is None else base, input_size, batch_size=1)["ms"]


def row_cost(kind: str, row: dict[str, Any], folder: Path | None = None) -> float:
    """The same quantity read from a results-table row (a trial the search found already finished); a CPU latency
    the measuring pass has not filled yet is measured now, on the trial's saved model (the same measurement)."""
    if kind == "latency_ms":
        gpu, cpu = row.get("latency_gpu_b1_ms"), row.get("latency_cpu_b1_ms")
        if gpu is not None and gpu == gpu:
            return float(gpu)
        if (cpu is None or cpu != cpu) and folder is not None:
            from bench.deploy.speed import measure_speedup
            cpu = measure_speedup(folder)["latency_cpu_b1_ms"]
        return float(cpu)
    return float(row[kind])


@dataclass(frozen=True)
class SearchConfig:
    model: str
    dataset: str
    budget: str
    profile: str = "smoke"
    methods: tuple[str, ...] = ("decore", "l1", "random")
    trials: int | None = None           # per method; None: the profile's
    storage: str | None = None          # None: the experiment's sqlite file
    device: str = "auto"
    scope: str | None = None            # None: each method's default
    decore_per_stage: bool = False      # beyond the paper: one lambda factor per stage
    pruner: str = "median"
    wandb: str = "auto"
    sampler_seed: int = 0
    pretrained: bool = False            # the baseline is timm's pretrained weights (--pretrained)
    checkpoint: str | None = None       # the baseline is the user's state_dict (--checkpoint)

    @property
    def sweep(self) -> SweepConfig:
        """The same experiment as `make bench`: folder, storage, trial cache and results table are shared."""
        return SweepConfig(self.model, self.dataset, self.profile, self.methods, self.trials, 1, self.storage, 1,
                           self.device, self.scope, wandb=self.wandb, sampler_seed=self.sampler_seed,
                           pretrained=self.pretrained, checkpoint=self.checkpoint)

    @property
    def folder(self) -> Path:
        return self.sweep.folder / "search" / parse_budget(self.budget).slug

    def study_name(self, method: str) -> str:
        return f"{self.sweep.study_name(method)}-search-{parse_budget(self.budget).slug}"


@dataclass
class Setup:
    """What every method's objective shares: the baseline, its costs and the budget's limit."""
    cfg: SearchConfig
    budget: Budget
    profile: Profile
    base: Baseline
    base_cost: dict[str, float]
    limit: float
    device: torch.device
    data: Any = field(default=None, repr=False)

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(self.base.meta["input_size"])
