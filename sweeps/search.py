"""`make search`: the most accurate pruned model of each method under a FLOPs, params or latency budget.

One single-objective Optuna study per method maximises top-1. The budget is an Optuna constraint
(`Trial.set_constraint`, which TPESampler reads): a trial over budget stays in the study as infeasible and steers the
sampler, but is not fine-tuned (its cost is known as soon as its channels are chosen). Hopeless trials
stop early: validation top-1 is reported after every fine-tune epoch to a median (or Hyperband) pruner.

- DECORE searches lambda on a log range around the baseline's break-even lambda, reaching 5x lower than the sweep's; with
  `decore_per_stage` also one lambda factor per stage (named option `lambda_per_stage`, beyond the paper).
- L1 and random take the scale of pruning that meets the budget (bisection on the real pruned model)
  and search what is left: a uniform ratio, or per-stage shares of it.
- A profile's fixed knob values and per-method trial counts are the sweep's (they design a comparison): a search
  runs the profile's `trials` (or `--trials`) for every method, each knob over its range.

A winner is saved as plan + weights (`bench.deploy.pruned.load_pruned(folder)` rebuilds it), marked in the
results table's `budget_winner` column and described in `<experiment>/search/<budget>/README.md`.
Trials are ordinary trials of the experiment: same folders, same cache, same results table.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna
import torch
import torch.nn as nn
from tqdm.auto import tqdm

import methods
from bench.core.errors import UserError
from bench.core.io import scrub_url as scrub, write_json
from bench.deploy.pruned import load_pruned, save_pruned
from bench.engine.data import load_dataset
from bench.engine.measure import count_flops, count_params
from bench.engine.recipe import load_recipe
from bench.engine.train import resolve_device
from bench.trial.results import ResultsTable
from bench.trial.run import trial_folder
from methods.core import KeepPlan, channel_groups, prune_model
from methods.scored import stage_of

from .profile import Profile
from .config import validate
from .objective import Objective, Stopped, run_and_record
from .storage import mark_owner, open_storage, recover_dead_trials
from .study import prepare_baseline
from sweeps.budget import Budget, fmt, measure_cost, parse_budget, row_cost
from sweeps.search_report import _mark, _plain, unreachable_message, write_search_report
from sweeps.budget import SearchConfig, Setup


MAX_RATIO = 0.99      # L1/random: the most any group is pruned (a group keeps at least one channel anyway)
BISECT_STEPS = 14
DOWN_FACTOR = 5.0     # DECORE in a search: lambda from break_even_range[0] / DOWN_FACTOR (more compression)
PRUNERS = ("median", "hyperband", "none")


# ---------------------------------------------------------------- the search


@dataclass
class SearchObjective:
    setup: Setup
    method: str
    sweep_objective: Objective          # the sweep's knob ranges and TrialConfig builder
    stages: int
    planner: methods.Context | None     # L1/random: plans are cheap, costed before anything trains

    def __call__(self, trial: optuna.Trial) -> float:
        mark_owner(trial)
        tc = self.sweep_objective.config(self.knobs(trial), 0)
        trial.set_user_attr("config_hash", tc.key)
        trial.set_user_attr("trial_folder", str(trial_folder(tc)))
        s = self.setup
        try:
            row = run_and_record(s.cfg.sweep, tc, s.data, s.cfg.study_name(self.method), trial.number,
                                 admit=lambda plan, model: self.admit(trial, plan, model),
                                 on_epoch=lambda phase, r: self.on_epoch(trial, phase, r))
        except Stopped as e:
            if e.status == "pruned":
                raise optuna.TrialPruned(str(e)) from None
            return 0.0  # infeasible: not fine-tuned; TPE ranks infeasible trials by their violation only
        if row["status"] != "complete":
            trial.set_user_attr("reason", row.get("reason"))
            return float("nan")  # Optuna records a failed trial; the search goes on
        if "budget_value" not in trial.user_attrs:  # finished before (the trial cache): judge its row
            self._judge(trial, row_cost(s.budget.kind, row, trial_folder(tc)))
        return float(row["val_top1_pct"])  # validation: the test set decides nothing

    # -- the search space

    def knobs(self, trial: optuna.Trial) -> dict[str, Any]:
        if methods.get_method(self.method).trains:
            knobs = self.sweep_objective.knob(trial)  # with low_divisor: lambdas that compress more
            if self.setup.cfg.decore_per_stage and self.stages > 1:
                factors = [trial.suggest_float(f"lambda_factor_{i + 1}", 0.25, 4.0, log=True) for i in range(self.stages)]
                knobs["lambda_per_stage"] = ",".join(f"{f:.3g}" for f in factors)
            return knobs
        layout = trial.suggest_categorical("layout", ["uniform", "per_stage"]) if self.stages > 1 else "uniform"
        shares = [1.0] * self.stages
        if layout == "per_stage":
            shares = [trial.suggest_float(f"stage_share_{i + 1}", 0.1, 1.0) for i in range(self.stages)]
        ratios = self.ratios_for(shares)
        trial.set_user_attr("ratios", ratios)
        options = self.setup.profile.methods[self.method].options
        if layout == "uniform":
            return {"ratio": ratios[0], **options}
        return {"stage_ratios": ",".join(f"{r:g}" for r in ratios), **options}

    def ratios_for(self, shares: list[float]) -> list[float]:
        """Per-stage ratios min(t * share, MAX_RATIO) at the smallest t that meets the budget (bisection on
        the pruned model; cost falls as t grows). If even the largest t cannot, that plan is returned and
        `admit` records the trial as infeasible with what it reached."""
        def ratios(t: float) -> list[float]:  # rounded up (more pruning), so rounding never breaks the budget
            return [min(math.ceil(min(t * s, MAX_RATIO) * 1e4) / 1e4, MAX_RATIO) for s in shares]

        lo, hi = 0.0, MAX_RATIO / min(shares)
        if self._cost(ratios(lo)) <= self.setup.limit:
            return ratios(lo)
        if self._cost(ratios(hi)) > self.setup.limit:
            return ratios(hi)
        for _ in range(BISECT_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self._cost(ratios(mid)) <= self.setup.limit else (mid, hi)
        return ratios(hi)

    def _cost(self, ratios: list[float]) -> float:
        assert self.planner is not None
        plan = methods.get_method(self.method).select(self.planner, stage_ratios=ratios).plan
        return measure_cost(self.setup.budget.kind, prune_model(self.setup.base.model, plan), self.setup.input_size,
                            self.setup.device, self.setup.base.model)

    # -- hooks inside the trial

    def admit(self, trial: optuna.Trial, plan: KeepPlan, pruned: nn.Module) -> None:
        """Before fine-tuning: measure the budgeted cost; over budget -> infeasible, not fine-tuned."""
        s = self.setup
        flops, params = count_flops(pruned, s.input_size), count_params(pruned)
        kept = {gid: [len(k), plan.units[gid]] for gid, k in plan.keep.items()}
        trial.set_user_attr("flops", flops)
        trial.set_user_attr("params", params)
        value = measure_cost(s.budget.kind, pruned, s.input_size, s.device, s.base.model)
        if not self._judge(trial, value):
            raise Stopped("infeasible", f"{s.budget.kind} {fmt(s.budget.kind, value)} is over the budget "
                          f"{fmt(s.budget.kind, s.limit)}", self._measured(flops, params, kept))

    def on_epoch(self, trial: optuna.Trial, phase: str, row: dict[str, Any]) -> None:
        """After every fine-tune epoch: report validation top-1; the pruner may stop the trial before its last epoch
        (after the last one there is nothing left to save: the finished model is kept and judged)."""
        if phase != "finetune" or "val_top1" not in row:
            return
        trial.report(float(row["val_top1"]), int(row["epoch"]))  # validation: the test set decides nothing
        if not row.get("final") and trial.should_prune():
            a = trial.user_attrs
            raise Stopped("pruned", f"validation top-1 {row['val_top1']:.2f}% after fine-tune epoch {row['epoch']} is "
                          "below the pruner's bar", self._measured(a.get("flops"), a.get("params")))

    def _judge(self, trial: optuna.Trial, value: float) -> bool:
        """The budget as an Optuna constraint (relative excess, <= 0 feasible): TPE ranks infeasible trials by it."""
        constraint = (value - self.setup.limit) / self.setup.limit
        trial.set_user_attr("budget_value", value)
        trial.set_constraint("budget", constraint)
        return constraint <= 0

    def _measured(self, flops: int | None, params: int | None, kept: dict | None = None) -> dict[str, Any]:
        b = self.setup.base_cost
        out: dict[str, Any] = {"base_flops": int(b["flops"]), "base_params": int(b["params"]),
                               "base_top1_pct": self.setup.base.meta["test"]["top1"]}
        if flops is not None and params is not None:
            out.update(flops=flops, params=params, flops_reduction_pct=100 * (1 - flops / b["flops"]),
                       params_reduction_pct=100 * (1 - params / b["params"]))
        if kept is not None:
            out["kept_channels"] = json.dumps(kept)
        return out


def check(cfg: SearchConfig) -> tuple[Budget, Profile]:
    """Everything typed by the user, checked before anything trains or is written."""
    budget = parse_budget(cfg.budget)
    profile = validate(cfg.sweep)
    if cfg.pruner not in PRUNERS:
        raise UserError(f"--pruner {cfg.pruner!r} is unknown: use one of {', '.join(PRUNERS)}")
    return budget, profile


def build_pruner(name: str, profile: Profile) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        epochs = max(int(load_recipe(profile.finetune_recipe).epochs), 1)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def run_search(cfg: SearchConfig, pruner: optuna.pruners.BasePruner | None = None) -> dict[str, dict[str, Any] | None]:
    """Run (or top up) every method's study; save, mark and report the winners. Returns method -> winner."""
    budget, profile = check(cfg)
    trials = cfg.trials if cfg.trials is not None else profile.trials
    device = resolve_device(cfg.device)
    storage = open_storage(cfg.sweep.storage_url)
    data = None if cfg.dataset.startswith("imagefolder:") else load_dataset(cfg.dataset, selection=cfg.sweep.selection)
    base, break_even = prepare_baseline(cfg.sweep, profile, device, data, 0)
    base.model.cpu().eval()
    base_cost = {"flops": float(base.meta["flops"]), "params": float(base.meta["params"])}
    if budget.kind == "latency_ms":
        base_cost["latency_ms"] = measure_cost("latency_ms", base.model, tuple(base.meta["input_size"]), device)
    setup = Setup(cfg, budget, profile, base, base_cost, budget.limit(base_cost), device, data)
    print(f"search: {cfg.sweep.folder.name}, budget {budget.describe(base_cost)}; {trials} trials per method "
          f"({', '.join(cfg.methods)}), pruner {cfg.pruner}, storage {scrub(cfg.sweep.storage_url)}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    winners: dict[str, dict[str, Any] | None] = {}
    counts: dict[str, int] = {}
    for method in cfg.methods:
        study = optuna.create_study(study_name=cfg.study_name(method), storage=storage, load_if_exists=True,
                                    direction="maximize", pruner=pruner or build_pruner(cfg.pruner, profile))
        # samplers are not stored: the seed moves with the trials already there, so a resume does not replay
        # DECORE: few random start-up trials, so that with a small number of trials the constraint steers early
        # (its one knob maps monotonically onto compression); L1/random start from the uniform plan at the budget
        startup = min(4, max(1, trials // 2)) if methods.get_method(method).trains else 4
        study.sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed + len(study.trials), n_startup_trials=startup,
                                                   multivariate=True)
        objective = _objective(setup, method, break_even)
        recovered = recover_dead_trials(study)
        if recovered:
            tqdm.write(f"{method}: trials {recovered} were interrupted; they run again")
        if not study.trials and objective.planner is not None and objective.stages > 1:
            study.enqueue_trial({"layout": "uniform"})  # the plain answer first: the uniform ratio at the budget
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
        if trials > done:
            study.optimize(objective, n_trials=trials - done, catch=())
        winners[method] = save_winner(setup, method, study)
        counts = {k: counts.get(k, 0) + v for k, v in trial_counts(study).items()}
    write_search_report(setup, winners)
    if not any(winners.values()):
        raise UserError(unreachable_message(setup, counts))
    return winners


def _objective(setup: Setup, method: str, break_even: float | None) -> SearchObjective:
    m = methods.get_method(method)
    scope = setup.cfg.scope or m.default_scope
    model = copy.deepcopy(setup.base.model)
    groups = channel_groups(model, torch.randn(1, *setup.input_size), scope, name=setup.base.spec.model)
    stages = 1 + max((stage_of(g.id) for g in groups), default=0)
    planner = None
    if not m.trains:
        planner = methods.Context(model, groups, setup.base.spec.model, {"num_classes": setup.base.meta["num_classes"]},
                                  setup.input_size, torch.device("cpu"), 0)
    return SearchObjective(setup, method, Objective(setup.cfg.sweep, setup.profile, method, break_even, setup.data,
                                                     low_divisor=DOWN_FACTOR, fixed=False),
                           stages, planner)


# ---------------------------------------------------------------- winners and the report

def trial_counts(study: optuna.Study) -> dict[str, int]:
    """complete (feasible), infeasible, pruned, failed: as the results table records them."""
    states = optuna.trial.TrialState
    out = {"complete": 0, "infeasible": 0, "pruned": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == states.COMPLETE:
            out["infeasible" if t.constraints.get("budget", 0.0) > 0 else "complete"] += 1
        elif t.state == states.PRUNED:
            out["pruned"] += 1
        elif t.state == states.FAIL:
            out["failed"] += 1
    return out


def save_winner(setup: Setup, method: str, study: optuna.Study) -> dict[str, Any] | None:
    """The best feasible complete trial: its model saved as plan + weights, its row marked in the table."""
    try:
        best = study.best_trial  # Optuna picks among feasible trials only (constraints <= 0)
    except ValueError:
        return None
    table = ResultsTable(setup.cfg.sweep.folder)
    df = table.read()
    rows = df[df["config_hash"] == best.user_attrs["config_hash"]]
    if rows.empty:
        return None
    row = _plain(rows.iloc[0].to_dict())
    folder = setup.cfg.folder / method
    plan, model = load_pruned(best.user_attrs["trial_folder"])
    save_pruned(folder, plan, model, export=True)  # deployable: model.safetensors + model.onnx (checked)
    _mark(table, df, method, row["config_hash"], setup.budget.text)
    winner = {"method": method, "budget": setup.budget.text, "limit": setup.limit,
              "budget_value": best.user_attrs["budget_value"], "found_at_trial": best.number + 1,
              "trials": len(study.trials), **trial_counts(study), "folder": str(folder), "row": row}
    write_json(folder / "winner.json", winner)
    return winner
