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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm.auto import tqdm

import methods
from bench.core.errors import UserError
from bench.deploy.speed import measure_speedup
from bench.engine.baseline import get_baseline
from bench.engine.data import load_dataset, open_loaders
from bench.engine.recipe import load_recipe
from bench.engine.train import resolve_device
from bench.trial.results import ResultsTable
from bench.trial.run import BREAK_EVEN_IMAGES, smallest_flops_fraction, train_accuracy
from methods.decore import break_even_from_counts

from .config import MATCH_METHODS_EXCLUDED, SweepConfig, validate
from .objective import Objective, _STATES, _complete, run_and_record, tracker_for
from .plan import _split_info, _timm, print_plan
from .profile import Profile, load_profile
from .rows import baseline_row, table_row
from .storage import fail_stale, is_active, open_storage, recover_dead_trials


log = logging.getLogger(__name__)


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
    trials: int | None  # the command line's, for every method; None: each method's own (Profile.trials_for)
    data: Any
    floors: dict[str, float | None]
    break_even: float | None


def start_sweep(cfg: SweepConfig, plan: bool = True) -> Setup:
    """Check the input, print the plan, write experiment.json, and train (or read from the cache) each seed's
    baseline; a cluster's workers start with plan=False after a first job trained the baselines."""
    profile = validate(cfg)
    trials = cfg.trials
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
    """Each method's study topped up to its complete trials (by cfg.workers processes here); a method with fixed knob
    values gets them enqueued, one trial each."""
    storage = open_storage(cfg.storage_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = {m: setup.profile.trials_for(m, setup.trials) for m in cfg.methods}
    bar = tqdm(total=sum(counts.values()), desc="sweep", unit="trial", disable=None)
    for method in cfg.methods:
        trials = counts[method]
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
            for params in objective.fixed_values():
                study.enqueue_trial(params, skip_if_exists=True)
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
    if cfg.report:
        write_report(cfg)
    else:
        tqdm.write(f"report: not written (--no-report); python -m bench report {cfg.folder} writes it")


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
    correct, seen = _break_even_counts(cfg, profile, device, data, seed, base)
    try:
        break_even, rule = break_even_from_counts(correct, seen)
    except methods.KnobError as e:
        raise UserError(f"{e}: the training split is too small for DECORE's break-even lambda") from None
    print(f"baseline seed {seed}: validation top-1 {base.meta.get('val', base.meta['test'])['top1']:.2f}%, "
          f"training accuracy as the agents see it {100 * correct / seen:.2f}% ({correct}/{seen} images, train mode, "
          f"augmented) -> DECORE break-even lambda {break_even:.3g}" + ("" if rule == "measured" else f" (rule: {rule})"))
    return base, break_even


BREAK_EVEN_FILE = "break_even.json"


def _break_even_counts(cfg: SweepConfig, profile: Profile, device: torch.device, data: Any, seed: int,
                       base: Any) -> tuple[int, int]:
    """The baseline's training accuracy as the agents see it, measured once per experiment, seed and baseline and
    recorded in the folder: every later process (a resumed sweep, a cluster's workers) reads the same counts, so a
    profile's fixed lambdas (fractions of the break-even lambda) are the same numbers in every process."""
    from bench.core.io import read_json, write_json

    path = cfg.folder / BREAK_EVEN_FILE
    recorded = read_json(path) if path.is_file() else {}
    entry = recorded.get(str(seed))
    if entry and entry.get("baseline") == base.spec.key:
        return int(entry["correct"]), int(entry["seen"])
    joint = load_recipe(profile.joint_recipe)
    loader = open_loaders(cfg.dataset, joint.batch_size, device, seed=seed, subset_per_class=joint.subset_per_class,
                          data=data, selection=cfg.selection, model=_timm(cfg.model)).train
    correct, seen = train_accuracy(base.model, loader, device, BREAK_EVEN_IMAGES)
    recorded = read_json(path) if path.is_file() else {}
    write_json(path, {**recorded, str(seed): {"baseline": base.spec.key, "correct": correct, "seen": seen}})
    return correct, seen


def write_report(cfg: SweepConfig) -> None:
    """Plots and tables from the results table, mirrored into one W&B summary run; never fails the sweep."""
    from bench.report.experiment import report_experiment  # matplotlib and scipy load when a report is written

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


def share_cores(workers: int) -> int:
    """Give this process's torch its share of the cores when `workers` processes train side by side (unless the user
    set OMP_NUM_THREADS): two workers of two threads each on two cores spin against each other and train about 3x
    slower together than two workers of one thread (measured: 183 vs 543 img/s, ResNet-20, batch 64). Returns the
    thread count."""
    if workers > 1 and not os.environ.get("OMP_NUM_THREADS"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // workers))
    return torch.get_num_threads()


def _worker(cfg: SweepConfig, method: str, break_even: float | None, n_trials: int, wanted: int | None,
            index: int, flops_floor: float | None = None) -> None:
    """A worker process: joins the study and runs its share of trials, on its share of the CPU cores."""
    share_cores(cfg.workers)
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
    baseline's images) of every finished DECORE trial of this configuration (with --scratch-at, of each seed's nearest
    that point): its pruned architecture re-initialised and trained from scratch (bench.trial.scratch); rows of
    method `scratch-b` / `scratch-e` name the trial in match_of."""
    from bench.trial.scratch import run_scratch

    df = ResultsTable(cfg.folder).read()
    done = df[(df["method"] == "decore") & (df["status"] == "complete") & (df["row_type"] == "trial")]
    configs = {}
    for i, row in done.iterrows():
        tc = Objective(cfg, profile, "decore", None, data).config(json.loads(row["knobs"]), int(row["seed"]))
        if tc.key != row["config_hash"]:
            tqdm.write(f"scratch control: trial {row['config_hash']} is not of this sweep's configuration; skipped")
            continue
        configs[i] = tc
    done = done.loc[list(configs)]
    if cfg.scratch_at is not None:
        done = nearest_per_seed(done, cfg.scratch_at)
    device = resolve_device(cfg.device)
    for i, row in done.iterrows():
        tc = configs[i]
        for rule in cfg.scratch:
            result = run_scratch(tc, device, data, rule)
            table = ResultsTable(cfg.folder)
            if result["config_hash"] not in table.finished_hashes():
                table.upsert(table_row(result, study=f"{cfg.experiment}-{rule}", optuna_trial=None, device=device,
                                       match_of=result["match_of"]))
                tqdm.write(f"  {rule} of {row['config_hash']} seed {row['seed']}: top-1 {result['top1_pct']:6.2f}% "
                           f"(the pruned trial: {float(row['top1_pct']):.2f}%)  {result['rule']}")


def nearest_per_seed(rows: Any, removed: float) -> Any:
    """Each seed's row whose FLOPs removed is nearest `removed` (a fraction; the first of a tie; rows without a
    FLOPs count are not candidates)."""
    rows = rows[rows["flops_reduction_pct"].notna()]
    gap = (rows["flops_reduction_pct"].astype(float) / 100 - removed).abs()
    return rows.loc[gap.groupby(rows["seed"]).idxmin().values]


def run_control(cfg: SweepConfig, profile: Profile, data: Any) -> None:
    """The no-pruning control, once per seed: the baseline trained on for the same budget as every method."""
    for seed in range(cfg.seeds):
        tc = Objective(cfg, profile, "control", None, data).config({}, seed, scope="all")
        run_and_record(cfg, tc, data, f"{cfg.experiment}-control", None)
