"""Result rows for the results table: trials, failed trials and baselines, in bench.trial.results.COLUMNS."""
from __future__ import annotations

import json
from typing import Any

import torch

import methods
from bench.engine.baseline import Baseline
from bench.core.version import engine_version
from bench.core.env import device_name, git_commit, package_versions
from bench.core.io import config_hash
from bench.trial.results import COLUMNS
from bench.trial.run import TrialConfig, primary_knob


def table_row(result: dict[str, Any], *, study: str, optuna_trial: int | None, device: torch.device,
              wandb_run_id: str | None = None, match_of: str | None = None) -> dict[str, Any]:
    row = {k: v for k, v in result.items() if k in COLUMNS}
    row.update(study=study, optuna_trial=optuna_trial, device=device_name(device), wandb_run_id=wandb_run_id,
               match_of=match_of)
    return row


def failed_row(tc: TrialConfig, *, reason: str, study: str, optuna_trial: int | None, device: torch.device,
               status: str = "failed", **measured: Any) -> dict[str, Any]:
    """A trial that did not finish: failed, or (budgeted search) infeasible or pruned, with what was measured."""
    knob_name, knob_value = primary_knob(tc.knobs)
    return {"experiment": tc.experiment_name, "row_type": "trial",
            "model": tc.model, "dataset": tc.dataset, "profile": tc.profile, "method": tc.method, "scope": tc.scope,
            "knob_name": knob_name, "knob_value": knob_value, "knobs": json.dumps(tc.knobs, sort_keys=True),
            "seed": tc.seed, "status": status, "reason": reason, "config_hash": tc.key, "study": study,
            "optuna_trial": optuna_trial, "device": device_name(device), "round_to": tc.round_to,
            "budget": tc.budget, "selection": tc.selection, "data_fingerprint": tc.data_fingerprint,
            "engine_version": engine_version(), "method_version": methods.code_version(tc.method),
            "git_commit": git_commit(), "packages": json.dumps(package_versions(), sort_keys=True), **measured}


def baseline_row(base: Baseline, experiment: str, profile: str, seed: int,
                 protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    m = base.meta
    val = m.get("val", {}).get("top1")
    return {"experiment": experiment, "row_type": "baseline", "model": base.spec.model, "dataset": base.spec.dataset,
            "profile": profile, "method": "baseline", "seed": seed, "status": "complete",
            "val_top1_pct": val, "base_val_top1_pct": val, "selection": base.spec.selection,
            "budget": (protocol or {}).get("budget"), "data_fingerprint": base.spec.data_fingerprint,
            "top1_pct": m["test"]["top1"], "top5_pct": m["test"]["top5"], "top1_drop_pct": 0.0,
            "params": m["params"], "flops": m["flops"], "params_reduction_pct": 0.0, "flops_reduction_pct": 0.0,
            "base_top1_pct": m["test"]["top1"], "base_top5_pct": m["test"]["top5"], "base_params": m["params"],
            "base_flops": m["flops"], "baseline_epochs": base.spec.recipe.epochs if m["source"] == "trained" else 0,
            "wall_seconds": m.get("train_seconds"), "config_hash": "baseline-" + config_hash(base.spec.to_dict()),
            "git_commit": m["environment"].get("git_commit"), "device": m["environment"].get("device"),
            "packages": json.dumps(m["environment"].get("packages", {}), sort_keys=True)}
