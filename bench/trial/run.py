"""One trial: baseline -> method -> physical removal -> fine-tune -> measure -> one result row.

The comparison protocol (DESIGN.md section 6):
- budget "equal" (default): every method trains on the same images after the baseline. A method that trains
  while it selects (DECORE's joint phase, slimming's sparsity phase) spends the joint recipe there and then
  fine-tunes; every other method (and the no-pruning control) trains its pruned network on the same two
  segments: the joint recipe on the joint phase's loader (same subset, order, augmentation and schedule as
  DECORE's), then the fine-tuning recipe on the fine-tuning loader. The engine counts the distinct training
  images each trial drew (`distinct_images`). "paper": each method's own schedule (outputs say "paper
  budgets, unequal").
- selection "val" (default): decisions read the validation hold-out (`val_top1_pct`); test top-1/top-5 are
  measured once per finished model and only reported. "test": the papers' practice.
The engine counts the images it trained on (`budget_images`). The config is frozen and hashed with the data's
fingerprint, the method's code version and the engine's (bench.core.version): the hash names the trial folder and makes
a finished trial free to ask for again, and a change of data, method code or engine code trains again.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

import methods
import models
from methods.core import KeepPlan, channel_groups, prune_model

from bench.engine import dist
from bench.core.io import results_dir
from bench.engine.baseline import Baseline, get_baseline, weights_identity
from bench.core.version import engine_version
from bench.engine.data import ArrayDataset, data_fingerprint, load_dataset, open_loaders
from bench.engine.splits import check_selection
from bench.core.env import git_commit, package_versions
from bench.core.errors import UserError
from bench.core.io import config_hash, read_json, write_json
from bench.engine.measure import count_flops, count_params, measure_latency, profile_model
from bench.deploy.pruned import save_pruned
from bench.engine.recipe import Recipe, load_recipe
from bench.engine.train import autocast_for, evaluate, fit, prepare_model, progress

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
    profile: str = "custom"
    budget: str = "equal"                 # equal: the same training images after the baseline; paper: each its own
    selection: str = "val"                # the split decisions read: val (hold-out of the training set), test, or
                                          # val-test (hold-out of the test side: imported weights, set automatically)
    experiment: str | None = None         # the experiment folder's name (a sweep's); None: from this config
    pretrained: bool = False              # the baseline is timm's pretrained weights for `model`, not trained here
    checkpoint: str | None = None         # the baseline is this state_dict of the user's, not trained here

    def __post_init__(self) -> None:
        object.__setattr__(self, "selection", imported_selection(self.selection, self.pretrained, self.checkpoint))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @functools.cached_property
    def data_fingerprint(self) -> str:
        return data_fingerprint(self.dataset)

    @functools.cached_property
    def weights(self) -> dict[str, str]:
        """The baseline's weights in the identity (timm's <architecture>.<tag>, or the checkpoint's sha256: its
        content, not its path); {} when the baseline trains here."""
        return weights_identity(self.model, self.pretrained, self.checkpoint)

    @functools.cached_property
    def key(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in ("experiment", "pretrained", "checkpoint")}
        return config_hash({**d, **self.weights, "recipes": {r: load_recipe(r).to_dict() for r in self.recipes()},
                            "data": self.data_fingerprint, "method_code": methods.code_version(self.method),
                            "engine": engine_version()})

    def recipes(self) -> tuple[str, ...]:
        return (self.baseline_recipe, self.joint_recipe, self.finetune_recipe)

    @property
    def experiment_name(self) -> str:
        if self.experiment:
            return self.experiment
        identity = {"scope": self.scope, "round_to": self.round_to, "budget": self.budget, "selection": self.selection,
                    "data": self.data_fingerprint, "recipes": [load_recipe(r).to_dict() for r in self.recipes()],
                    **self.weights}
        return experiment_name(self.model, self.dataset, self.profile, identity)


def imported_selection(selection: str, pretrained: bool, checkpoint: str | None) -> str:
    """The selection split a run uses: imported weights (timm's, or a checkpoint, trained on every training image)
    move the default hold-out (`val`) to the test side (`val-test`); data trained here keeps it."""
    return "val-test" if selection == "val" and (pretrained or checkpoint) else selection


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
    if cfg.budget not in BUDGETS:
        raise UserError(f"budget {cfg.budget!r} is unknown: use equal (the same training images after the baseline "
                        "for every method, the default) or paper (each paper's own schedule)")
    check_selection(cfg.selection)
    for r in cfg.recipes():
        load_recipe(r)
    return method, knobs, scope


def untrained_context(model_name: str, scope: str, data: ArrayDataset, seed: int = 0, round_to: int = 1) -> methods.Context:
    """A method's Context over the untrained model: what only the architecture decides (FLOPs of plans)."""
    name = _resolve_name(model_name)
    input_size = (3, *data.train.x.shape[1:3])
    model = models.create(name, num_classes=data.num_classes).eval()
    groups = channel_groups(model, torch.randn(1, *input_size), scope, name=name)
    return methods.Context(model, groups, name, {"num_classes": data.num_classes}, input_size, torch.device("cpu"),
                           seed, plan_cost=lambda plan: profile_model(prune_model(model, plan), input_size),
                           round_to=round_to)


def precheck(cfg: TrialConfig, method: methods.Method, knobs: dict[str, Any], scope: str, data: ArrayDataset) -> None:
    """What the architecture alone decides, checked on an untrained model before the baseline trains, so
    nothing is written: a model with nothing to prune at `scope` (channel_groups refuses it), and knob
    values such as a FLOPs target it cannot meet."""
    ctx = untrained_context(cfg.model, scope, data, cfg.seed, cfg.round_to)
    if not any(knobs.get(k) is not None for k in method.structural_knobs):
        return
    try:
        method.precheck(ctx, **knobs)
    except methods.KnobError as e:
        raise UserError(str(e)) from None


def smallest_flops_fraction(model_name: str, method_name: str, scope: str | None, data: ArrayDataset,
                            round_to: int = 1) -> float | None:
    """The smallest FLOPs fraction a method reaches at a scope (None: the method has no such floor)."""
    method = methods.get_method(method_name)
    floor = getattr(method, "smallest_flops_fraction", None)
    if floor is None:
        return None
    return floor(untrained_context(model_name, scope or method.default_scope, data, 0, round_to))


BUDGETS = ("equal", "paper")


def _loaders(data: ArrayDataset | None, cfg: TrialConfig, recipe: Recipe, device: torch.device):
    return open_loaders(cfg.dataset, recipe.batch_size, device, seed=cfg.seed, subset_per_class=recipe.subset_per_class,
                        data=data, selection=cfg.selection, model=_resolve_name(cfg.model))


def distinct_images(loaders: list[Any]) -> tuple[int, str] | None:
    """(number, sha256 of the sorted ids) of the distinct training images `loaders` drew, as the engine counted
    them (DeviceLoader.drawn_ids); None when a loader does not count (image folders)."""
    if not all(hasattr(loader, "drawn_ids") for loader in loaders):
        return None
    ids = np.unique(np.concatenate([loader.drawn_ids() for loader in loaders] or [np.zeros(0, np.int64)]))
    return int(len(ids)), hashlib.sha256(ids.astype(np.int64).tobytes()).hexdigest()[:16]


def phase_images(history: list[dict[str, Any]]) -> int:
    """Images a training phase trained on, as the engine counted them."""
    return int(sum(r.get("train_images", 0) for r in history))


BREAK_EVEN_IMAGES = 10_000


@torch.no_grad()
def train_accuracy(model: nn.Module, loader: Any, device: torch.device, images: int = BREAK_EVEN_IMAGES) -> tuple[int, int]:
    """(correct, seen) over the first `images` of a training loader, as DECORE's agents see the network: train
    mode (batch statistics), the training augmentation, gates fully open. A copy of the model runs, so the
    baseline's BatchNorm running statistics stay as they are."""
    work = copy.deepcopy(model).to(device).train()
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    amp = autocast_for(device)
    for x, y in loader:
        x, y = x[: images - seen], y[: images - seen]
        with amp(), torch.no_grad():  # train mode, but no graph: nothing here is differentiated
            correct += (work(x).argmax(1) == y).sum()
        seen += len(y)
        if seen >= images:
            break
    return int(correct), seen


def experiment_name(model: str, dataset: str, profile: str, identity: dict[str, Any] | None = None) -> str:
    """<model>-<dataset>-<profile>, then a hash of everything else that changes a number (data fingerprint,
    recipes' contents, scope, round_to, budget rule, selection split): experiments that differ never share a folder."""
    short = _resolve_name(model).removeprefix("cifar_")
    name = f"{short}-{dataset.replace(':', '_').replace('/', '_')}-{profile}"
    return name if identity is None else f"{name}-{config_hash(identity, 8)}"


def experiment_dir(name: str) -> Path:
    return results_dir() / name


def _resolve_name(model: str) -> str:
    try:
        return models.resolve(model)
    except models.UnknownModelError as e:
        raise UserError(str(e)) from None


def trial_folder(cfg: TrialConfig) -> Path:
    return experiment_dir(cfg.experiment_name) / "trials" / f"{cfg.method}-{cfg.key}"


def run_trial(cfg: TrialConfig, device: torch.device, *, data: ArrayDataset | None = None,
              log_row: Callable[[str, dict[str, Any]], None] | None = None,
              admit: Callable[[KeepPlan, nn.Module], None] | None = None,
              finetune_test: bool = False, compile: bool = False) -> dict[str, Any]:
    """Run (or fetch, when already finished) one trial; returns its result (see `_row`).

    `log_row(phase, row)` receives every epoch's statistics ("method" or "finetune") as they come; with
    `finetune_test` the fine-tune rows carry the selection split's top-1 (a budgeted search prunes hopeless trials
    on it; the test set decides nothing).
    `admit(plan, pruned)` sees the pruned model before fine-tuning and may raise to stop the trial there
    (a budgeted search does not fine-tune a model over its budget).
    `compile` trains the method's phase and the fine-tuning through torch.compile (an execution detail,
    not part of the trial's config hash, like the device).
    """
    method, knobs, scope = validate(cfg)
    folder = trial_folder(cfg)
    if dist.all_true((folder / "result.json").is_file()):
        return read_json(folder / "result.json")
    if data is None and not cfg.dataset.startswith("imagefolder:"):
        data = load_dataset(cfg.dataset, selection=cfg.selection)
    if data is not None and data.selection != cfg.selection:
        raise ValueError(f"data loaded with selection {data.selection!r} for a trial of selection {cfg.selection!r}")
    if data is not None:
        precheck(cfg, method, knobs, scope, data)
    t_start = time.perf_counter()
    progress(f"phase 1/4: baseline {cfg.model} on {cfg.dataset} ({cfg.baseline_recipe}; cached after the first run)")
    base = get_baseline(cfg.model, cfg.dataset, load_recipe(cfg.baseline_recipe), seed=cfg.seed, device=device,
                        data=data, selection=cfg.selection, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint)
    input_size = tuple(base.meta["input_size"])
    joint, finetune = load_recipe(cfg.joint_recipe), load_recipe(cfg.finetune_recipe)
    log_row = log_row or (lambda phase, row: None)

    work, groups, joint_loaders, result, select_seconds, method_images = _select(
        cfg, method, knobs, scope, base, data, joint, device, log_row, compile)

    # the method may have trained `work` (DECORE): prune that network, else the baseline
    source = work.cpu().to(memory_format=torch.contiguous_format).eval() if method.trains else base.model
    pruned = prune_model(source, result.plan)
    if admit is not None:
        admit(result.plan, pruned)
    runner, ft_loaders, before_ft, ft_history, trained_on, finetune_seconds = _finetune(
        cfg, method.trains, pruned, data, joint, finetune, joint_loaders, device, log_row, finetune_test, compile)
    distinct, amp = distinct_images(trained_on), autocast_for(device)
    val = evaluate(runner, ft_loaders.val, device, amp)
    test = evaluate(runner, ft_loaders.test, device, amp)  # measured once, reported, never read by a decision
    pruned = pruned.cpu().to(memory_format=torch.contiguous_format).eval()
    if not dist.is_main():  # rank 0 measures (latency alone on its cores) and writes; the others get its row
        return dist.broadcast_object(None)

    row = _row(cfg, scope, knobs, base, pruned, input_size, before_ft, val, test, result, joint, finetune,
               method.trains, select_seconds, finetune_seconds, time.perf_counter() - t_start, ft_history,
               method_images, data, groups, distinct)
    if device.type == "cuda":
        row["latency_gpu_b1_ms"] = measure_latency(copy.deepcopy(pruned).to(device), input_size, batch_size=1)["median_ms"]
    save_pruned(folder, result.plan, pruned)
    write_json(folder / "history.json", {"method": result.history, "finetune": ft_history, "info": result.info})
    write_json(folder / "result.json", row)  # last: its presence marks the trial finished
    return dist.broadcast_object(row)


def _select(cfg: TrialConfig, method: Any, knobs: dict[str, Any], scope: str, base: Baseline, data: Any, joint: Recipe,
            device: torch.device, log_row: Callable[[str, dict[str, Any]], None], compile: bool) -> tuple:
    """Phase 2: the method selects channels on a copy of the baseline. Returns that copy (trained by DECORE),
    its groups, the method's phase loaders, the method's result, seconds, and images trained (0 for methods that
    only look)."""
    input_size, model_args = tuple(base.meta["input_size"]), {"num_classes": base.meta["num_classes"]}
    work = prepare_model(copy.deepcopy(base.model), device)
    groups = channel_groups(work, torch.randn(1, *input_size, device=device), scope, name=base.spec.model)
    base_cpu = base.model

    def plan_cost(plan: KeepPlan) -> dict[str, int]:
        return profile_model(prune_model(base_cpu, plan), input_size)

    # the method's phase loaders exist for every method: they feed a method's training (DECORE), its importance
    # batches (methods that only look), and define the image count of the equal budget
    joint_loaders = _loaders(data, cfg, joint, device)
    ctx = methods.Context(work, groups, base.spec.model, model_args, input_size, device, cfg.seed,
                          train_loader=joint_loaders.train, test_loader=joint_loaders.val,
                          recipe=joint, fit=functools.partial(fit, compile=compile), plan_cost=plan_cost,
                          log=lambda row: log_row("method", row), round_to=cfg.round_to, rank=dist.rank(),
                          world_size=dist.world_size(), all_reduce=dist.all_reduce_)
    t0 = time.perf_counter()
    progress(f"phase 2/4: {cfg.method} selects channels ({len(groups)} groups, scope {scope})")
    try:
        result = method.select(ctx, **knobs)
    except methods.KnobError as e:
        raise UserError(str(e)) from None
    select_seconds = time.perf_counter() - t0
    dist.check_same(result.plan.to_json(), "the keep plan")
    method_images = phase_images(result.history) if method.trains else 0

    return work, groups, joint_loaders, result, select_seconds, method_images


def _finetune(cfg: TrialConfig, trains: bool, pruned: nn.Module, data: Any, joint: Recipe, finetune: Recipe,
              joint_loaders: Any, device: torch.device, log_row: Callable[[str, dict[str, Any]], None],
              finetune_test: bool, compile: bool) -> tuple:
    """Phase 3: fine-tune the pruned model (first the joint phase's share, for a method that does not train, under
    the equal budget). Returns the model being trained, the fine-tune loaders, validation top-1 before it, the
    epochs' rows, the loaders trained on and seconds."""
    ft_loaders = _loaders(data, cfg, finetune, device)
    segments = [("finetune", ft_loaders.train, finetune)]
    if cfg.budget == "equal" and not trains:
        # the joint phase's share on the joint phase's data: a fresh loader with DECORE's seed draws DECORE's
        # order and augmentation (a method that read batches for its scores advanced the first one)
        segments.insert(0, ("joint share", _loaders(data, cfg, joint, device).train, joint))
    trained_on = [joint_loaders.train] if trains else []
    runner = prepare_model(pruned, device)
    amp = autocast_for(device)
    before_ft = evaluate(runner, ft_loaders.val, device, amp)
    t1 = time.perf_counter()
    progress(f"phase 3/4: fine-tune the pruned model ({finetune.name}; validation top-1 before it "
             f"{before_ft['top1']:.2f}%)")
    ft_history = []
    for segment, loader, recipe in segments:
        def on_epoch(row: dict[str, Any], segment: str = segment) -> None:
            row["segment"] = segment
            row["final"] = row["final"] and segment == "finetune"
            log_row("finetune", row)
        ft_history += fit(runner, loader, ft_loaders.val if finetune_test else None, recipe, device,
                          desc=f"{segment} {cfg.method} ", compile=compile, on_epoch=on_epoch)
        trained_on.append(loader)
    finetune_seconds = time.perf_counter() - t1
    return runner, ft_loaders, before_ft, ft_history, trained_on, finetune_seconds


def _row(cfg, scope, knobs, base: Baseline, pruned, input_size, before_ft, val, test, result, joint, finetune,
         trains, select_seconds, finetune_seconds, wall, ft_history, method_images, data, groups,
         distinct: tuple[int, str] | None = None) -> dict[str, Any]:
    """The trial's result, in the results table's column names (plus a few extras the table ignores)."""
    params, flops = count_params(pruned), count_flops(pruned, input_size)
    bt, bv = base.meta["test"], base.meta.get("val", base.meta["test"])
    knob_name, knob_value = primary_knob(knobs)
    ft_images = phase_images(ft_history)
    return {
        "experiment": cfg.experiment_name, "row_type": "trial",
        "model": base.spec.model, "dataset": cfg.dataset, "profile": cfg.profile, "method": cfg.method,
        "scope": scope, "knob_name": knob_name, "knob_value": knob_value, "knobs": json.dumps(knobs, sort_keys=True),
        "seed": cfg.seed, "status": "complete", "reason": None,
        "val_top1_pct": val["top1"], "top1_pct": test["top1"], "top5_pct": test["top5"],
        "top1_drop_pct": bt["top1"] - test["top1"],
        "top1_before_finetune_pct": before_ft["top1"],
        "params": params, "flops": flops,
        "params_reduction_pct": 100 * (1 - params / base.meta["params"]),
        "flops_reduction_pct": 100 * (1 - flops / base.meta["flops"]),
        "base_val_top1_pct": bv["top1"], "base_top1_pct": bt["top1"], "base_top5_pct": bt["top5"],
        "base_params": base.meta["params"], "base_flops": base.meta["flops"],
        "baseline_epochs": base.spec.recipe.epochs if base.meta["source"] == "trained" else 0,
        "joint_epochs": joint.epochs if trains else 0, "finetune_epochs": len(ft_history),
        "method_images": method_images, "finetune_images": ft_images, "budget_images": method_images + ft_images,
        "budget": cfg.budget, "selection": cfg.selection, "data_fingerprint": cfg.data_fingerprint,
        "method_version": methods.code_version(cfg.method), "engine_version": engine_version(),
        "distinct_images": distinct[0] if distinct else None,
        "bn_sparse_pct": result.info.get("bn_sparse_pct"), "base_bn_sparse_pct": result.info.get("base_bn_sparse_pct"),
        "kept_channels": json.dumps({gid: [len(k), result.plan.units[gid], groups.by_id[gid].kind]
                                     for gid, k in result.plan.keep.items()}),
        "round_to": cfg.round_to, "wall_seconds": wall, "config_hash": cfg.key,
        "git_commit": git_commit(), "packages": json.dumps(package_versions(), sort_keys=True),
        # extras, kept in result.json only
        "select_seconds": select_seconds, "finetune_seconds": finetune_seconds,
        "baseline_key": base.spec.key, "info": {k: v for k, v in result.info.items() if k != "keep_prob"},
        "world_size": dist.world_size(), "data": data.split_info() if data is not None else None,
        "distinct_images_sha": distinct[1] if distinct else None,
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
