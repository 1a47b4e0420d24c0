"""One trial of a sweep, start to row: the Optuna objective (a TrialConfig from the suggested knob, `run_trial`,
the row in the results table and the study), the failures it records, and the per-study bookkeeping that lets many
workers share one study (which trials are complete, claimed or running)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
import torch
from tqdm.auto import tqdm

import methods
from bench.core.errors import Interrupted, UserError
from bench.core.faults import crash_point
from bench.core.io import scrub_url as scrub
from bench.engine.recipe import load_recipe
from bench.engine.tracking import Tracker
from bench.engine.train import Diverged, resolve_device
from bench.trial.results import ResultsTable
from bench.trial.run import TrialConfig, run_trial, trial_folder

from .config import SweepConfig
from .plan import _timm
from .profile import Profile
from .rows import failed_row, table_row
from .storage import is_active, mark_owner, requeue



@dataclass
class Objective:
    cfg: SweepConfig
    profile: Profile
    method: str
    break_even: float | None
    data: Any = field(default=None, repr=False)
    wanted: int | None = None           # the study's complete trials wanted: a trial beyond them is pruned
    low_divisor: float = 1.0            # break-even ranges reach this many times lower (budgeted search)
    fixed: bool = True                  # the profile's fixed values hold (a sweep); False: the range is searched
    flops_floor: float | None = None    # the smallest FLOPs fraction the method reaches at its scope

    def knob_range(self) -> tuple[float, float]:
        space = self.profile.methods[self.method]
        declared = {k.name: k for k in methods.get_method(self.method).knobs}[space.knob]
        values = space.values if self.fixed else None
        if space.break_even_range is not None:
            if self.break_even is None:
                raise UserError(f"{self.method}'s range is a fraction of the break-even lambda, which was not measured")
            if values is not None:  # fixed values: the range that holds them (enqueued, see fixed_values)
                return tuple(float(f"{f * self.break_even:.3g}") for f in (min(values), max(values)))
            low, high = (f * self.break_even for f in space.break_even_range)
            return low / self.low_divisor, high
        if values is not None:
            return min(values), max(values)
        low, high = space.range or (declared.low, declared.high)
        if space.knob == "flops_target" and self.flops_floor is not None and low < self.flops_floor * 1.02:
            low = min(self.flops_floor * 1.02, high)  # below the floor a target cannot be met at this scope
        return low, high

    def knob(self, trial: optuna.Trial) -> dict[str, Any]:
        space = self.profile.methods[self.method]
        declared = {k.name: k for k in methods.get_method(self.method).knobs}[space.knob]
        low, high = self.knob_range()
        value = trial.suggest_float(space.knob, low, high, log=declared.log)
        return {space.knob: float(f"{value:.3g}"), **space.options}  # 3 significant digits: readable labels

    def fixed_values(self) -> list[dict[str, float]]:
        """The profile's fixed knob values as Optuna parameters (break-even fractions scaled, rounded as `knob` rounds):
        the sweep enqueues them, and Optuna hands each to one trial instead of a suggestion."""
        space = self.profile.methods[self.method]
        scale = self.break_even if space.break_even_range is not None else 1.0
        return [{space.knob: float(f"{v * scale:.3g}")} for v in space.values or ()]

    def config(self, knobs: dict[str, Any], seed: int, scope: str | None = None) -> TrialConfig:
        """The trial of these knobs: under the paper budget a method without a training phase fine-tunes with
        its paper's recipe where the profile names one (Li et al.'s for L1); under the equal budget the engine
        gives it the images of DECORE's joint phase plus the shared fine-tuning."""
        finetune = self.profile.finetune_recipe
        if self.cfg.budget == "paper":
            finetune = self.profile.paper_finetune.get(self.method, finetune)
        return TrialConfig(self.cfg.model, self.cfg.dataset, self.method, knobs, scope or self.cfg.scope, seed,
                           self.profile.baseline_for(_timm(self.cfg.model)), self.profile.joint_recipe, finetune,
                           self.cfg.round_to, self.profile.name, self.cfg.budget, self.cfg.selection,
                           self.cfg.experiment, **self.cfg.baseline_weights())

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        mark_owner(trial)
        retry_of = trial.user_attrs.get("retry_of")  # a trial queued again: its original is not claimed, nor a twin
        if self.wanted is not None and _claimed_before(trial.study, trial.number, retry_of) >= self.wanted:
            raise optuna.TrialPruned("the study already has its trials (another worker started one at the same time)")
        knobs = self.knob(trial)
        twin = _same_knob(trial, knobs, retry_of)
        if twin is not None:  # rounding made it a config the study has: running it again would count it twice
            raise optuna.TrialPruned(f"the same knobs as trial {twin}")
        try:
            results = [run_and_record(self.cfg, self.config(knobs, seed), self.data, self.cfg.study_name(self.method),
                                      trial.number) for seed in range(self.cfg.seeds)]
        except Interrupted:  # a scheduler's signal: queued again first, then Optuna records this trial failed
            requeue(trial.study, trial._trial_id)
            raise
        ok = [r for r in results if r["status"] == "complete"]
        if not ok:
            trial.set_user_attr("reason", results[0].get("reason"))
            return float("nan"), float("nan")  # Optuna records a failed trial; the sweep goes on
        # the objective reads validation top-1 only (the test set decides nothing)
        return (sum(r["val_top1_pct"] for r in ok) / len(ok), sum(r["flops"] for r in ok) / len(ok))


class Stopped(Exception):
    """A trial stopped on purpose before it finished: `status` infeasible (over a search's budget) or pruned."""

    def __init__(self, status: str, reason: str, measured: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.status, self.measured = status, measured or {}


SUMMARY_KEYS = ("val_top1_pct", "top1_pct", "top5_pct", "budget_images", "top1_drop_pct", "params", "flops", "params_reduction_pct",
                "flops_reduction_pct", "latency_cpu_b1_ms", "base_top1_pct", "knob_value", "wall_seconds")


def tracker_for(cfg: SweepConfig) -> Tracker:
    """One Tracker per process and experiment (W&B state is per process)."""
    key = (cfg.wandb, str(cfg.folder))
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(cfg.wandb, directory=cfg.folder)
    return _TRACKERS[key]


def run_and_record(cfg: SweepConfig, tc: TrialConfig, data: Any, study: str, number: int | None, *,
                   admit: Callable[..., None] | None = None,
                   on_epoch: Callable[[str, dict[str, Any]], None] | None = None,
                   match_of: str | None = None, match_flops: float | None = None) -> dict[str, Any]:
    """run_trial with its W&B run, then one row in the results table (a failed row when training diverged).
    A matched partner (`match_of`) records its signed FLOPs gap to the DECORE trial's `match_flops`.

    `admit` and `on_epoch` (budgeted search) may raise `Stopped`: the row records its status, then it propagates.
    """
    table = ResultsTable(cfg.folder)
    device = resolve_device(cfg.device)
    folder = trial_folder(tc)
    if (folder / "result.json").is_file() and tc.key in table.finished_hashes():
        row = table.read().set_index("config_hash").loc[tc.key].to_dict()
        if match_of is not None and match_of not in str(row.get("match_of") or "").split(";"):
            # the same trial also partners this point; its gap stays the one to the first DECORE trial it matched
            gap = row.get("flops_gap_pct")
            table.upsert({**row, "config_hash": tc.key, "flops_gap_pct": _gap(row, match_flops) if pd.isna(gap) else gap,
                          "match_of": ";".join(sorted({*str(row.get("match_of") or "").split(";"), match_of} - {""}))})
        return {**row, "config_hash": tc.key}  # finished before: nothing to train, nothing to log
    config = {**tc.to_dict(), "config_hash": tc.key, "study": study, "optuna_trial": number,
              "recipes": {r: load_recipe(r).to_dict() for r in tc.recipes()}, "storage": scrub(cfg.storage_url)}
    run = tracker_for(cfg).trial(name=f"{tc.method}-{tc.key}", group=study, job_type=tc.method, config=config)

    def log_row(phase: str, row: dict[str, Any]) -> None:
        crash_point("joint" if phase == "method" else phase)
        run.log_epoch(phase, row)
        if on_epoch is not None:
            on_epoch(phase, row)

    try:
        result = run_trial(tc, device, data=data, log_row=log_row, admit=admit, finetune_test=on_epoch is not None,
                           compile=cfg.compile)
        row = table_row(result, study=study, optuna_trial=number, device=device, wandb_run_id=run.id,
                        match_of=match_of)
        row["flops_gap_pct"] = _gap(row, match_flops)
        run.finish({k: row[k] for k in SUMMARY_KEYS if row.get(k) is not None},
                   kept_channels=json.loads(row["kept_channels"]), artifact_dir=folder)
    except (Diverged, torch.cuda.OutOfMemoryError) as e:
        reason = str(e).splitlines()[0][:300]
        run.fail(reason)
        row = failed_row(tc, reason=reason, study=study, optuna_trial=number, device=device)
    except Stopped as e:
        run.fail(f"{e.status}: {e}")
        table.upsert(failed_row(tc, reason=str(e), study=study, optuna_trial=number, device=device, status=e.status,
                                **e.measured))
        tqdm.write(f"  {tc.method:7s} {json.dumps(tc.knobs, sort_keys=True)}  {e.status.upper()}: {e}")
        raise
    except BaseException as e:
        run.fail(f"{type(e).__name__}: {e}")
        raise
    table.upsert(row)
    _summary_line(row)
    return row


def _gap(row: dict[str, Any], match_flops: float | None) -> float | None:
    """100 * (the row's FLOPs - the DECORE trial's) / the DECORE trial's: negative = fewer FLOPs than DECORE."""
    if match_flops is None or row.get("flops") is None or pd.isna(row.get("flops")):
        return None
    return 100.0 * (float(row["flops"]) - match_flops) / match_flops


def _summary_line(row: dict[str, Any]) -> None:
    if row["status"] != "complete":
        tqdm.write(f"  {row['method']:7s} {row['knob_name']}={row['knob_value']}  FAILED: {row['reason']}")
        return
    value = "" if row["knob_value"] is None else f"={row['knob_value']:<10.4g}"  # None: a preset or stage ratios
    tqdm.write(f"  {row['method']:7s} {row['knob_name']}{value} seed {row['seed']}: "
               f"val top-1 {row['val_top1_pct']:6.2f}%  test top-1 {row['top1_pct']:6.2f}%  "
               f"FLOPs -{row['flops_reduction_pct']:5.1f}%  "
               f"params -{row['params_reduction_pct']:5.1f}%  ({row['wall_seconds']:.0f}s)")


_TRACKERS: dict[tuple[str, str], Tracker] = {}


_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _same_knob(trial: optuna.Trial, knobs: dict[str, Any], retry_of: int | None = None) -> int | None:
    """The number of another complete, or running, trial whose rounded knob equals this one's (not the trial this one
    runs again: its interrupted worker queued this retry while it still ran, `requeue`)."""
    for t in trial.study.get_trials(deepcopy=False, states=_STATES[:2]):
        if t.number not in (trial.number, retry_of) and {k: float(f"{v:.3g}") for k, v in t.params.items()} == {
                k: v for k, v in knobs.items() if k in t.params} and (t.state == _STATES[0] or is_active(trial.study, t)):
            return t.number
    return None


def _claimed_before(study: optuna.Study, number: int, retry_of: int | None = None) -> int:
    """Trials numbered before `number` that are complete, queued or running (and will finish or be retried), except
    the one that trial `number` runs again."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=_STATES) if t.number < number and t.number != retry_of
               and (t.state != optuna.trial.TrialState.RUNNING or is_active(study, t)))
