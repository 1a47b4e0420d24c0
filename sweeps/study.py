"""`make bench`: one Optuna multi-objective study per (experiment, method, method code version).

The experiment is everything that changes a number (model, data fingerprint, profile and its recipes, scope,
round_to, budget rule, selection split); its folder and study names carry its hash. Each study maximises
*validation* top-1 and minimises FLOPs (no decision reads the test set); a method's knob is suggested from its
declared range (DECORE's lambda on a log scale from the break-even lambda measured as its agents see the
network). By default every DECORE trial gets L1/random partners within 1% of its FLOPs at DECORE's scope, and
each seed gets a no-pruning control trained for the same budget. The objective is thin: it builds
a TrialConfig and calls the same `run_trial` the CLI's `run` calls. Finished trials are never repeated:
a rerun only tops each study up to TRIALS complete trials, and run_trial returns finished configs from disk.
Any number of workers (processes here, `make worker` elsewhere) may share one study: each starts a trial
only while the study lacks complete ones, and waits while other workers' trials run, because a trial
whose worker dies is failed (heartbeat, or a dead pid on this host) and must be run again by someone.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from tqdm.auto import tqdm

import methods
from bench.engine.baseline import get_baseline
from bench.engine.data import load_dataset, open_loaders
from bench.core.errors import UserError
from bench.core.faults import crash_point
from bench.engine.recipe import load_recipe
from bench.trial.results import ResultsTable
from bench.engine.train import Diverged, resolve_device
from bench.report.experiment import report_experiment
from bench.engine.tracking import Tracker
from bench.trial.run import (BREAK_EVEN_IMAGES, TrialConfig, measure_speedup, run_trial, smallest_flops_fraction,
                         train_accuracy, trial_folder)
from methods.decore import break_even_from_counts

from .profile import Profile, load_profile
from .rows import baseline_row, failed_row, table_row
from .storage import fail_stale, is_active, mark_owner, open_storage, recover_dead_trials, scrub
from sweeps.config import SweepConfig, validate
from sweeps.plan import _split_info, print_plan
from sweeps.plan import _timm
from sweeps.config import MATCH_METHODS_EXCLUDED

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- one trial of a study

@dataclass
class Objective:
    cfg: SweepConfig
    profile: Profile
    method: str
    break_even: float | None
    data: Any = field(default=None, repr=False)
    wanted: int | None = None           # the study's complete trials wanted: a trial beyond them is pruned
    low_divisor: float = 1.0            # break-even ranges reach this many times lower (budgeted search)
    flops_floor: float | None = None    # the smallest FLOPs fraction the method reaches at its scope

    def knob_range(self) -> tuple[float, float]:
        space = self.profile.methods[self.method]
        declared = {k.name: k for k in methods.get_method(self.method).knobs}[space.knob]
        if space.break_even_range is not None:
            if self.break_even is None:
                raise UserError(f"{self.method}'s range is a fraction of the break-even lambda, which was not measured")
            low, high = (f * self.break_even for f in space.break_even_range)
            return low / self.low_divisor, high
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
        if self.wanted is not None and _claimed_before(trial.study, trial.number) >= self.wanted:
            raise optuna.TrialPruned("the study already has its trials (another worker started one at the same time)")
        knobs = self.knob(trial)
        twin = _same_knob(trial, knobs)
        if twin is not None:  # rounding made it a config the study has: running it again would count it twice
            raise optuna.TrialPruned(f"the same knobs as trial {twin}")
        results = [run_and_record(self.cfg, self.config(knobs, seed), self.data, self.cfg.study_name(self.method),
                                  trial.number) for seed in range(self.cfg.seeds)]
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
_TRACKERS: dict[tuple[str, str], Tracker] = {}


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


# ---------------------------------------------------------------- the sweep

def run_sweep(cfg: SweepConfig) -> Path:
    setup = start_sweep(cfg)
    run_studies(cfg, setup)
    finish_sweep(cfg, setup.profile, setup.data)
    return cfg.folder


@dataclass
class Setup:
    """What every stage of a sweep needs after its start: the profile, trials per method, data, and the knob
    ranges' anchors (FLOPs floors of flops_target methods, DECORE's break-even lambda)."""
    profile: Profile
    trials: int
    data: Any
    floors: dict[str, float | None]
    break_even: float | None


def start_sweep(cfg: SweepConfig, plan: bool = True) -> Setup:
    """Check the input, print the plan, write experiment.json, and train (or read from the cache) each seed's
    baseline; a cluster's workers start with plan=False after a first job trained the baselines."""
    profile = validate(cfg)
    trials = cfg.trials if cfg.trials is not None else profile.trials
    device = resolve_device(cfg.device)
    data = None if cfg.dataset.startswith("imagefolder:") else load_dataset(cfg.dataset, selection=cfg.selection)
    floors = {m: smallest_flops_fraction(cfg.model, m, cfg.scope, data, cfg.round_to) if data is not None else None
              for m in cfg.methods if profile.methods[m].knob == "flops_target"}
    open_storage(cfg.storage_url)  # a bad URL or a server that is down fails here, before anything trains
    if plan:
        print_plan(cfg, profile, trials, device, data)
    write_experiment(cfg, data)

    measured = [prepare_baseline(cfg, profile, device, data, seed)[1] for seed in range(cfg.seeds)]
    break_even = (sum(measured) / len(measured)) if measured and None not in measured else None
    if break_even is not None:
        for m in cfg.methods:
            if profile.methods[m].break_even_range is not None:
                low, high = Objective(cfg, profile, m, break_even).knob_range()
                print(f"  {m}: break-even lambda {break_even:.3g} (mean of {len(measured)} seed(s)) -> "
                      f"{profile.methods[m].knob} searched in [{low:.3g}, {high:.3g}] (log)")
    return Setup(profile, trials, data, floors, break_even)


def run_studies(cfg: SweepConfig, setup: Setup) -> None:
    """Each method's study topped up to `setup.trials` complete trials (by cfg.workers processes here)."""
    storage = open_storage(cfg.storage_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = setup.trials
    bar = tqdm(total=trials * len(cfg.methods), desc="sweep", unit="trial", disable=None)
    for method in cfg.methods:
        study = optuna.create_study(study_name=cfg.study_name(method), storage=storage, load_if_exists=True,
                                    directions=["maximize", "minimize"])
        study.sampler = _sampler(cfg, len(study.trials), salt=_process_salt(cfg))
        recovered = recover_dead_trials(study)
        if recovered:
            tqdm.write(f"{method}: trials {recovered} were interrupted; they run again")
        done = _complete(study)
        bar.update(min(done, trials))
        remaining = max(trials - done, 0)
        if remaining:
            objective = Objective(cfg, setup.profile, method, setup.break_even, setup.data, wanted=trials,
                                  flops_floor=setup.floors.get(method))
            _optimize(cfg, study, objective, remaining, bar)
    bar.close()


def finish_sweep(cfg: SweepConfig, profile: Profile, data: Any) -> None:
    """After the studies: matched partners, controls, the measuring pass and the report."""
    if cfg.match == "decore":
        run_matches(cfg, profile, data)
    if cfg.control:
        run_control(cfg, profile, data)
    if cfg.scratch:
        run_scratch_controls(cfg, profile, data)
    measure_speedups(cfg)
    write_report(cfg)


def measure_speedups(cfg: SweepConfig) -> None:
    """The measuring pass: after every trial of the sweep has trained (no training process of this sweep runs
    now), each finished trial's pruned model is timed against the unpruned architecture, interleaved, on one
    thread (bench.engine.measure.speedup); its latency columns go into the results table."""
    table = ResultsTable(cfg.folder)
    df = table.read()
    todo = df[(df["row_type"] == "trial") & (df["status"] == "complete") & df["speedup_b1"].isna()]
    for _, row in tqdm(list(todo.iterrows()), desc="latency", unit="model", disable=None):
        folder = cfg.folder / "trials" / f"{row['method']}-{row['config_hash']}"
        if (folder / "plan.json").is_file():
            table.upsert({**row.to_dict(), **measure_speedup(folder, form=cfg.deploy_form)})


def write_experiment(cfg: SweepConfig, data: Any) -> None:
    """experiment.json: the identity behind the folder's hash, readable (what was compared, on what data)."""
    from bench.core.io import write_json

    path = cfg.folder / "experiment.json"
    if not path.is_file():
        write_json(path, {"experiment": cfg.experiment, "model": cfg.model, "dataset": cfg.dataset,
                          "protocol": cfg.protocol(), "identity": cfg.identity(),
                          "data": _split_info(cfg, data), "deploy_form": cfg.deploy_form,
                          **({"alignment": cfg.alignment} if cfg.alignment else {})})


def prepare_baseline(cfg: SweepConfig, profile: Profile, device: torch.device, data: Any, seed: int) -> tuple[Any, float | None]:
    """The (cached) baseline, its row in the results table, and DECORE's break-even lambda for this seed's
    baseline, measured as the agents see it (train mode, training augmentation, gates open) on the joint
    phase's training images; None when no method of the sweep searches a break-even range."""
    base = get_baseline(cfg.model, cfg.dataset, load_recipe(profile.baseline_for(_timm(cfg.model))), seed=seed,
                        device=device, data=data, selection=cfg.selection, **cfg.baseline_weights())
    ResultsTable(cfg.folder).upsert(baseline_row(base, cfg.folder.name, profile.name, seed, cfg.protocol()))
    if not any(profile.methods[m].break_even_range is not None for m in cfg.methods):
        return base, None
    joint = load_recipe(profile.joint_recipe)
    loader = open_loaders(cfg.dataset, joint.batch_size, device, seed=seed, subset_per_class=joint.subset_per_class,
                          data=data, selection=cfg.selection, model=_timm(cfg.model)).train
    correct, seen = train_accuracy(base.model, loader, device, BREAK_EVEN_IMAGES)
    try:
        break_even, rule = break_even_from_counts(correct, seen)
    except methods.KnobError as e:
        raise UserError(f"{e}: the training split is too small for DECORE's break-even lambda") from None
    print(f"baseline seed {seed}: validation top-1 {base.meta.get('val', base.meta['test'])['top1']:.2f}%, "
          f"training accuracy as the agents see it {100 * correct / seen:.2f}% ({correct}/{seen} images, train mode, "
          f"augmented) -> DECORE break-even lambda {break_even:.3g}" + ("" if rule == "measured" else f" (rule: {rule})"))
    return base, break_even


def write_report(cfg: SweepConfig) -> None:
    """Plots and tables from the results table, mirrored into one W&B summary run; never fails the sweep."""
    try:
        written = report_experiment(cfg.folder)
    except UserError as e:
        tqdm.write(f"report skipped: {e}")
        return
    tqdm.write(f"report: {cfg.folder / 'README.md'} ({', '.join(sorted(p.name for p in written.values()))})")
    tracker_for(cfg).sweep_summary(cfg.folder.name, {"pareto": written["pareto.png"]},
                                   {"runs": ResultsTable(cfg.folder).read()})


def _sampler(cfg: SweepConfig, study_trials: int = 0, worker: int = 0, salt: int = 0) -> optuna.samplers.BaseSampler:
    # samplers are not stored with the study: every worker builds its own. The seed moves with the trials
    # already in the study and the worker index, so a resumed sweep or a second worker does not replay
    # the first suggestions of a fresh sampler.
    seed = (cfg.sampler_seed + 1000 * worker + study_trials + salt) % 2**31
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True)


def _process_salt(cfg: SweepConfig) -> int:
    """0 for a sweep on its own storage (reproducible); host and pid on a storage given by URL, which
    workers on other machines may join at the same moment (equal seeds would suggest equal knobs)."""
    return 0 if cfg.storage is None else zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())


_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _same_knob(trial: optuna.Trial, knobs: dict[str, Any]) -> int | None:
    """The number of another complete, or running, trial whose rounded knob equals this one's."""
    for t in trial.study.get_trials(deepcopy=False, states=_STATES[:2]):
        if t.number != trial.number and {k: float(f"{v:.3g}") for k, v in t.params.items()} == {
                k: v for k, v in knobs.items() if k in t.params} and (t.state == _STATES[0] or is_active(trial.study, t)):
            return t.number
    return None


def _claimed_before(study: optuna.Study, number: int) -> int:
    """Trials numbered before `number` that are complete, queued or running (and will finish or be retried)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=_STATES) if t.number < number
               and (t.state != optuna.trial.TrialState.RUNNING or is_active(study, t)))


POLL_S, MAX_PRUNED = 2.0, 20


def work_on(study: optuna.Study, objective: Objective, attempts: int, on_trial: Callable[[], None] = lambda: None) -> None:
    """Run trials until the study has `objective.wanted` complete ones, at most `attempts` of them here.

    While the study has enough trials complete or running, wait on the running ones of other workers: if
    one's worker dies, its trial fails (heartbeat, or dead pid on this host), is queued again and run here.
    A trial that fails by itself (diverged) counts against `attempts`, so a hopeless sweep ends; one pruned
    before it trained (a duplicate knob, or surplus) does not, up to MAX_PRUNED of them.
    """
    wanted, pruned = objective.wanted or attempts, 0
    while attempts > 0 and pruned < MAX_PRUNED:
        recover_dead_trials(study)
        fail_stale(study)
        trials = study.get_trials(deepcopy=False, states=_STATES)
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and is_active(study, t)]
        if waiting or complete + len(running) < wanted:
            states: list[optuna.trial.TrialState] = []
            study.optimize(objective, n_trials=1, catch=(), callbacks=[lambda s, t: states.append(t.state)])
            if states == [optuna.trial.TrialState.PRUNED]:
                pruned += 1
                continue
            attempts -= 1
            on_trial()
        elif running:
            time.sleep(POLL_S)
        else:
            return


def _optimize(cfg: SweepConfig, study: optuna.Study, objective: Objective, remaining: int, bar: tqdm) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.workers == 1:
        work_on(study, objective, remaining, lambda: bar.update(1))
        return
    shares = [remaining // cfg.workers + (i < remaining % cfg.workers) for i in range(cfg.workers)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(cfg, objective.method, objective.break_even, n, objective.wanted, i,
                                               objective.flops_floor),
                         daemon=False)
             for i, n in enumerate(shares) if n]
    for p in procs:
        p.start()
    seen = _complete(study)
    while any(p.is_alive() for p in procs):
        time.sleep(2)
        now = _complete(study)
        bar.update(now - seen)
        seen = now
    bar.update(_complete(study) - seen)
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise UserError(f"{len(failed)} sweep worker(s) exited with codes {failed}: see their messages above")


def _worker(cfg: SweepConfig, method: str, break_even: float | None, n_trials: int, wanted: int | None,
            index: int, flops_floor: float | None = None) -> None:
    """A worker process: joins the study and runs its share of trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    profile = load_profile(cfg.profile)
    data = None if cfg.dataset.startswith("imagefolder:") else load_dataset(cfg.dataset, selection=cfg.selection)
    study = optuna.load_study(study_name=cfg.study_name(method), storage=open_storage(cfg.storage_url))
    study.sampler = _sampler(cfg, len(study.trials), index + 1, salt=_process_salt(cfg))
    work_on(study, Objective(cfg, profile, method, break_even, data, wanted, flops_floor=flops_floor), n_trials)


def run_matches(cfg: SweepConfig, profile: Profile, data: Any) -> None:
    """Every other method of the sweep (with a flops_target knob) at every finished DECORE trial's FLOPs (a
    fraction of its baseline's, met within 1% by the closest plan, at or below it when one exists), at the DECORE
    trial's scope (a method with a `match_scope`, slimming, at its own); rows record `match_of` and the signed
    `flops_gap_pct`."""
    df = ResultsTable(cfg.folder).read()
    done = df[(df["method"] == "decore") & (df["status"] == "complete") & (df["row_type"] == "trial")]
    partners = [m for m in cfg.methods if m not in MATCH_METHODS_EXCLUDED
                and any(k.name == "flops_target" for k in methods.get_method(m).knobs)]
    for _, row in done.iterrows():
        # rounded down: a partner at or below the target is at or below DECORE's FLOPs
        target = math.floor(1e6 * float(row["flops"]) / float(row["base_flops"])) / 1e6
        if target >= 0.999:
            continue  # DECORE removed nothing: the no-pruning control is its partner
        for method in partners:
            scope = methods.get_method(method).match_scope or str(row["scope"])  # slimming: its own scope
            tc = Objective(cfg, profile, method, None, data).config({"flops_target": target}, int(row["seed"]),
                           scope=scope)
            try:
                run_and_record(cfg, tc, data, cfg.study_name(method) + "-match", None, match_of=str(row["config_hash"]),
                               match_flops=float(row["flops"]))
            except UserError as e:  # e.g. a FLOPs target this method cannot reach: no partner, said, the sweep goes on
                tqdm.write(f"  {method:7s} no partner for DECORE trial {row['config_hash']} at {target:g} of the FLOPs: {e}")


def run_scratch_controls(cfg: SweepConfig, profile: Profile, data: Any) -> None:
    """The sweep's scratch controls (Scratch-B: the baseline's images x FLOPs_base / FLOPs_pruned; Scratch-E: the
    baseline's images) of every finished DECORE trial: its pruned architecture re-initialised and trained from
    scratch (bench.trial.scratch); rows of method `scratch-b` / `scratch-e` name the trial in match_of."""
    from bench.trial.scratch import run_scratch

    df = ResultsTable(cfg.folder).read()
    done = df[(df["method"] == "decore") & (df["status"] == "complete") & (df["row_type"] == "trial")]
    device = resolve_device(cfg.device)
    for _, row in done.iterrows():
        tc = Objective(cfg, profile, "decore", None, data).config(json.loads(row["knobs"]), int(row["seed"]))
        if tc.key != row["config_hash"]:
            tqdm.write(f"scratch control: trial {row['config_hash']} is not of this sweep's configuration; skipped")
            continue
        for rule in cfg.scratch:
            result = run_scratch(tc, device, data, rule)
            table = ResultsTable(cfg.folder)
            if result["config_hash"] not in table.finished_hashes():
                table.upsert(table_row(result, study=f"{cfg.experiment}-{rule}", optuna_trial=None, device=device,
                                       match_of=result["match_of"]))
                tqdm.write(f"  {rule} of {row['config_hash']} seed {row['seed']}: top-1 {result['top1_pct']:6.2f}% "
                           f"(the pruned trial: {float(row['top1_pct']):.2f}%)  {result['rule']}")


def run_control(cfg: SweepConfig, profile: Profile, data: Any) -> None:
    """The no-pruning control, once per seed: the baseline trained on for the same budget as every method."""
    for seed in range(cfg.seeds):
        tc = Objective(cfg, profile, "control", None, data).config({}, seed, scope="all")
        run_and_record(cfg, tc, data, f"{cfg.experiment}-control", None)


# ---------------------------------------------------------------- the plan printed before training


