"""The scratch controls of Liu et al., "Rethinking the Value of Network Pruning" (ICLR 2019).

For a finished trial: the same pruned architecture, re-initialised, trained from scratch on the baseline's
training data and recipe (its schedule stretched to the budget), as their `main_E.py` / `main_B.py`:
- Scratch-E (`scratch-e`): the baseline's training images (the same epochs as the baseline).
- Scratch-B (`scratch-b`): the baseline's training images x FLOPs_base / FLOPs_pruned (the same computation
  as the baseline: 1.18x the images at 84.5% of the FLOPs kept, 2x at 50%).
If a control does as well as the pruned trial, the method found an architecture, not weights worth keeping.
Its row (method `scratch-b` or `scratch-e`) names the trial in `match_of`; reports show each as a separate,
labelled series. Rows of method `scratch` come from an older rule (the baseline's images plus the trial's).
The baseline must have trained here: imported weights have no image count to scale.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from methods.core import KeepPlan, rebuild

from bench.engine.baseline import get_baseline
from bench.engine.data import ArrayDataset, load_dataset
from bench.core.version import engine_version
from bench.core.env import git_commit, package_versions
from bench.core.errors import UserError
from bench.core.io import config_hash, read_json, write_json
from bench.engine.measure import count_flops, count_params
from bench.deploy.pruned import save_pruned
from bench.engine.recipe import load_recipe
from bench.engine.train import autocast_for, evaluate, fit, prepare_model
from bench.trial.run import TrialConfig, _loaders, distinct_images, phase_images, trial_folder

SCRATCH_VERSION = 2
RULES = {"scratch-b": "Scratch-B", "scratch-e": "Scratch-E"}


def scratch_budget(rule: str, baseline_images: int, base_flops: float, flops: float) -> int:
    """Training images of a scratch control: Scratch-E the baseline's, Scratch-B the baseline's x FLOPs_base / FLOPs."""
    if rule == "scratch-e":
        return int(baseline_images)
    if rule == "scratch-b":
        return int(round(baseline_images * float(base_flops) / float(flops)))
    raise UserError(f"scratch control {rule!r} is unknown: use {' or '.join(RULES)}")


def reinitialised(plan: KeepPlan, seed: int) -> nn.Module:
    """The plan's pruned architecture with fresh weights: every layer's own initialisation at its pruned
    width (`reset_parameters`), then, for the CIFAR zoo, the literature's init (Kaiming fan-out convs)."""
    torch.manual_seed(seed)
    model = rebuild(plan)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if type(model).__module__.startswith("models."):
        from models._layers import init_conv_bn

        init_conv_bn(model)
    return model


def scratch_key(source: TrialConfig, rule: str = "scratch-b") -> str:
    return config_hash({"scratch": SCRATCH_VERSION, "rule": rule, "source": source.key,
                        "baseline_recipe": load_recipe(source.baseline_recipe).to_dict()})


def scratch_folder(source: TrialConfig, rule: str = "scratch-b") -> Path:
    return trial_folder(source).parent / f"{rule}-{scratch_key(source, rule)}"


def run_scratch(source: TrialConfig, device: torch.device, data: ArrayDataset | None = None,
                rule: str = "scratch-b") -> dict[str, Any]:
    """Scratch-B or Scratch-E (`rule`) of a finished trial: returns its row (from disk when it ran before)."""
    scratch_budget(rule, 1, 1, 1)  # an unknown rule is refused before anything loads
    folder = scratch_folder(source, rule)
    if (folder / "result.json").is_file():
        return read_json(folder / "result.json")
    src = trial_folder(source)
    if not (src / "result.json").is_file():
        raise UserError(f"trial {source.key} has not finished ({src}): the scratch control needs its pruned architecture")
    trial = read_json(src / "result.json")
    plan = KeepPlan.from_json((src / "plan.json").read_text())
    if data is None and not source.dataset.startswith("imagefolder:"):
        data = load_dataset(source.dataset, selection=source.selection)
    recipe = load_recipe(source.baseline_recipe)
    base = get_baseline(source.model, source.dataset, recipe, seed=source.seed, device=device, data=data,
                        selection=source.selection, pretrained=source.pretrained, checkpoint=source.checkpoint)
    if base.meta.get("source", "trained") != "trained" or not base.meta.get("train_images"):
        raise UserError(f"{RULES[rule]} scales the baseline's training images, and this baseline was imported "
                        "(--pretrained or --checkpoint): use --control keep")
    base_images = int(base.meta["train_images"])
    budget = scratch_budget(rule, base_images, trial["base_flops"], trial["flops"])
    t0 = time.perf_counter()
    model = reinitialised(plan, source.seed)
    loaders = _loaders(data, source, recipe, device)
    runner = prepare_model(model, device)
    history = fit(runner, loaders.train, None, recipe, device, images=budget, desc=f"{rule} of {source.method} ")
    distinct = distinct_images([loaders.train])
    amp = autocast_for(device)
    val, test = evaluate(runner, loaders.val, device, amp), evaluate(runner, loaders.test, device, amp)
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    input_size = tuple(plan.input_size)
    params, flops = count_params(model), count_flops(model, input_size)
    row = {**{k: trial[k] for k in ("experiment", "model", "dataset", "profile", "scope", "seed", "base_val_top1_pct",
                                    "base_top1_pct", "base_top5_pct", "base_params", "base_flops", "kept_channels",
                                    "round_to", "budget", "selection", "data_fingerprint")},
           "row_type": "trial", "method": rule, "knob_name": None, "knob_value": None,
           "knobs": json.dumps({"of": source.key}), "status": "complete", "reason": None,
           "val_top1_pct": val["top1"], "top1_pct": test["top1"], "top5_pct": test["top5"],
           "top1_drop_pct": trial["base_top1_pct"] - test["top1"], "params": params, "flops": flops,
           "params_reduction_pct": 100 * (1 - params / trial["base_params"]),
           "flops_reduction_pct": 100 * (1 - flops / trial["base_flops"]),
           "baseline_epochs": 0, "joint_epochs": 0, "finetune_epochs": len(history), "method_images": 0,
           "finetune_images": phase_images(history), "budget_images": phase_images(history),
           "method_version": f"{rule}-{SCRATCH_VERSION}", "engine_version": engine_version(),
           "match_of": trial["config_hash"], "distinct_images": distinct[0] if distinct else None,
           "config_hash": scratch_key(source, rule), "wall_seconds": time.perf_counter() - t0,
           "git_commit": git_commit(), "packages": json.dumps(package_versions(), sort_keys=True),
           "rule": (f"{RULES[rule]}: {budget:,} images = the baseline's {base_images:,}" +
                    (f" x FLOPs_base / FLOPs_pruned ({trial['base_flops'] / trial['flops']:.3f})" if rule == "scratch-b" else "") +
                    f", recipe {recipe.name} stretched")}
    save_pruned(folder, plan, model)
    write_json(folder / "history.json", {"scratch": history})
    write_json(folder / "result.json", row)
    return row
