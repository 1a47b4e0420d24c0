"""One trial: baseline -> method -> physical removal -> fine-tune -> measure -> one result row.

Every method gets the same fine-tuning recipe; a method that trains (DECORE's joint phase) gets its
own recipe for that phase, recorded in the row. The config is frozen and hashed: the hash names the
trial folder and makes a finished trial free to ask for again.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

import methods
import models
from methods.core import KeepPlan, channel_groups, prune_model

from . import dist
from .baseline import Baseline, get_baseline, results_dir
from .data import ArrayDataset, DeviceLoader, load_dataset, open_loaders
from .env import git_commit, package_versions
from .errors import UserError
from .io import config_hash, read_json, write_json
from .measure import count_flops, count_params, measure_latency, profile_model
from .pruned import save_pruned
from .recipe import Recipe, load_recipe
from .train import autocast_for, evaluate, fit, prepare_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialConfig:
    model: str
    dataset: str
    method: str
    knobs: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None            # None: the method's default
    seed: int = 0
    baseline_recipe: str = "cifar-standard"
    joint_recipe: str = "finetune-cifar"  # the training phase of methods that train (DECORE)
    finetune_recipe: str = "finetune-cifar"
    round_to: int = 1
    extra_finetune_epochs: int = 0        # --equal-epochs: L1/random get DECORE's joint epochs on top
    profile: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @functools.cached_property
    def key(self) -> str:
        return config_hash({**self.to_dict(), "recipes": {r: load_recipe(r).to_dict() for r in self.recipes()}})

    def recipes(self) -> tuple[str, ...]:
        return (self.baseline_recipe, self.joint_recipe, self.finetune_recipe)


def validate(cfg: TrialConfig) -> tuple[methods.Method, dict[str, Any], str]:
    """Check everything a user typed before any training starts."""
    try:
        method = methods.get_method(cfg.method)
        knobs = method.check_knobs(cfg.knobs)
    except methods.KnobError as e:
        raise UserError(str(e)) from None
    scope = cfg.scope or method.default_scope
    if scope not in ("internal", "all"):
        raise UserError(f"scope {scope!r} is unknown: use internal or all")
    if cfg.round_to < 1:
        raise UserError(f"round_to={cfg.round_to} must be at least 1")
    for r in cfg.recipes():
        load_recipe(r)
    return method, knobs, scope


def precheck(cfg: TrialConfig, method: methods.Method, knobs: dict[str, Any], scope: str, data: ArrayDataset) -> None:
    """What the architecture alone decides, checked on an untrained model before the baseline trains, so
    nothing is written: a model with nothing to prune at `scope` (channel_groups refuses it), and knob
    values such as a FLOPs target it cannot meet."""
    name = _resolve_name(cfg.model)
    input_size = (3, *data.train.x.shape[1:3])
    model = models.create(name, num_classes=data.num_classes).eval()
    groups = channel_groups(model, torch.randn(1, *input_size), scope, name=name)
    ctx = methods.Context(model, groups, name, {"num_classes": data.num_classes}, input_size, torch.device("cpu"),
                          cfg.seed, plan_cost=lambda plan: profile_model(prune_model(model, plan), input_size),
                          round_to=cfg.round_to)
    if not any(knobs.get(k) is not None for k in method.structural_knobs):
        return
    try:
        method.precheck(ctx, **knobs)
    except methods.KnobError as e:
        raise UserError(str(e)) from None


def _loaders(data: ArrayDataset | None, dataset: str, recipe: Recipe, device: torch.device, seed: int):
    return open_loaders(dataset, recipe.batch_size, device, seed=seed, subset_per_class=recipe.subset_per_class, data=data)


def train_accuracy(model: nn.Module, data: ArrayDataset, recipe: Recipe, device: torch.device) -> float:
    """Top-1 (fraction) on the training images of a recipe, un-augmented, in eval mode."""
    split = data.train.subset_per_class(recipe.subset_per_class)
    loader = DeviceLoader(split, data.mean, data.std, 500, device)
    return evaluate(model, loader, device, autocast_for(device))["top1"] / 100


def experiment_name(model: str, dataset: str, profile: str) -> str:
    short = _resolve_name(model).removeprefix("cifar_")
    return f"{short}-{dataset.replace(':', '_').replace('/', '_')}-{profile}"


def experiment_dir(model: str, dataset: str, profile: str) -> Path:
    return results_dir() / experiment_name(model, dataset, profile)


def _resolve_name(model: str) -> str:
    try:
        return models.resolve(model)
    except models.UnknownModelError as e:
        raise UserError(str(e)) from None


def trial_folder(cfg: TrialConfig) -> Path:
    return experiment_dir(cfg.model, cfg.dataset, cfg.profile) / "trials" / f"{cfg.method}-{cfg.key}"


def run_trial(cfg: TrialConfig, device: torch.device, *, data: ArrayDataset | None = None,
              log_row: Callable[[str, dict[str, Any]], None] | None = None,
              admit: Callable[[KeepPlan, nn.Module], None] | None = None,
              finetune_test: bool = False, compile: bool = False) -> dict[str, Any]:
    """Run (or fetch, when already finished) one trial; returns its result (see `_row`).

    `log_row(phase, row)` receives every epoch's statistics ("method" or "finetune") as they come; with
    `finetune_test` the fine-tune rows carry test top-1 (a budgeted search prunes hopeless trials on it).
    `admit(plan, pruned)` sees the pruned model before fine-tuning and may raise to stop the trial there
    (a budgeted search does not fine-tune a model over its budget).
    `compile` trains the method's phase and the fine-tuning through torch.compile (an execution detail,
    not part of the trial's config hash, like the device).
    """
    method, knobs, scope = validate(cfg)
    folder = trial_folder(cfg)
    if dist.all_true((folder / "result.json").is_file()):
        return read_json(folder / "result.json")
    data = data if data is not None or cfg.dataset.startswith("imagefolder:") else load_dataset(cfg.dataset)
    if data is not None:
        precheck(cfg, method, knobs, scope, data)
    t_start = time.perf_counter()
    base = get_baseline(cfg.model, cfg.dataset, load_recipe(cfg.baseline_recipe), seed=cfg.seed, device=device,
                        data=data)
    input_size = tuple(base.meta["input_size"])
    model_args = {"num_classes": base.meta["num_classes"]}
    joint, finetune = load_recipe(cfg.joint_recipe), load_recipe(cfg.finetune_recipe)
    if cfg.extra_finetune_epochs:
        finetune = finetune.replace(epochs=finetune.epochs + cfg.extra_finetune_epochs)
    log_row = log_row or (lambda phase, row: None)

    work = prepare_model(copy.deepcopy(base.model), device)
    groups = channel_groups(work, torch.randn(1, *input_size, device=device), scope, name=base.spec.model)
    base_cpu = base.model

    def plan_cost(plan: KeepPlan) -> dict[str, int]:
        return profile_model(prune_model(base_cpu, plan), input_size)

    joint_loaders = _loaders(data, cfg.dataset, joint, device, cfg.seed) if method.trains else None
    ctx = methods.Context(work, groups, base.spec.model, model_args, input_size, device, cfg.seed,
                          train_loader=joint_loaders.train if joint_loaders else None,
                          test_loader=joint_loaders.test if joint_loaders else None,
                          recipe=joint, fit=functools.partial(fit, compile=compile), plan_cost=plan_cost,
                          log=lambda row: log_row("method", row), round_to=cfg.round_to, rank=dist.rank(),
                          world_size=dist.world_size(), all_reduce=dist.all_reduce_)
    t0 = time.perf_counter()
    try:
        result = method.select(ctx, **knobs)
    except methods.KnobError as e:
        raise UserError(str(e)) from None
    select_seconds = time.perf_counter() - t0
    dist.check_same(result.plan.to_json(), "the keep plan")

    # the method may have trained `work` (DECORE): prune that network, else the baseline
    source = work.cpu().to(memory_format=torch.contiguous_format).eval() if method.trains else base_cpu
    pruned = prune_model(source, result.plan)
    if admit is not None:
        admit(result.plan, pruned)
    ft_loaders = _loaders(data, cfg.dataset, finetune, device, cfg.seed)
    runner = prepare_model(pruned, device)
    amp = autocast_for(device)
    before_ft = evaluate(runner, ft_loaders.test, device, amp)
    t1 = time.perf_counter()
    ft_history = fit(runner, ft_loaders.train, ft_loaders.test if finetune_test else None, finetune, device,
                     desc=f"fine-tune {cfg.method} ", compile=compile,
                     on_epoch=lambda row: log_row("finetune", row))
    finetune_seconds = time.perf_counter() - t1
    after = evaluate(runner, ft_loaders.test, device, amp)
    pruned = pruned.cpu().to(memory_format=torch.contiguous_format).eval()
    if not dist.is_main():  # rank 0 measures (latency alone on its cores) and writes; the others get its row
        return dist.broadcast_object(None)

    row = _row(cfg, scope, knobs, base, pruned, input_size, before_ft, after, result, joint, finetune,
               method.trains, select_seconds, finetune_seconds, time.perf_counter() - t_start, ft_history)
    if device.type == "cuda":
        row["latency_gpu_b1_ms"] = measure_latency(copy.deepcopy(pruned).to(device), input_size, batch_size=1)["median_ms"]
    save_pruned(folder, result.plan, pruned)
    write_json(folder / "history.json", {"method": result.history, "finetune": ft_history, "info": result.info})
    write_json(folder / "result.json", row)  # last: its presence marks the trial finished
    return dist.broadcast_object(row)


def _row(cfg, scope, knobs, base: Baseline, pruned, input_size, before_ft, after, result, joint, finetune,
         trains, select_seconds, finetune_seconds, wall, ft_history) -> dict[str, Any]:
    """The trial's result, in the results table's column names (plus a few extras the table ignores)."""
    params, flops = count_params(pruned), count_flops(pruned, input_size)
    lat = measure_latency(pruned, input_size, batch_size=1, repeats=30)["median_ms"]
    base_lat = measure_latency(base.model, input_size, batch_size=1, repeats=30)["median_ms"]
    bt = base.meta["test"]
    knob_name, knob_value = primary_knob(knobs)
    return {
        "experiment": experiment_name(cfg.model, cfg.dataset, cfg.profile), "row_type": "trial",
        "model": base.spec.model, "dataset": cfg.dataset, "profile": cfg.profile, "method": cfg.method,
        "scope": scope, "knob_name": knob_name, "knob_value": knob_value, "knobs": json.dumps(knobs, sort_keys=True),
        "seed": cfg.seed, "status": "complete", "reason": None,
        "top1_pct": after["top1"], "top5_pct": after["top5"], "top1_drop_pct": bt["top1"] - after["top1"],
        "top1_before_finetune_pct": before_ft["top1"],
        "params": params, "flops": flops,
        "params_reduction_pct": 100 * (1 - params / base.meta["params"]),
        "flops_reduction_pct": 100 * (1 - flops / base.meta["flops"]),
        "base_top1_pct": bt["top1"], "base_top5_pct": bt["top5"],
        "base_params": base.meta["params"], "base_flops": base.meta["flops"],
        "latency_cpu_b1_ms": lat, "base_latency_cpu_b1_ms": base_lat,
        "baseline_epochs": base.spec.recipe.epochs if base.meta["source"] == "trained" else 0,
        "joint_epochs": joint.epochs if trains else 0, "finetune_epochs": finetune.epochs,
        "kept_channels": json.dumps({gid: [len(k), result.plan.units[gid]] for gid, k in result.plan.keep.items()}),
        "round_to": cfg.round_to, "wall_seconds": wall, "config_hash": cfg.key,
        "git_commit": git_commit(), "packages": json.dumps(package_versions(), sort_keys=True),
        # extras, kept in result.json only
        "select_seconds": select_seconds, "finetune_seconds": finetune_seconds,
        "baseline_key": base.spec.key, "info": {k: v for k, v in result.info.items() if k != "keep_prob"},
        "world_size": dist.world_size(),
    }


def primary_knob(knobs: dict[str, Any]) -> tuple[str | None, float | None]:
    """The knob a sweep varies, for plots and tables: lambda, ratio, flops_target, else a preset name."""
    for name in ("lambda", "ratio", "flops_target"):
        if knobs.get(name) is not None:
            return name, float(knobs[name])
    for name in ("preset", "stage_ratios"):
        if knobs.get(name) is not None:
            return f"{name}={knobs[name]}", None
    return None, None
